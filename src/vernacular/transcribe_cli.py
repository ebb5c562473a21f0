"""`vernacular transcribe`: transcribe files with a trained adapter, without Kedro.

Prints one JSON line per file on stdout (the same records as the Kedro `transcribe` pipeline);
logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from vernacular.batch import (BatchSettings, NoAdapterError, base_model_of_adapter, latest_adapter,
                              load_transcriber, transcribe_files)


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
    from vernacular.models import resolve_base_model

    if args.base_model:
        return resolve_base_model(args.base_model, Path(args.models_dir) / "base")
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
    except NoAdapterError as exc:
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
