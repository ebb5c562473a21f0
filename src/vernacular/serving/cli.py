"""`vernacular transcribe`, `export` and `push`: a trained adapter used, exported and published
outside a Kedro run.

Run from the project folder: the adapter and its base model are found through the project's
catalog (`vernacular.catalog_datasets.ProjectCatalog`) unless given. `transcribe` prints one JSON
line per file on stdout, or writes them to `--output DIR` (the same records as the Kedro
`transcribe` pipeline); logs and the progress bar go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from vernacular.catalog_datasets import ProjectCatalog
from vernacular.common.storage import StorageLayout
from vernacular.models.export import QUANTIZATIONS, ExportError, export_adapter
from vernacular.models.loading import (AdapterNotFoundError, adapter_speech_task, base_model_of_adapter,
                                      check_adapter_dir, resolve_base_model, with_speech_task)
from vernacular.reporting.publish import PublishError, publish_warnings, push_adapter, stage_adapter
from vernacular.serving.batch import (BatchSettings, expand_inputs, load_transcriber, transcribe_files,
                                     write_subtitle_files)
from vernacular.serving.subtitles import SUBTITLE_FORMATS

TRANSCRIPTS_FILE = "transcripts.jsonl"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vernacular transcribe",
                                     description="Transcribe audio files with a vertical's LoRA adapter "
                                                 "(merged into the base model); JSON lines on stdout.")
    parser.add_argument("files", nargs="+", metavar="PATH",
                        help="audio files (WAV, FLAC, OGG, MP3, ...) or folders of them (searched recursively)")
    parser.add_argument("--output", type=Path, metavar="DIR",
                        help="write the records to DIR/transcripts.jsonl (a new file) instead of stdout")
    parser.add_argument("--format", default="jsonl", help="comma-separated: jsonl (the records), srt, vtt "
                                                          "(subtitles per file; need --output) (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar over the files on stderr")
    parser.add_argument("--vertical", required=True, help="radiology, finance, accent, ...")
    parser.add_argument("--adapter", help="adapter directory (default: the latest version of the catalog "
                                          "entry <vertical>.adapter)")
    parser.add_argument("--env", help="Kedro configuration environment whose catalog to read (default: local)")
    parser.add_argument("--base-model", help="base model: a local transformers directory, a hub id or "
                                             "embedded:whisper-tiny.en (default: the one the adapter was trained on)")
    parser.add_argument("--language", help="language code of the audio (de, cy, ...) or auto to detect it per "
                                           "30-s chunk (default: the language the adapter was trained for)")
    parser.add_argument("--batch-size", type=int, default=BatchSettings.batch_size)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    parser.add_argument("--no-merge", action="store_true", help="keep the adapter unmerged (slower)")
    parser.add_argument("--backend", default="auto", choices=("auto", "ctranslate2", "transformers"),
                        help="auto (default): CTranslate2 via faster-whisper for Whisper models (int8 on CPU, "
                             "VAD, timestamps), transformers for CTC/RNN-T")
    return parser


def resolve_base(base: str | None, adapter_dir: str, vertical: str | None, project: "Project",
                 option: str) -> dict:
    """`base` (resolved), else the base named in the adapter's config, else the vertical's catalog
    record; with the language and task the adapter was trained for."""
    task = adapter_speech_task(adapter_dir)
    if base:
        return resolve_base_model(base, project.base_model_cache_dir(vertical), **task)
    recorded = base_model_of_adapter(adapter_dir, project.base_model_cache_dir(vertical)) or (
        project.catalog().base_model(vertical) if vertical else None)
    if recorded:
        return with_speech_task(recorded, **task)
    raise AdapterNotFoundError(f"cannot tell which base model {adapter_dir} was trained on (its adapter_config.json "
                               f"names no existing local directory); pass {option}")


class Project:
    """The project's catalog, read only when a command needs it."""

    def __init__(self, env: str | None):
        self.env, self._catalog = env, None

    def catalog(self) -> ProjectCatalog:
        if self._catalog is None:
            self._catalog = ProjectCatalog(self.env)
        return self._catalog

    def storage(self, vertical: str | None) -> StorageLayout:
        """The vertical's storage layout; outside a project folder, the default layout (data/...)."""
        if not Path("conf").is_dir():
            return StorageLayout.for_vertical(vertical or "", None)
        return self.catalog().storage(vertical or "")

    def base_model_cache_dir(self, vertical: str | None) -> Path:
        """Where embedded base models are converted (data/06_models/base by default)."""
        return self.storage(vertical).base_model_cache_dir

    def adapter(self, given: str | None, vertical: str | None) -> str:
        return str(check_adapter_dir(given)) if given else self.catalog().latest_adapter(vertical)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    project = Project(args.env)
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    subtitle_formats = [f for f in formats if f != "jsonl"]
    try:
        if set(subtitle_formats) - set(SUBTITLE_FORMATS) or not formats:
            raise ValueError(f"--format {args.format!r}: choose from jsonl, srt, vtt")
        if subtitle_formats and not args.output:
            raise ValueError("--format srt/vtt writes one file per recording: add --output DIR")
        if args.output and (args.output / TRANSCRIPTS_FILE).exists():
            raise FileExistsError(f"--output {args.output}: {TRANSCRIPTS_FILE} is already there (an earlier run's "
                                  "records are never overwritten); choose a new folder")
        adapter = project.adapter(args.adapter, args.vertical)
        base = resolve_base(args.base_model, adapter, args.vertical, project, "--base-model")
    except (AdapterNotFoundError, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"vernacular transcribe: {exc}", file=sys.stderr)
        return 2
    try:
        settings = BatchSettings(device=args.device, batch_size=args.batch_size, merge=not args.no_merge,
                                 language=args.language or "", backend=args.backend, subtitles=subtitle_formats)
        transcriber = load_transcriber(base, adapter, settings, project.storage(args.vertical).ct2_cache_dir)
    except ValueError as exc:  # a setting, or a language the model cannot take
        print(f"vernacular transcribe: {exc}", file=sys.stderr)
        return 2
    files = expand_inputs(args.files)
    out = None
    if args.output:
        target = args.output / TRANSCRIPTS_FILE
        try:
            args.output.mkdir(parents=True, exist_ok=True)
            out = open(target, "x", encoding="utf-8")  # never over an earlier run's records
        except OSError as exc:
            print(f"vernacular transcribe: --output {args.output}: {exc}; choose a new folder", file=sys.stderr)
            return 2
    failed = done = 0
    try:
        for record in transcribe_files(files, transcriber, progress=not args.no_progress):
            failed += record["status"] != "ok"
            done += 1
            line = json.dumps(record, ensure_ascii=False)
            if out:
                out.write(line + "\n")
                out.flush()
                write_subtitle_files([record], args.output, subtitle_formats, name=lambda r: Path(r["file"]).stem)
            else:
                print(line, flush=True)
    finally:
        if out:
            out.close()
    if out:
        print(f"{done} files, {failed} failed: {args.output / TRANSCRIPTS_FILE}", file=sys.stderr)
    return 1 if failed else 0


