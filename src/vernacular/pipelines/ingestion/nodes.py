"""Ingestion nodes: source -> validated 16 kHz audio + quarantine -> deterministic splits."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from vernacular.corpus import SyntheticCorpusSettings, build_synthetic_corpus
from vernacular.manifest import AudioLimits, ManifestError, default_root, read_manifest, resolve_rows, \
    split_manifest, validate_and_normalise

log = logging.getLogger(__name__)


def load_source(source: dict, split: dict, storage: dict) -> pd.DataFrame:
    """Read the configured source into manifest rows (absolute paths, `corpus_root`, `parse_error`).

    source.kind: `synthetic` (espeak-ng corpus, built and cached on first use) or `manifest`
    (the user's own recordings: `source.path` is a CSV/TSV/JSONL/NeMo manifest file, a Kaldi data
    directory or a Hugging Face audiofolder; `source.format` names it, `auto` by default). Relative
    audio paths resolve against `source.root`, by default the manifest's folder or the directory itself.
    """
    kind = source.get("kind")
    if kind == "synthetic":
        settings = {k: v for k, v in source.items() if k != "kind"}
        settings.update(validation_fraction=split["validation_fraction"], test_fraction=split["test_fraction"],
                        split_salt=split["salt"])
        path = build_synthetic_corpus(SyntheticCorpusSettings.from_dict(settings), storage["synthetic_dir"])
        fmt, root = "csv", path.parent
    elif kind == "manifest":
        if not source.get("path"):
            raise ManifestError("source.kind is `manifest` but source.path is not set; point it at your manifest "
                                "file or corpus directory")
        path = Path(source["path"])
        fmt = source.get("format") or "auto"
        root = Path(source.get("root") or default_root(path))
    else:
        raise ValueError(f"source.kind must be `synthetic` or `manifest`, got {kind!r}")
    rows, unreadable = read_manifest(path, fmt)
    resolved = resolve_rows(rows, root) if len(rows) else pd.DataFrame(columns=["utterance_id"])
    resolved["parse_error"] = None
    if len(unreadable):
        broken = pd.DataFrame({"utterance_id": [f"row-{n}" for n in unreadable["source_row"]],
                               "source_row": unreadable["source_row"], "parse_error": unreadable["reason"]})
        resolved = pd.concat([resolved, broken], ignore_index=True)
    resolved["corpus_root"] = str(Path(root).resolve())
    resolved["manifest_path"] = str(Path(path).resolve())
    log.info("source %s: %d rows from %s", kind, len(resolved), path)
    return resolved


def validate_corpus(raw_manifest: pd.DataFrame, audio_limits: dict, storage: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate every row; return (clean rows with 16 kHz WAV copies, quarantined rows with reasons)."""
    broken = raw_manifest["parse_error"].notna()
    parse_quarantine = raw_manifest[broken].rename(columns={"parse_error": "reason"})
    rows = raw_manifest[~broken]
    roots = rows["corpus_root"].unique()
    clean, quarantine = validate_and_normalise(rows.drop(columns=["parse_error", "corpus_root", "manifest_path"]),
                                               roots[0] if len(roots) else ".", storage["clean_audio_dir"],
                                               AudioLimits(**audio_limits))
    quarantine = pd.concat([parse_quarantine[[c for c in quarantine.columns if c in parse_quarantine]], quarantine],
                           ignore_index=True)
    return clean, quarantine


def split_corpus(clean_manifest: pd.DataFrame, quarantine: pd.DataFrame, raw_manifest: pd.DataFrame,
                 split: dict) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Assign splits; return (manifest, full quarantine report, ingestion summary)."""
    manifest, rejected = split_manifest(clean_manifest, split["by"], split["validation_fraction"],
                                        split["test_fraction"], split["salt"], split.get("test_only_speakers") or ())
    report = pd.concat([quarantine, rejected], ignore_index=True)
    counts = {"rows_in": len(raw_manifest), "clean": len(manifest), "quarantined": len(report)}
    if counts["rows_in"] != counts["clean"] + counts["quarantined"]:
        raise RuntimeError(f"row accounting broken: {counts}")  # a silent drop would be a bug
    if manifest.empty:
        raise ValueError(f"no usable rows: all {counts['rows_in']} rows were quarantined; see the quarantine "
                         "report for the reasons")
    summary = {**counts,
               "quarantine_reasons": report["reason"].str.split(":").str[0].value_counts().to_dict(),
               "splits": manifest["split"].value_counts().to_dict(),
               "speakers_per_split": manifest.groupby("split")["speaker"].nunique().to_dict(),
               "audio_hours_per_split": (manifest.groupby("split")["duration"].sum() / 3600).round(4).to_dict(),
               "split_rule": {k: split[k] for k in ("by", "validation_fraction", "test_fraction", "salt")},
               "test_only_speakers": list(split.get("test_only_speakers") or []),
               "source_manifest": raw_manifest["manifest_path"].iloc[0] if len(raw_manifest) else None}
    if len(report):
        log.warning("%d of %d rows quarantined: %s", len(report), counts["rows_in"], summary["quarantine_reasons"])
    return manifest, report, summary
