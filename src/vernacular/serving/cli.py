"""`vernacular transcribe` and `vernacular export`: a trained adapter used and exported without Kedro.

Prints one JSON line per file on stdout (the same records as the Kedro `transcribe` pipeline);
logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from vernacular.common.storage import StorageLayout
from vernacular.models.export import QUANTIZATIONS, ExportError, export_adapter
from vernacular.models.loading import (AdapterNotFoundError, base_model_of_adapter, is_adapter_dir,
                                       resolve_base_model)
from vernacular.serving.batch import BatchSettings, load_transcriber, transcribe_files


def latest_adapter(models_dir: str | Path, vertical: str) -> str:
    """Newest saved version of the `<vertical>.adapter` catalog entry: `<models_dir>/<vertical>/adapter/<version>/adapter`
    (Kedro's versioned layout; version names are timestamps and sort in time order)."""
    root = Path(models_dir) / vertical / "adapter"
    versions = sorted(p for p in root.glob("*/adapter") if is_adapter_dir(p) and not p.parent.name.startswith("."))
    if not versions:
        raise AdapterNotFoundError(f"no trained adapter under {root}/<version>/adapter: run "
                                   f"`kedro run --pipeline={vertical}` first (or pass --adapter PATH)")
    return str(versions[-1].resolve())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vernacular transcribe",
                                     description="Transcribe audio files with a vertical's LoRA adapter "
                                                 "(merged into the base model); JSON lines on stdout.")
    parser.add_argument("files", nargs="+", metavar="FILE", help="audio files (WAV, FLAC, OGG, MP3)")
    parser.add_argument("--vertical", required=True, help="radiology, finance, accent, ...")
    parser.add_argument("--adapter", help="adapter directory (default: the latest version under "
                                          "<models-dir>/<vertical>/adapter/)")
    parser.add_argument("--models-dir", default="data/06_models", help="default: %(default)s")
    parser.add_argument("--base-model", help="base model: a local transformers directory, a hub id or "
                                             "embedded:whisper-tiny.en (default: the one the adapter was trained on)")
    parser.add_argument("--batch-size", type=int, default=BatchSettings.batch_size)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    parser.add_argument("--no-merge", action="store_true", help="keep the adapter unmerged (slower)")
    return parser


def resolve_base(args, adapter_dir: str) -> dict:
    if args.base_model:
        return resolve_base_model(args.base_model, StorageLayout(Path(args.models_dir).parent, "").base_model_cache_dir)
    recorded = base_model_of_adapter(adapter_dir)
    if recorded:
        return recorded
    kedro_record = Path(args.models_dir) / args.vertical / "base_model.json"
    if kedro_record.is_file():
        return json.loads(kedro_record.read_text())
    raise SystemExit(f"vernacular transcribe: cannot tell which base model {adapter_dir} was trained on; "
                     "pass --base-model")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        adapter = args.adapter or latest_adapter(args.models_dir, args.vertical)
    except AdapterNotFoundError as exc:
        print(f"vernacular transcribe: {exc}", file=sys.stderr)
        return 2
    if not (Path(adapter) / "adapter_config.json").is_file():
        print(f"vernacular transcribe: {adapter}: not a PEFT adapter directory (no adapter_config.json)",
              file=sys.stderr)
        return 2
    settings = BatchSettings(device=args.device, batch_size=args.batch_size, merge=not args.no_merge)
    transcriber = load_transcriber(resolve_base(args, adapter), adapter, settings)
    failed = 0
    for record in transcribe_files(args.files, transcriber):
        failed += record["status"] != "ok"
        print(json.dumps(record, ensure_ascii=False), flush=True)
    return 1 if failed else 0


# --- `vernacular export` -------------------------------------------------------------------------

def build_export_parser() -> argparse.ArgumentParser:
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


def export_main(argv: list[str] | None = None) -> int:
    args = build_export_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        adapter = args.adapter or latest_adapter(args.models_dir, args.vertical)
        if args.out.exists():
            raise FileExistsError(f"{args.out} already exists; exports never overwrite: choose a new --out")
        if args.base:
            base = resolve_base_model(args.base, StorageLayout(Path(args.models_dir).parent, "").base_model_cache_dir)
        else:
            base = base_model_of_adapter(adapter)
            if base is None:
                raise ExportError(f"cannot tell which base model {adapter} was trained on (its adapter_config.json "
                                  "names no existing local directory); pass --base")
        record = export_adapter(base, adapter, args.out, ct2=args.ct2, quantization=args.quantization)
    except (AdapterNotFoundError, ExportError, FileExistsError, ImportError, OSError) as exc:
        print(f"vernacular export: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(record, indent=2))
    if args.ct2:
        print(f"serve it: faster_whisper.WhisperModel({record['paths']['ct2']!r})", file=sys.stderr)
    return 0