# --- `vernacular export` -------------------------------------------------------------------------

def build_export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vernacular export",
        description="Merge a LoRA adapter into its base model and save a transformers checkpoint "
                    "(OUT/transformers), optionally also in CTranslate2 format for faster-whisper (OUT/ct2).")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--adapter", help="PEFT adapter directory (holds adapter_config.json)")
    source.add_argument("--vertical", help="use the latest adapter of this vertical (catalog entry <vertical>.adapter)")
    parser.add_argument("--base", help="base model: a local transformers directory, a hub id or "
                                       "embedded:whisper-tiny.en (default: the one recorded in the adapter)")
    parser.add_argument("--out", required=True, type=Path, help="new output folder (must not exist)")
    parser.add_argument("--ct2", action="store_true", help="also write a CTranslate2 copy to OUT/ct2")
    parser.add_argument("--quantization", default="float32", choices=QUANTIZATIONS,
                        help="CTranslate2 weight type (default: %(default)s; faster-whisper can still load "
                             "a float32 export as int8 or float16 with compute_type)")
    parser.add_argument("--env", help="Kedro configuration environment whose catalog to read (default: local)")
    return parser


def export_main(argv: list[str] | None = None) -> int:
    args = build_export_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    project = Project(args.env)
    try:
        adapter = project.adapter(args.adapter, args.vertical)
        if args.out.exists():
            raise FileExistsError(f"{args.out} already exists; exports never overwrite: choose a new --out")
        base = resolve_base(args.base, adapter, args.vertical, project, "--base")
        record = export_adapter(base, adapter, args.out, ct2=args.ct2, quantization=args.quantization)
    except (AdapterNotFoundError, ExportError, FileExistsError, ImportError, OSError, ValueError) as exc:
        print(f"vernacular export: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(record, indent=2))
    if args.ct2:
        print(f"serve it: faster_whisper.WhisperModel({record['paths']['ct2']!r}).transcribe(audio, "
              f"language={record['language']!r}, task={record['task']!r})", file=sys.stderr)
    return 0


# --- `vernacular push` ---------------------------------------------------------------------------

def build_push_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vernacular push",
        description="Publish a vertical's adapter (PEFT files + its adapter card as README.md) to the Hugging Face "
                    "Hub, private unless --public.")
    parser.add_argument("--vertical", required=True, help="radiology, finance, accent, ...")
    parser.add_argument("--repo-id", required=True, help="ORG/NAME on the Hub")
    parser.add_argument("--adapter", help="adapter directory (default: the latest version of <vertical>.adapter)")
    visibility = parser.add_mutually_exclusive_group()
    visibility.add_argument("--private", action="store_true", default=True, help="a private repository (default)")
    visibility.add_argument("--public", dest="private", action="store_false", help="a public repository")
    parser.add_argument("--dry-run", action="store_true",
                        help="upload nothing: write the folder that would be uploaded to --out")
    parser.add_argument("--out", type=Path, help="new folder for --dry-run (default: ./push-ORG--NAME)")
    parser.add_argument("--env", help="Kedro configuration environment whose catalog to read (default: local)")
    return parser


