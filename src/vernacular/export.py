"""Merge a PEFT adapter into its Whisper base and export the result for serving.

`export_adapter` writes one new folder:

    OUT/transformers/   the merged model (safetensors), processor and generation config
    OUT/ct2/            (optional) the same model in CTranslate2 format, loadable by
                        faster_whisper.WhisperModel("OUT/ct2")
    OUT/export.json     what was merged (adapter path and sha256, base model, library versions)

Everything is written to a temporary folder beside OUT and renamed into place at the end, so OUT is
either complete or absent; an existing OUT is never overwritten. `vernacular export` is the CLI.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

EXPORT_RECORD = "export.json"
TRANSFORMERS_SUBDIR = "transformers"
CT2_SUBDIR = "ct2"
# faster-whisper reads tokenizer.json and preprocessor_config.json beside model.bin: without the
# first it tries to download the tokenizer from the hub, without the second it assumes 80 mel bins.
# transformers 5 saves the feature extractor inside processor_config.json, so the second is
# written from the loaded feature extractor rather than copied.
CT2_COPY_FILES = ("tokenizer.json",)
PREPROCESSOR_FILE = "preprocessor_config.json"
# Weight types CTranslate2's converter can store. A float32 export can still be run in int8 or
# float16: CTranslate2 converts at load time (`compute_type`), so quantizing here only saves disk.
QUANTIZATIONS = ("float32", "float16", "bfloat16", "int8", "int8_float32", "int8_float16", "int8_bfloat16",
                 "int16")


class ExportError(ValueError):
    """Bad export input: not an adapter, not a transformers checkpoint, unknown quantization."""


def _versions(*names: str) -> dict:
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_adapter_dir(adapter_dir: str | os.PathLike) -> Path:
    """`adapter_dir` as a Path; ExportError naming it when it holds no PEFT adapter."""
    path = Path(adapter_dir)
    if not (path / "adapter_config.json").is_file():
        raise ExportError(f"{path}: not a PEFT adapter directory (no adapter_config.json); pass the folder "
                          "that holds adapter_config.json and adapter_model.safetensors, e.g. "
                          "data/06_models/radiology/adapter/<version>/adapter")
    return path


def _check_quantization(quantization: str) -> str:
    if quantization not in QUANTIZATIONS:
        raise ExportError(f"unknown CTranslate2 quantization {quantization!r}; use one of {', '.join(QUANTIZATIONS)}")
    return quantization


def _reserve(out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """(out_dir, a fresh temporary folder beside it); refuses an existing out_dir."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; exports never overwrite: choose a new output folder "
                              "or remove the old one yourself")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return out_dir, Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))


def _publish(tmp: Path, out_dir: Path) -> Path:
    """Rename the finished temporary folder to out_dir (never onto an existing one)."""
    # mkdtemp makes a private 0700 folder and safetensors writes 0600 files: give the export the
    # permissions any other file the user writes would get.
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    for path in tmp.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} appeared while the export was being written; the export was not saved")
    os.rename(tmp, out_dir)
    return out_dir


def merge_adapter(base_model: dict, adapter_dir: str | os.PathLike):
    """(merged WhisperForConditionalGeneration in float32 on CPU, processor) for base + adapter."""
    from peft import PeftModel

    from vernacular.models import load_whisper

    adapter_dir = check_adapter_dir(adapter_dir)
    model, processor = load_whisper(base_model, device="cpu")
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    merged.eval()
    return merged, processor


def _save_transformers(model, processor, dest: Path) -> None:
    model.save_pretrained(dest)
    processor.save_pretrained(dest)


def _convert_ct2(model_dir: Path, dest: Path, quantization: str) -> None:
    try:
        from ctranslate2.converters import TransformersConverter
    except ImportError as exc:
        raise ImportError("CTranslate2 export needs the ctranslate2 package: pip install 'ctranslate2>=4.5' "
                          "(faster-whisper installs it too)") from exc
    from transformers import WhisperFeatureExtractor

    missing = [name for name in ("config.json", *CT2_COPY_FILES) if not (model_dir / name).is_file()]
    if missing:
        raise ExportError(f"{model_dir}: not a complete transformers Whisper checkpoint (missing "
                          f"{', '.join(missing)}); save it with model.save_pretrained() and "
                          "processor.save_pretrained()")
    try:
        extractor = WhisperFeatureExtractor.from_pretrained(str(model_dir))
    except OSError as exc:
        raise ExportError(f"{model_dir}: no Whisper feature extractor config (processor_config.json or "
                          f"{PREPROCESSOR_FILE}); save the processor with processor.save_pretrained()") from exc
    converter = TransformersConverter(str(model_dir), copy_files=list(CT2_COPY_FILES))
    # dest is our own empty temporary folder, hence force=True.
    converter.convert(str(dest), quantization=quantization, force=True)
    extractor.to_json_file(str(dest / PREPROCESSOR_FILE))


