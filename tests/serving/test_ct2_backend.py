"""The CTranslate2 backend: the export cache, segment times on audio whose truth is known, subtitles,
and the CLI's --format."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vernacular.data.audio import write_wav
from vernacular.serving.batch import BatchSettings, load_transcriber
from vernacular.serving.ct2 import ct2_model_dir
from vernacular.serving.subtitles import to_srt, to_vtt

SENTENCES = ["There is no pneumothorax.", "Mild cardiomegaly is present.", "The lungs are clear.",
             "Small left pleural effusion."]


@pytest.fixture(scope="module")
def laid_end_to_end():
    """Four sentences with 2 s of silence before each: (audio, [(start, end) of each sentence in s])."""
    from vernacular.data.synth import synthesize

    silence = np.zeros(2 * 16000, dtype=np.float32)
    parts, truth, t = [], [], 0.0
    for sentence in SENTENCES:
        speech = synthesize(sentence, "en-us")
        parts += [silence, speech]
        t += len(silence) / 16000
        truth.append((t, t + len(speech) / 16000))
        t += len(speech) / 16000
    return np.concatenate(parts + [silence]), truth


def test_segment_times_match_the_known_speech_within_half_a_second(embedded_base, laid_end_to_end, tmp_path):
    audio, truth = laid_end_to_end
    # subtitles ask for the times of each stretch of speech (ct2.window_seconds is then 0)
    transcriber = load_transcriber(embedded_base, None, BatchSettings(device="cpu", subtitles=["srt"]), tmp_path / "ct2")
    assert transcriber.backend == "ctranslate2" and "int8" in transcriber.device_name
    (result,) = transcriber.transcribe_audio([audio])
    segments = result["segments"]
    assert len(segments) == len(truth), segments
    for (start, end), seg in zip(truth, segments):
        assert abs(seg["start"] - start) <= 0.5 and abs(seg["end"] - end) <= 0.5, (start, end, seg)
        assert seg["avg_logprob"] < 0 and 0 <= seg["no_speech_prob"] <= 1
    assert "small left" in result["text"].lower() and result["detected_language"] == "en"

    # the default joins the stretches (silence cut out) into windows of up to 30 s: fewer, longer
    # segments that start and end where speech does
    (windowed, quiet) = load_transcriber(embedded_base, None, BatchSettings(device="cpu"), tmp_path / "ct2") \
        .transcribe_audio([audio, np.zeros(5 * 16000, dtype=np.float32)])
    assert quiet["text"] == "" and quiet["segments"] == []  # silence: nothing, not a hallucination
    starts, ends = [s for s, _ in truth], [e for _, e in truth]
    assert len(windowed["segments"]) < len(truth)
    for seg in windowed["segments"]:
        assert min(abs(seg["start"] - s) for s in starts) <= 0.5 and min(abs(seg["end"] - e) for e in ends) <= 0.5
        assert seg["end"] - seg["start"] <= 30.5


def test_the_export_is_made_once_per_adapter_version(tiny_whisper, tmp_path):
    from tests.serving.test_batch import save_adapter

    first = save_adapter(tiny_whisper, tmp_path / "v1", seed=0)
    second = save_adapter(tiny_whisper, tmp_path / "v2", seed=1)
    cache = tmp_path / "ct2"
    one = ct2_model_dir(tiny_whisper, first, cache, "int8")
    stamp = (one / "model.bin").stat().st_mtime_ns
    assert ct2_model_dir(tiny_whisper, first, cache, "int8") == one and (one / "model.bin").stat().st_mtime_ns == stamp
    other = ct2_model_dir(tiny_whisper, second, cache, "int8")
    assert other != one and (other / "model.bin").read_bytes() != (one / "model.bin").read_bytes()
    assert json.loads((one / "ct2_cache.json").read_text())["adapter"] == str(first)
    # PEFT writes target_modules (a set) in a different order in another process: same adapter, same export
    config = json.loads((first / "adapter_config.json").read_text())
    config["target_modules"] = sorted(config["target_modules"], reverse=True)
    (first / "adapter_config.json").write_text(json.dumps(config, indent=4))
    assert ct2_model_dir(tiny_whisper, first, cache, "int8") == one
    config["lora_alpha"] = 2 * config["lora_alpha"]  # a real change to the config is another adapter
    (first / "adapter_config.json").write_text(json.dumps(config))
    assert ct2_model_dir(tiny_whisper, first, cache, "int8") != one
    assert ct2_model_dir(tiny_whisper, first, cache, "float32") not in (one, other)
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == sorted(
        p.name for p in cache.iterdir())  # no export left half-written


def test_subtitles_from_segments():
    segments = [{"start": 0.5, "end": 2.25, "text": " Hello there. "}, {"start": 3.0, "end": 3.5, "text": ""},
                {"start": 3661.0, "end": 3662.004, "text": "a --> b"}]
    assert to_srt(segments) == ("1\n00:00:00,500 --> 00:00:02,250\nHello there.\n\n"
                                "2\n01:01:01,000 --> 01:01:02,004\na -> b\n\n")
    assert to_vtt(segments) == ("WEBVTT\n\n00:00:00.500 --> 00:00:02.250\nHello there.\n\n"
                                "01:01:01.000 --> 01:01:02.004\na -> b\n\n")
    with pytest.raises(ValueError, match="subtitles need segment times"):
        BatchSettings(backend="transformers", subtitles=["srt"])
    with pytest.raises(ValueError, match="formats are"):
        BatchSettings(subtitles=["ass"])


def test_cli_writes_srt_and_vtt_beside_the_records(embedded_base, laid_end_to_end, tmp_path, capsys, monkeypatch):
    from tests.serving.test_batch import save_adapter
    from vernacular.serving.cli import main

    audio, truth = laid_end_to_end
    write_wav(tmp_path / "in" / "dictation.wav", audio)
    adapter = save_adapter(embedded_base, tmp_path / "adapter", seed=0)
    monkeypatch.chdir(tmp_path)  # outside a project: exports go to data/06_models/radiology/ct2
    out = tmp_path / "out"
    assert main(["--vertical", "radiology", "--adapter", str(adapter), "--base-model", "embedded:whisper-tiny.en",
                 "--device", "cpu", "--output", str(out), "--format", "jsonl,srt,vtt", str(tmp_path / "in")]) == 0
    (record,) = [json.loads(line) for line in (out / "transcripts.jsonl").read_text().splitlines()]
    assert record["backend"] == "ctranslate2" and len(record["segments"]) >= 1
    srt, vtt = (out / "dictation.srt").read_text(), (out / "dictation.vtt").read_text()
    assert srt == to_srt(record["segments"]) and vtt == to_vtt(record["segments"]) and vtt.startswith("WEBVTT")
    assert list((tmp_path / "data/06_models/radiology/ct2").iterdir())
    capsys.readouterr()
    assert main(["--vertical", "radiology", "--adapter", str(adapter), "--format", "srt", str(tmp_path / "in")]) == 2
    assert "add --output DIR" in capsys.readouterr().err


def test_inbox_runs_write_subtitles_beside_the_results(tiny_whisper, speech_clips, tmp_path):
    from tests.serving.test_batch import fill_inbox, save_adapter
    from vernacular.serving.batch import read_results, run_inbox

    adapter = save_adapter(tiny_whisper, tmp_path / "adapter", seed=0)
    inbox = tmp_path / "inbox"
    fill_inbox(inbox / "monday", speech_clips, ["a.wav"])
    fill_inbox(inbox, speech_clips, ["b.wav"])
    files = {str(p.relative_to(inbox)): str(p) for p in sorted(inbox.rglob("*.wav"))}
    settings = BatchSettings(device="cpu", subtitles=["srt", "vtt"])
    summary = run_inbox(files, tmp_path / "results", lambda: load_transcriber(tiny_whisper, str(adapter), settings,
                                                                              tmp_path / "ct2"), settings)
    run_dir = tmp_path / "results" / summary["run_id"]
    names = sorted(p.name for p in (run_dir / "subtitles").iterdir())
    assert names == ["b.srt", "b.vtt", "monday__a.srt", "monday__a.vtt"] and summary["backend"] == "ctranslate2"
    records = {r["file"]: r for r in read_results(tmp_path / "results")}
    assert (run_dir / "subtitles" / "monday__a.srt").read_text() == to_srt(records["monday/a.wav"]["segments"])
