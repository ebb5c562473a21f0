"""The forgetting check on real general-speech corpora: per corpus, in the summary, the cost page
and the card, and a corpus that appears later is a new evaluation (not a reused one)."""

from __future__ import annotations

import pandas as pd

from tests.evaluation.test_report import _sidecar_corpus
from vernacular.data.audio import write_wav
from vernacular.evaluation.run import EvaluationSettings, evaluate_adapter, evaluation_fingerprint


def test_forgetting_on_two_real_corpora_is_reported_per_corpus_everywhere(tiny_whisper, speech_clips, tmp_path):
    from tests.serving.test_batch import save_adapter
    from vernacular.evaluation.report import control_sentence, render_summary
    from vernacular.reporting.adapter_card import _evaluation_section

    test = pd.DataFrame([{"utterance_id": f"t{i}", "audio_path": str(write_wav(tmp_path / f"{i}.wav", audio)),
                          "text": text, "speaker": "v", "duration": len(audio) / 16000, "split": "test"}
                         for i, (text, audio) in enumerate(speech_clips[:2])])
    first = _sidecar_corpus(tmp_path / "read", ["The train was late.", "We walked home."])
    second = tmp_path / "later"
    sets = [{"path": str(first), "format": "sidecar", "name": "read"},
            {"path": str(second), "format": "sidecar", "name": "later"}]
    settings = EvaluationSettings.from_dict({
        "device": "cpu", "progress": False, "latency_segments": 1, "latency_repeats": 1, "serving_check": False,
        "bootstrap": {"n_resamples": 50}, "decoding": {"min_new_tokens_cap": 4, "max_tokens_per_second": 2.0},
        "forgetting": {"sets": sets}, "unseen_voices": {"enabled": False}})
    adapter = str(save_adapter(tiny_whisper, tmp_path / "adapter", seed=0))
    before = evaluation_fingerprint(test, tiny_whisper, adapter, settings, "cpu")

    _sidecar_corpus(second, ["Close the door."])
    assert evaluation_fingerprint(test, tiny_whisper, adapter, settings, "cpu") != before
    metrics, _ = evaluate_adapter(test, tiny_whisper, adapter, settings)
    block = metrics["forgetting"]
    assert block["kind"] == "real" and block["n_utterances"] == 3 and block["margin_pts"] == 1.0
    assert {k: v["n_utterances"] for k, v in block["by_set"].items()} == {"read": 2, "later": 1}
    assert set(block["loops"]) == {"base", "adapter"} and set(metrics["loops"]) == {"base", "adapter"}

    sentence = control_sentence(block)
    assert sentence.startswith("On real general speech") and "Per corpus: read (2 utts)" in sentence
    training = {"trainable_params": 1, "total_params": 100, "trainable_fraction": 0.01, "steps": 1,
                "train_examples": 3, "train_seconds": 1.0, "device_name": "cpu"}
    summary = render_summary({**metrics, "vertical": "radiology"}, training, "radiology")
    assert f"**Control:** {sentence}" in summary and "| later | 1 |" in summary
    assert "Looping outputs (hypothesis over 2x its reference's words)" in summary
    card = "\n".join(_evaluation_section(metrics, {"splits": {}}))
    assert "Per corpus: read (2 utts)" in card and "Looping outputs on the test set" in card