def export_ct2(model_dir: str | os.PathLike, out_dir: str | os.PathLike, quantization: str = "float32") -> Path:
    """Convert a transformers Whisper checkpoint to a new CTranslate2 folder (for faster-whisper)."""
    quantization = _check_quantization(quantization)
    model_dir = Path(model_dir)
    out_dir, tmp = _reserve(out_dir)
    try:
        _convert_ct2(model_dir, tmp, quantization)
        record = {"source": str(model_dir.resolve()), "quantization": quantization,
                  "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                  "versions": _versions("ctranslate2", "transformers")}
        (tmp / EXPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        return _publish(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def export_adapter(base_model: dict, adapter_dir: str | os.PathLike, out_dir: str | os.PathLike,
                   ct2: bool = False, quantization: str = "float32") -> dict:
    """Merge `adapter_dir` into `base_model` and write OUT/transformers (+ OUT/ct2) and OUT/export.json.

    Returns the export record, with the written paths under "paths".
    """
    adapter_dir = check_adapter_dir(adapter_dir)
    if ct2:
        _check_quantization(quantization)
    out_dir, tmp = _reserve(out_dir)
    try:
        model, processor = merge_adapter(base_model, adapter_dir)
        _save_transformers(model, processor, tmp / TRANSFORMERS_SUBDIR)
        paths = {"transformers": str(out_dir / TRANSFORMERS_SUBDIR)}
        if ct2:
            _convert_ct2(tmp / TRANSFORMERS_SUBDIR, tmp / CT2_SUBDIR, quantization)
            paths["ct2"] = str(out_dir / CT2_SUBDIR)
        weights = adapter_dir / "adapter_model.safetensors"
        record = {
            "adapter": str(adapter_dir.resolve()),
            "adapter_sha256": _sha256(weights) if weights.is_file() else None,
            "base_model": {k: base_model.get(k) for k in ("name_or_path", "source", "local_dir")},
            "merged": True,
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "ct2_quantization": quantization if ct2 else None,
            "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": _versions("peft", "transformers", "torch", "ctranslate2"),
            "paths": paths,
        }
        (tmp / EXPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        _publish(tmp, out_dir)
        return record
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- CLI: `vernacular export` ---------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vernacular export",
        description="Merge a LoRA adapter into its base model and save a transformers checkpoint "
                    "(OUT/transformers), optionally also in CTranslate2 format for faster-whisper (OUT/ct2).")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--adapter", help="PEFT adapter directory (holds adapter_config.json)")
    source.add_argument("--vertical", help="use the latest adapter of this vertical under --models-dir")
    parser.add_argument("--base", help="base model: a local transformers directory, a hub id or "
                                       "embedded:whisper-tiny.en (default: the one recorded in the adapter)")
    parser.add_argument("--out", required=True, type=Path, help="new output folder (must not exist)")
    parser.add_argument("--ct2", action="store_true", help="also write a CTranslate2 copy to OUT/ct2")
    parser.add_argument("--quantization", default="float32", choices=QUANTIZATIONS,
                        help="CTranslate2 weight type (default: %(default)s; faster-whisper can still load "
                             "a float32 export as int8 or float16 with compute_type)")
    parser.add_argument("--models-dir", default="data/06_models", help="default: %(default)s")
    return parser


def _resolve_base(args, adapter_dir: str) -> dict:
    from vernacular.batch import base_model_of_adapter
    from vernacular.models import resolve_base_model

    if args.base:
        return resolve_base_model(args.base, Path(args.models_dir) / "base")
    recorded = base_model_of_adapter(adapter_dir)
    if recorded:
        return recorded
    raise ExportError(f"cannot tell which base model {adapter_dir} was trained on (its adapter_config.json "
                      "names no existing local directory); pass --base")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    from vernacular.batch import NoAdapterError, latest_adapter

    try:
        adapter = args.adapter or latest_adapter(args.models_dir, args.vertical)
        check_adapter_dir(adapter)
        if args.out.exists():
            raise FileExistsError(f"{args.out} already exists; exports never overwrite: choose a new --out")
        record = export_adapter(_resolve_base(args, adapter), adapter, args.out, ct2=args.ct2,
                                quantization=args.quantization)
    except (NoAdapterError, ExportError, FileExistsError, ImportError, OSError) as exc:
        print(f"vernacular export: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(record, indent=2))
    if args.ct2:
        print(f"serve it: faster_whisper.WhisperModel({record['paths']['ct2']!r})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
