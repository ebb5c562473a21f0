"""Merge a PEFT adapter into its base model and export the result for serving.

`export_adapter` writes one new folder:

    OUT/transformers/   the merged model (safetensors), processor and generation config
    OUT/ct2/            (optional, Whisper) the same model in CTranslate2 format, loadable by
                        faster_whisper.WhisperModel("OUT/ct2")
    OUT/export.json     what was merged (adapter path and sha256, base model, library versions)

Everything is written to a temporary folder beside OUT and renamed into place at the end, so OUT is
either complete or absent; an existing OUT is never overwritten. `vernacular export` is the CLI
(`vernacular.cli`).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import shutil
from pathlib import Path

from vernacular.common.fileio import sha256_file, write_new_directory
from vernacular.models.families import WHISPER, family_for
from vernacular.models.loading import (ADAPTER_CARD, AdapterNotFoundError, adapter_card, check_adapter_dir, load_adapter,
                                       load_model, speech_task)

EXPORT_RECORD = "export.json"
TRANSFORMERS_SUBDIR = "transformers"
CT2_SUBDIR = "ct2"
# Weight types CTranslate2's converter can store. A float32 export can still be run in int8 or
# float16: CTranslate2 converts at load time (`compute_type`), so quantizing here only saves disk.
QUANTIZATIONS = ("float32", "float16", "bfloat16", "int8", "int8_float32", "int8_float16", "int8_bfloat16",
                 "int16")


class ExportError(ValueError):
    """Bad export input: not a transformers checkpoint, unknown quantization, a family without CT2."""


def _versions(*names: str) -> dict:
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _check_quantization(quantization: str) -> str:
    if quantization not in QUANTIZATIONS:
        raise ExportError(f"unknown CTranslate2 quantization {quantization!r}; use one of {', '.join(QUANTIZATIONS)}")
    return quantization


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def export_ct2(model_dir: str | os.PathLike, out_dir: str | os.PathLike, quantization: str = "float32",
               family=WHISPER) -> Path:
    """Convert a transformers checkpoint (Whisper) to a new CTranslate2 folder (for faster-whisper)."""
    quantization = _check_quantization(quantization)
    model_dir = Path(model_dir)

    def write(tmp: Path) -> None:
        try:
            family_for(family).export_ct2(model_dir, tmp, quantization)
        except ValueError as exc:
            raise ExportError(str(exc)) from exc
        record = {"source": str(model_dir.resolve()), "quantization": quantization, "created_utc": _now(),
                  "versions": _versions("ctranslate2", "transformers")}
        (tmp / EXPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")

    return write_new_directory(out_dir, write)


def export_adapter(base_model: dict, adapter_dir: str | os.PathLike | None, out_dir: str | os.PathLike,
                   ct2: bool = False, quantization: str = "float32") -> dict:
    """Merge `adapter_dir` into `base_model` and write OUT/transformers (+ OUT/ct2) and OUT/export.json;
    `adapter_dir=None` exports the base model alone.

    Returns the export record, with the written paths under "paths".
    """
    if adapter_dir is not None:
        try:
            adapter_dir = check_adapter_dir(adapter_dir)
        except AdapterNotFoundError as exc:
            raise ExportError(str(exc)) from exc
    family = family_for(base_model)
    if ct2:
        _check_quantization(quantization)
        try:
            family.check_ct2_export()
        except ValueError as exc:
            raise ExportError(str(exc)) from exc
    out_dir = Path(out_dir)
    record: dict = {}

    def write(tmp: Path) -> None:
        if adapter_dir is None:
            model, processor, _ = load_model(base_model, device="cpu")
        else:
            model, processor = load_adapter(base_model, adapter_dir, device="cpu", merge=True)
        model.save_pretrained(tmp / TRANSFORMERS_SUBDIR)
        processor.save_pretrained(tmp / TRANSFORMERS_SUBDIR)
        paths = {"transformers": str(out_dir / TRANSFORMERS_SUBDIR)}
        if ct2:
            try:
                family.export_ct2(tmp / TRANSFORMERS_SUBDIR, tmp / CT2_SUBDIR, quantization)
            except ValueError as exc:
                raise ExportError(str(exc)) from exc
            paths["ct2"] = str(out_dir / CT2_SUBDIR)
        card = adapter_card(adapter_dir) if adapter_dir is not None else None
        if card:  # the adapter's card (provenance, test results) travels with the merged model
            shutil.copyfile(card, tmp / ADAPTER_CARD)
            paths["card"] = str(out_dir / ADAPTER_CARD)
        weights = adapter_dir / "adapter_model.safetensors" if adapter_dir is not None else None
        record.update({
            "adapter": str(adapter_dir.resolve()) if adapter_dir is not None else None,
            "adapter_sha256": sha256_file(weights) if weights is not None and weights.is_file() else None,
            "base_model": {k: base_model.get(k) for k in ("name_or_path", "source", "local_dir")},
            "family": family.name,
            # generation_config.json of OUT/transformers holds them too; faster-whisper needs them
            # passed: WhisperModel("OUT/ct2").transcribe(audio, language=..., task=...)
            "language": speech_task(base_model)[0],
            "task": speech_task(base_model)[1],
            "merged": adapter_dir is not None,
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "ct2_quantization": quantization if ct2 else None,
            "created_utc": _now(),
            "versions": _versions("peft", "transformers", "torch", "ctranslate2"),
            "paths": paths,
        })
        (tmp / EXPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")

    write_new_directory(out_dir, write)
    return record
