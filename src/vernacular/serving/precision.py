"""Which weight type the CTranslate2 backend serves an adapter with: measured once, at training.

int8 weights are what make CPU serving cheap, but what they cost in accuracy depends on the
adapter (docs/results.md, "The served model"): from nothing to several WER points. So `quantization:
auto` is decided per adapter: the validation split is transcribed as batch transcription serves it,
once with the quantized weights (int8 on CPU, int8_float16 on CUDA) and once with the precise ones
(float32, float16); the quantized model is kept when it loses at most `max_quantization_loss_pts`
points, else the precise one. The record goes into the adapter folder (PRECISION_FILE), so every
later load (evaluation, `vernacular transcribe`, the transcribe pipeline, exports) serves the same.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import tempfile
import time
from pathlib import Path

from vernacular.data.audio import TARGET_SAMPLE_RATE
from vernacular.evaluation.metrics import error_rates, normalise
from vernacular.data.audio import read_audio
from vernacular.models.loading import device_name, pick_device
from vernacular.serving.batch import BatchSettings, load_transcriber, resolve_backend
from vernacular.serving.ct2 import QUANTIZATION_AUTO, QUANTIZATION_PRECISE, precision_reason

log = logging.getLogger(__name__)

RECORD_FORMAT = 1


def check_serving_precision(base_model: dict, adapter_dir: str | os.PathLike, audios: list, references: list[str],
                            settings: BatchSettings, ct2_cache_dir: str | os.PathLike, normaliser: str) -> dict:
    """Transcribe `audios` (16 kHz, the validation split) with the adapter served quantized and
    precise on the serving device; return the record for PRECISION_FILE:
    {"device", "chosen", "wer": {compute type: WER}, "loss_pts", "max_loss_pts", "n_utterances", ...}."""
    if not audios or len(audios) != len(references):
        raise ValueError(f"the precision check needs validation audio with one transcript each "
                         f"(got {len(audios)} recordings, {len(references)} transcripts)")
    device = pick_device(settings.device)
    kind = "cuda" if device.type == "cuda" else "cpu"
    cheap, precise = QUANTIZATION_AUTO[kind], QUANTIZATION_PRECISE[kind]
    refs = [normalise(r, normaliser) for r in references]
    wer, seconds = {}, {}
    for compute_type in (cheap, precise):
        served = load_transcriber(base_model, adapter_dir, dataclasses.replace(
            settings, backend="ctranslate2", ct2=dataclasses.replace(settings.ct2, quantization=compute_type)),
            ct2_cache_dir).served
        started = time.perf_counter()
        texts = [served.transcribe(audio)["text"] for audio in audios]
        seconds[compute_type] = time.perf_counter() - started
        wer[compute_type] = error_rates(refs, [normalise(t, normaliser) for t in texts])["wer"]
    allowance = settings.ct2.max_quantization_loss_pts
    loss = 100 * (wer[cheap] - wer[precise])
    return {"format": RECORD_FORMAT, "device": kind, "device_name": device_name(device),
            "chosen": cheap if loss <= allowance else precise, "wer": wer, "loss_pts": loss,
            "max_loss_pts": allowance, "n_utterances": len(audios), "split": "validation",
            "audio_seconds": sum(len(a) for a in audios) / TARGET_SAMPLE_RATE, "seconds": seconds,
            "normaliser": normaliser, "measured_utc": dt.datetime.now(tz=dt.timezone.utc).isoformat(timespec="seconds")}


def precision_file_text(record: dict) -> str:
    return json.dumps(record, indent=2) + "\n"


def serving_precision_record(model, files: dict[str, str], base_model: dict, features_index: dict,
                             settings: BatchSettings, ct2_cache_dir: str | os.PathLike, normaliser: str,
                             max_utterances: int | None = None) -> dict | None:
    """`check_serving_precision` for an adapter just trained (`model`, a PeftModel, with the extra
    `files` its folder will hold) on the validation split of `features_index` (its first
    `max_utterances`); None, with the reason logged, when there is nothing to decide: another
    backend serves it, the precision is set by name, the check is off, or there is no validation
    split. The CTranslate2 exports it makes are the ones serving reuses (same weights, same key)."""
    if resolve_backend(base_model, settings) != "ctranslate2":
        return None
    if settings.ct2.quantization != "auto" or not settings.ct2.precision_check:
        log.info("serving precision: not checked (transcription.ct2.quantization: %s, precision_check: %s)",
                 settings.ct2.quantization, settings.ct2.precision_check)
        return None
    if "validation" not in features_index.get("splits", {}):
        log.warning("serving precision: no validation split to measure it on; `quantization: auto` will serve "
                    "this adapter with the device's default (int8 on CPU) unchecked")
        return None
    from vernacular.data.features import load_split

    split = load_split(features_index, "validation")
    paths, texts = split["audio_paths"], split.get("texts") or []
    if len(texts) != len(paths) or any(t is None for t in texts):
        log.warning("serving precision: the feature cache holds no transcripts for validation (an old cache); "
                    "not checked")
        return None
    if max_utterances:
        paths, texts = paths[:max_utterances], texts[:max_utterances]
    audios = [read_audio(p) for p in paths]
    with tempfile.TemporaryDirectory(prefix="vernacular-precision-") as tmp:
        model.save_pretrained(tmp)
        for name, text in files.items():
            (Path(tmp) / name).write_text(text, encoding="utf-8")
        record = check_serving_precision(base_model, tmp, audios, list(texts), settings, ct2_cache_dir, normaliser)
    log.info("serving precision: %s (%s)", record["chosen"], precision_reason(record, record["device"],
                                                                               record["chosen"]))
    return record
