"""espeak-ng synthesis through ctypes: format, determinism, validation, caching, threads."""

import hashlib
import os
import threading

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import soundfile as sf

from vernacular.data import synth

SENTENCE = "The radiologist reviewed the chest scan and found no sign of pleural effusion."


def digest(audio: np.ndarray) -> str:
    return hashlib.sha256(audio.tobytes()).hexdigest()


def test_format_and_plausible_duration():
    audio = synth.synthesize(SENTENCE)
    assert synth.SAMPLE_RATE == 16000
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert np.isfinite(audio).all()
    assert np.abs(audio).max() <= 1.0
    assert np.abs(audio).max() > 0.1  # speech, not silence
    assert 1.0 < audio.size / synth.SAMPLE_RATE < 10.0


def test_silence_margins_are_short():
    audio = synth.synthesize(SENTENCE)
    loud = np.flatnonzero(np.abs(audio) > 0.01 * np.abs(audio).max())
    margin = round(synth.MARGIN_S * synth.SAMPLE_RATE)
    assert loud[0] == margin
    assert audio.size - 1 - loud[-1] == margin


def test_bit_identical_even_after_other_calls():
    # espeak-ng keeps state between utterances in one process; the helper must hide it.
    first = synth.synthesize(SENTENCE, voice="en-gb-scotland+m3", rate=160, pitch=40)
    synth.synthesize("Something else entirely, said by another voice.", voice="en-029+f2")
    synth.synthesize("And a third one.", voice="en-us+klatt")
    second = synth.synthesize(SENTENCE, voice="en-gb-scotland+m3", rate=160, pitch=40)
    assert first.shape == second.shape
    assert digest(first) == digest(second)


def test_voices_variants_rates_and_pitches_change_the_audio():
    clips = {
        "en-us": synth.synthesize(SENTENCE, voice="en-us"),
        "en-gb-scotland": synth.synthesize(SENTENCE, voice="en-gb-scotland"),
        "en-029": synth.synthesize(SENTENCE, voice="en-029"),
        "en-029+f2": synth.synthesize(SENTENCE, voice="en-029+f2"),
        "en-029+m7": synth.synthesize(SENTENCE, voice="en-029+m7"),
        "pitch 20": synth.synthesize(SENTENCE, pitch=20),
        "pitch 80": synth.synthesize(SENTENCE, pitch=80),
    }
    assert len({digest(a) for a in clips.values()}) == len(clips)
    slow = synth.synthesize(SENTENCE, rate=120)
    fast = synth.synthesize(SENTENCE, rate=300)
    assert fast.size < 0.7 * slow.size


def test_voice_listing_covers_the_project_voices():
    voices = synth.list_voices()
    for name in ("en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-gb-x-gbcwmd"):
        assert name in voices
    variants = synth.list_variants()
    for name in [f"m{i}" for i in range(1, 8)] + [f"f{i}" for i in range(1, 6)]:
        assert name in variants
    assert synth.validate_voice("en-029+f2") == "en-029+f2"
    assert synth.validate_voice("EN-US") == "EN-US"


@pytest.mark.parametrize("voice, fragment", [
    ("en-zz", "unknown espeak-ng voice 'en-zz'"),
    ("klingon", "en-us"),
    ("en-us+m99", "variant 'm99'"),
    ("en-us+m3+f2", "variant 'm3+f2'"),
    ("", "non-empty"),
])
def test_bad_voice_is_a_helpful_value_error(voice, fragment):
    with pytest.raises(ValueError, match="voice") as raised:
        synth.synthesize("hello", voice=voice)
    assert fragment in str(raised.value)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"text": ""}, "non-empty"),
    ({"text": "  \n "}, "non-empty"),
    ({"rate": 79}, "rate must be an integer in 80..450"),
    ({"rate": 451}, "rate"),
    ({"rate": 175.0}, "rate"),
    ({"pitch": 100}, "pitch must be an integer in 0..99"),
    ({"pitch": -1}, "pitch"),
])
def test_bad_arguments_are_value_errors(kwargs, fragment):
    arguments = {"text": "hello", "voice": "en-us", **kwargs}
    with pytest.raises(ValueError, match=fragment):
        synth.synthesize(**arguments)


def test_range_limits_are_accepted():
    assert synth.synthesize("Limits.", rate=80, pitch=0).size > 0
    assert synth.synthesize("Limits.", rate=450, pitch=99).size > 0


def test_never_empty_for_non_empty_text():
    for text in (".", "?", "a"):
        audio = synth.synthesize(text)
        assert audio.size > 0 and audio.dtype == np.float32


def test_write_wav_is_16_bit_and_leaves_no_temp_files(tmp_path):
    audio = synth.synthesize("Write me.")
    target = tmp_path / "sub" / "clip.wav"
    synth.write_wav(target, audio)
    info = sf.info(str(target))
    assert (info.format, info.subtype, info.samplerate, info.channels) == ("WAV", "PCM_16", 16000, 1)
    back, _ = sf.read(str(target), dtype="float32")
    assert back.shape == audio.shape
    assert np.abs(back - audio).max() <= 1 / 32767 + 1e-6
    assert sorted(p.name for p in target.parent.iterdir()) == ["clip.wav"]


def test_render_writes_once_and_then_uses_the_cache(tmp_path):
    target = tmp_path / "utt.wav"
    first = synth.render(SENTENCE, "en-gb-x-rp", 175, 50, target)
    assert first["path"] == str(target)
    assert first["sha256"] == hashlib.sha256(target.read_bytes()).hexdigest()
    assert first["duration"] == pytest.approx(synth.synthesize(SENTENCE, "en-gb-x-rp").size / 16000)
    before = os.stat(target)
    second = synth.render(SENTENCE, "en-gb-x-rp", 175, 50, target)
    after = os.stat(target)
    assert second == first
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["utt.wav"]


def test_render_replaces_an_invalid_file(tmp_path):
    target = tmp_path / "broken.wav"
    target.write_bytes(b"not a wav file")
    result = synth.render("Repair this file.", "en-us", 175, 50, target)
    assert sf.info(str(target)).frames > 0
    assert result["duration"] > 0.3


def test_render_validates_arguments_even_when_cached(tmp_path):
    target = tmp_path / "cached.wav"
    synth.render("Cached.", "en-us", 175, 50, target)
    with pytest.raises(ValueError, match="voice"):
        synth.render("Cached.", "en-nowhere", 175, 50, target)


def test_two_threads_get_the_sequential_results():
    jobs = [(SENTENCE, "en-us"), ("Another sentence from the second thread.", "en-029+f2")]
    expected = [digest(synth.synthesize(text, voice=voice)) for text, voice in jobs]
    results: dict[int, list[str]] = {0: [], 1: []}
    errors: list[BaseException] = []

    def work(index: int) -> None:
        text, voice = jobs[index]
        try:
            for _ in range(4):
                results[index].append(digest(synth.synthesize(text, voice=voice)))
        except BaseException as exc:  # surfaced below; a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert results == {0: [expected[0]] * 4, 1: [expected[1]] * 4}


def test_phonemize_gives_ipa_per_clause_in_the_voice_accent():
    from vernacular.data.synth import phonemize

    us = phonemize("No pneumothorax. Mild cardiomegaly.", "en-us")
    assert len(us) == 2 and "θ" in us[0] and "ˈ" in us[0]  # IPA with stress marks
    assert phonemize("Good morning", "en-gb-x-rp") != phonemize("Good morning", "en-us")  # rhotic vs not
    with pytest.raises(ValueError, match="voice"):
        phonemize("Hello", "xx-nowhere")
