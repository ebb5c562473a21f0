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
    `source.parts` (a list of {path, format, root, split}) reads several corpora or pre-split folders
    into one manifest; `split.by: given` then keeps each part's split. `source.text_case: sentence`
    rewrites UPPER-CASE transcripts in sentence case (Whisper's own output style).
    """
    kind = source.get("kind")
    if kind == "synthetic":
        settings = {k: v for k, v in source.items() if k not in ("kind", "text_case")}
        settings.update(validation_fraction=split["validation_fraction"], test_fraction=split["test_fraction"],
                        split_salt=split["salt"])
        path = build_synthetic_corpus(SyntheticCorpusSettings.from_dict(settings), storage["synthetic_dir"])
        parts = [{"path": path, "format": "csv", "root": path.parent}]
    elif kind == "manifest":
        parts = source.get("parts") or ([{k: source.get(k) for k in ("path", "format", "root")}]
                                        if source.get("path") else [])
        if not parts or not all(p.get("path") for p in parts):
            raise ManifestError("source.kind is `manifest` but no source.path (or source.parts[].path) is set; point "
                                "it at your manifest file or corpus directory")
    else:
        raise ValueError(f"source.kind must be `synthetic` or `manifest`, got {kind!r}")
    frames = []
    for part in parts:
        path = Path(part["path"])
        root = Path(part.get("root") or default_root(path))
        rows, unreadable = read_manifest(path, part.get("format") or "auto")
        resolved = resolve_rows(rows, root) if len(rows) else pd.DataFrame(columns=["utterance_id"])
        resolved["parse_error"] = None
        if len(unreadable):
            broken = pd.DataFrame({"utterance_id": [f"row-{n}" for n in unreadable["source_row"]],
                                   "source_row": unreadable["source_row"], "parse_error": unreadable["reason"]})
            resolved = pd.concat([resolved, broken], ignore_index=True)
        resolved["corpus_root"] = str(root.resolve())
        resolved["manifest_path"] = str(path.resolve())
        if part.get("split"):
            resolved["given_split"] = part["split"]
        frames.append(resolved)
        log.info("source %s: %d rows from %s", kind, len(resolved), path)
    resolved = pd.concat(frames, ignore_index=True)
    case = source.get("text_case", "as_is")
    if case == "sentence":
        resolved["text"] = [sentence_case(t) if isinstance(t, str) else t for t in resolved["text"]]
    elif case != "as_is":
        raise ValueError(f"source.text_case must be `as_is` or `sentence`, got {case!r}")
    return resolved


def sentence_case(text: str) -> str:
    """"MARK IS GOING TO SEE ELEPHANT" -> "Mark is going to see elephant" ("I" stays upper case)."""
    words = text.strip().lower().split()
    words = ["I" if w == "i" else "I'" + w[2:] if w.startswith("i'") else w for w in words]
    return (" ".join(words))[:1].upper() + (" ".join(words))[1:]


def validate_corpus(raw_manifest: pd.DataFrame, audio_limits: dict, storage: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate every row; return (clean rows with 16 kHz WAV copies, quarantined rows with reasons)."""
    broken = raw_manifest["parse_error"].notna()
    parse_quarantine = raw_manifest[broken].rename(columns={"parse_error": "reason"})
    rows = raw_manifest[~broken]
    cleans, quarantines = [], []
    for root, part in rows.groupby("corpus_root", sort=False):  # each source part has its own root
        clean, quarantine = validate_and_normalise(part.drop(columns=["parse_error", "corpus_root", "manifest_path"]),
                                                   root, storage["clean_audio_dir"], AudioLimits(**audio_limits))
        cleans.append(clean)
        quarantines.append(quarantine)
    if not cleans:  # every row unreadable
        clean, quarantine = validate_and_normalise(rows.drop(columns=["parse_error", "corpus_root", "manifest_path"]),
                                                   ".", storage["clean_audio_dir"], AudioLimits(**audio_limits))
        cleans, quarantines = [clean], [quarantine]
    clean = pd.concat(cleans, ignore_index=True)
    quarantine = pd.concat(quarantines, ignore_index=True)
    duplicate = clean["utterance_id"].duplicated()
    if duplicate.any():  # the same id in two source parts
        quarantine = pd.concat([quarantine, clean[duplicate].assign(
            reason=[f"duplicate utterance_id {u!r} across source parts" for u in clean.loc[duplicate, "utterance_id"]])],
            ignore_index=True)
        clean = clean[~duplicate].reset_index(drop=True)
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
               "source_manifests": sorted(raw_manifest["manifest_path"].dropna().unique().tolist())}
    if len(report):
        log.warning("%d of %d rows quarantined: %s", len(report), counts["rows_in"], summary["quarantine_reasons"])
    return manifest, report, summary
