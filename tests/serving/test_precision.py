"""`transcription.ct2.quantization: auto` serves each adapter with the weight type its precision
check chose on the validation split: int8 only when it stays within the allowance."""

from __future__ import annotations

import json

import pytest

from vernacular.serving.batch import BatchSettings, load_transcriber
from vernacular.serving.ct2 import PRECISION_FILE, read_precision_choice
from vernacular.serving.precision import check_serving_precision, precision_file_text


def _record(**changes) -> dict:
    return {"format": 1, "device": "cpu", "chosen": "float32", "wer": {"int8": 0.30, "float32": 0.25},
            "loss_pts": 5.0, "max_loss_pts": 0.5, "n_utterances": 4, **changes}


@pytest.fixture()
def adapter(tiny_whisper, tmp_path):
    from tests.serving.test_batch import save_adapter

    return save_adapter(tiny_whisper, tmp_path / "adapter", seed=0)


def test_auto_serves_the_precision_the_adapter_recorded(tiny_whisper, adapter, tmp_path):
    cache = tmp_path / "ct2"
    served = lambda **ct2: load_transcriber(tiny_whisper, adapter, BatchSettings(device="cpu", ct2=ct2), cache)
    assert served().served.compute_type == "int8"  # no record: the CPU default
    (adapter / PRECISION_FILE).write_text(precision_file_text(_record()))
    assert served().served.compute_type == "float32" and "float32" in served().device_name
    assert served(quantization="int8").served.compute_type == "int8"  # a name set in conf wins
    (adapter / PRECISION_FILE).write_text(precision_file_text(_record(device="cuda", chosen="float16")))
    assert served().served.compute_type == "int8"  # measured on another kind of device: not applied here


def test_a_broken_precision_record_names_the_file(adapter):
    (adapter / PRECISION_FILE).write_text(json.dumps({"device": "cpu"}))
    with pytest.raises(ValueError, match=f"{PRECISION_FILE}: not a serving-precision record"):
        read_precision_choice(adapter)


def test_the_check_keeps_int8_only_within_the_allowance(tiny_whisper, adapter, speech_clips, tmp_path):
    texts, audios = [t for t, _ in speech_clips], [a for _, a in speech_clips]

    def check(allowance: float) -> dict:
        settings = BatchSettings(device="cpu", ct2={"max_quantization_loss_pts": allowance})
        return check_serving_precision(tiny_whisper, adapter, audios, texts, settings, tmp_path / "ct2",
                                       "whisper_english")

    strict = check(0.0)
    assert set(strict["wer"]) == {"int8", "float32"} and strict["n_utterances"] == len(audios)
    assert strict["loss_pts"] == pytest.approx(100 * (strict["wer"]["int8"] - strict["wer"]["float32"]))
    assert strict["chosen"] == ("int8" if strict["loss_pts"] <= 0 else "float32")
    lenient = check(1e6)
    assert lenient["wer"] == strict["wer"] and lenient["chosen"] == "int8"
    with pytest.raises(ValueError, match="one transcript each"):
        check_serving_precision(tiny_whisper, adapter, audios, texts[:1], BatchSettings(device="cpu"),
                                tmp_path / "ct2", "whisper_english")