def push_main(argv: list[str] | None = None) -> int:
    args = build_push_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    if args.repo_id.count("/") != 1 or not all(args.repo_id.split("/")):
        print(f"vernacular push: --repo-id {args.repo_id!r}: expected ORG/NAME", file=sys.stderr)
        return 2
    project = Project(args.env)
    out = args.out or Path(f"push-{args.repo_id.replace('/', '--')}")
    try:
        adapter = project.adapter(args.adapter, args.vertical)
        if out.exists():
            raise FileExistsError(f"{out} already exists; choose a new --out")
        for warning in publish_warnings(adapter):
            print(f"vernacular push: warning: {warning}", file=sys.stderr)
        if args.dry_run:
            files = stage_adapter(adapter, out)
            print(json.dumps({"dry_run": True, "repo_id": args.repo_id, "private": args.private,
                              "adapter": adapter, "folder": str(out.resolve()), "files": files}, indent=2))
            return 0
        staging = tempfile.TemporaryDirectory(prefix="vernacular-push-")
        staged = Path(staging.name) / "adapter"
        files = stage_adapter(adapter, staged)
    except (AdapterNotFoundError, PublishError, FileExistsError, OSError, ValueError) as exc:
        print(f"vernacular push: {exc}", file=sys.stderr)
        return 2
    try:
        url = push_adapter(staged, args.repo_id, private=args.private,
                           commit_message=f"Vernacular {args.vertical} adapter ({Path(adapter).parent.name})")
    except Exception as exc:  # the Hub client's errors: offline mode, authentication, permissions, network
        print(f"vernacular push: upload to {args.repo_id} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        staging.cleanup()
    print(json.dumps({"repo_id": args.repo_id, "private": args.private, "adapter": adapter, "files": files,
                      "commit": url}, indent=2))
    return 0
