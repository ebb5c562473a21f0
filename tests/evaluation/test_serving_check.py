"""The evaluation also checks and times the model as batch transcription serves it (CTranslate2 int8)."""

from __future__ import annotations

import pandas as pd
import pytest

from vernacular.data.audio import write_wav
from vernacular.evaluation.run import EvaluationSettings, evaluate_adapter, evaluation_fingerprint
from vernacular.serving.batch import BatchSettings

SETTINGS = {"device": "cpu", "progress": False, "latency_segments": 1, "latency_repeats": 1,
            "bootstrap": {"n_resamples": 50}, "forgetting": {"enabled": False},
            "unseen_voices": {"enabled": False},
            "decoding": {"min_new_tokens_cap": 4, "max_tokens_per_second": 2.0}}


@pytest.fixture(scope="module")
def test_rows(tmp_path_factory, speech_clips) -> pd.DataFrame:
    folder = tmp_path_factory.mktemp("test-audio")
    return pd.DataFrame([{"utterance_id": f"t{i}", "audio_path": str(write_wav(folder / f"{i}.wav", audio)),
                          "text": text, "speaker": "v", "duration": len(audio) / 16000, "split": "test"}
                         for i, (text, audio) in enumerate(speech_clips)])


def test_served_model_is_scored_and_timed_beside_the_fp32_one(tiny_whisper, test_rows, tmp_path):
    from tests.serving.test_batch import save_adapter

    from tests.evaluation.test_report import _sidecar_corpus

    adapter = str(save_adapter(tiny_whisper, tmp_path / "adapter", seed=0))
    control = _sidecar_corpus(tmp_path / "control", ["The train was late.", "We walked home."])
    settings = EvaluationSettings.from_dict({**SETTINGS, "forgetting": {
        "sets": [{"path": str(control), "format": "sidecar", "name": "read"}]}})
    metrics, transcripts = evaluate_adapter(test_rows, tiny_whisper, adapter, settings, serving=BatchSettings(device="cpu"),
                                            ct2_cache_dir=tmp_path / "ct2")
    served = metrics["served"]
    assert (served["backend"], served["compute_type"]) == ("ctranslate2", "int8")
    assert len(transcripts["served"]) == len(test_rows) and served["latency"]["real_time_factor"] > 0
    assert served["wer_fp32"] == metrics["adapter"]["normalised"]["wer"]
    assert served["wer_change_pts"] == pytest.approx(100 * (served["wer"] - served["wer_fp32"]))
    assert served["within_half_point"] == (served["wer_change_pts"] <= 0.5)
    assert list((tmp_path / "ct2").iterdir())  # the same export batch transcription uses
    # the served model on the real-speech control too, beside the fp32 adapter's WER there
    on_control = metrics["forgetting"]["served"]
    assert on_control["wer_fp32"] == metrics["forgetting"]["adapter"]["wer"]
    assert on_control["wer_change_pts"] == pytest.approx(100 * (on_control["wer"] - on_control["wer_fp32"]))
    assert on_control["within_half_point"] == (on_control["wer_change_pts"] <= 0.5)

    from vernacular.evaluation.report import render_summary
    training = {"trainable_params": 1, "total_params": 100, "trainable_fraction": 0.01, "steps": 1,
                "train_examples": 3, "train_seconds": 1.0, "device_name": "cpu"}
    summary = render_summary(metrics, training, "radiology")
    assert "## Served model (ctranslate2 int8, as batch transcription runs it)" in summary
    assert f"{100 * served['wer']:.1f}%" in summary and "0.5-point allowance" in summary
    assert (f"On the real-speech control (2 recordings): {100 * on_control['wer']:.1f}% against "
            f"{100 * on_control['wer_fp32']:.1f}%") in summary
    over = not (served["within_half_point"] and on_control["within_half_point"])
    assert ("`transcription.ct2.quantization: float32`" in summary) == over  # the fix, named only when needed

    plain, _ = evaluate_adapter(test_rows, tiny_whisper, adapter, settings,
                                serving=BatchSettings(device="cpu", backend="transformers"))
    assert "served" not in plain  # the fp32 figures are then the serving path's already

    one = evaluation_fingerprint(test_rows, tiny_whisper, adapter, settings, "cpu", serving=BatchSettings())
    other = evaluation_fingerprint(test_rows, tiny_whisper, adapter, settings, "cpu",
                                   serving=BatchSettings(ct2={"beam_size": 2}))
    assert one != other  # a cached evaluation is not reused for other serving settings
