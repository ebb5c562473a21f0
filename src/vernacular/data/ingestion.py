"""Ingestion: the configured source -> manifest rows -> validated 16 kHz audio + quarantine -> splits.

Every input row ends in the manifest or in the quarantine report with a reason; `split_corpus`
checks the accounting (`rows_in == clean + quarantined`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

import pandas as pd

from vernacular.common.config import build_settings
from vernacular.common.text import sentence_case
from vernacular.data.corpus import SyntheticCorpusSettings, build_synthetic_corpus
from vernacular.data.manifest import AudioLimits, ManifestError, corpus_name, default_root, read_manifest, \
    resolve_rows, source_exists, split_manifest, validate_and_normalise

log = logging.getLogger(__name__)

SOURCE_KINDS = ("synthetic", "manifest")
TEXT_CASES = ("as_is", "sentence")
SPLIT_RULES = ("sentence", "speaker", "utterance", "given")


@dataclass
class SourcePart:
    """One corpus of a `manifest` source: a manifest file or a corpus directory."""

    path: str
    format: str = "auto"
    root: str | None = None
    split: str | None = None  # every row of this part gets this split (any split.by; required with `given`)


@dataclass
class ReplaySet:
    """A corpus of real general speech mixed into the training split (`source.replay.sets[]`)."""

    path: str
    format: str = "auto"
    name: str | None = None
    text_case: str = "as_is"  # sentence: an UPPER-CASE corpus in the model's own sentence case

    def __post_init__(self) -> None:
        if self.text_case not in TEXT_CASES:
            raise ValueError(f"source.replay.sets[].text_case must be `as_is` or `sentence`, got {self.text_case!r}")


@dataclass
class ReplaySettings:
    """`source.replay`: real general speech added to the training split so the adapter keeps
    ordinary speech (docs/training.md, "Replay"). The last `utterances` rows of each present corpus
    are used: the forgetting control reads its corpora from the start, so the two stay disjoint."""

    sets: list[ReplaySet] = field(default_factory=list)
    utterances: int = 150  # per corpus; 0: off
    when_missing: str = "warn"  # warn | error: a configured corpus that does not exist

    def __post_init__(self) -> None:
        self.sets = [build_settings(ReplaySet, s, "source.replay.sets[]") if isinstance(s, dict) else s
                     for s in (self.sets or [])]
        if self.when_missing not in ("warn", "error"):
            raise ValueError(f"source.replay.when_missing: {self.when_missing!r}; use warn or error")
        if self.utterances < 0:
            raise ValueError(f"source.replay.utterances must be >= 0, got {self.utterances}")


@dataclass
class SourceSettings:
    """`params:<vertical>.source`: a synthetic espeak-ng corpus or the user's own recordings."""

    kind: str = "synthetic"
    text_case: str = "as_is"  # sentence: rewrite UPPER-CASE transcripts in sentence case
    # kind: manifest
    path: str | None = None
    format: str = "auto"
    root: str | None = None
    parts: list[SourcePart] = field(default_factory=list)
    # kind: synthetic: the fields of SyntheticCorpusSettings, with its defaults
    sentences: str = SyntheticCorpusSettings.sentences
    train_voices: list[str] = field(default_factory=lambda: list(SyntheticCorpusSettings().train_voices))
    heldout_voices: list[str] = field(default_factory=lambda: list(SyntheticCorpusSettings().heldout_voices))
    heldout_share: float = SyntheticCorpusSettings.heldout_share
    readings_per_sentence: int = SyntheticCorpusSettings.readings_per_sentence
    rate_range: list[int] = field(default_factory=lambda: list(SyntheticCorpusSettings.rate_range))
    pitch_range: list[int] = field(default_factory=lambda: list(SyntheticCorpusSettings.pitch_range))
    max_sentences: int | None = SyntheticCorpusSettings.max_sentences
    replay: ReplaySettings = field(default_factory=ReplaySettings)

    def __post_init__(self) -> None:
        if isinstance(self.replay, dict) or self.replay is None:
            self.replay = build_settings(ReplaySettings, self.replay, "source.replay")
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"source.kind must be `synthetic` or `manifest`, got {self.kind!r}")
        if self.text_case not in TEXT_CASES:
            raise ValueError(f"source.text_case must be `as_is` or `sentence`, got {self.text_case!r}")

    @classmethod
    def from_dict(cls, values: dict | None) -> "SourceSettings":
        return build_settings(cls, values, "source")


@dataclass
class SplitSettings:
    """`params:<vertical>.split`: hash-based, reproducible splits (docs/architecture.md)."""

    by: str = "sentence"
    validation_fraction: float = 0.1
    test_fraction: float = 0.2
    salt: str = "vernacular"
    test_only_speakers: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.by not in SPLIT_RULES:
            raise ValueError(f"split.by must be one of {SPLIT_RULES}, got {self.by!r}")

    @classmethod
    def from_dict(cls, values: dict | None) -> "SplitSettings":
        return build_settings(cls, values, "split")


def load_source(source: SourceSettings, split: SplitSettings, synthetic_dir: str | Path) -> pd.DataFrame:
    """Read the configured source into manifest rows (absolute paths, `corpus_root`, `parse_error`).

    source.kind: `synthetic` (espeak-ng corpus, built and cached on first use) or `manifest`
    (the user's own recordings: `source.path` is a CSV/TSV/JSONL/NeMo manifest file, a Kaldi data
    directory or a Hugging Face audiofolder; `source.format` names it, `auto` by default). Relative
    audio paths resolve against `source.root`, by default the manifest's folder or the directory itself.
    `source.parts` (a list of {path, format, root, split}) reads several corpora or pre-split folders
    into one manifest; `split.by: given` then keeps each part's split. `source.text_case: sentence`
    rewrites UPPER-CASE transcripts in sentence case (Whisper's own output style).
    """
    kind = source.kind
    if kind == "synthetic":
        shared = {f.name: getattr(source, f.name) for f in fields(SyntheticCorpusSettings) if hasattr(source, f.name)}
        settings = SyntheticCorpusSettings(**{**shared, "rate_range": tuple(source.rate_range),
                                              "pitch_range": tuple(source.pitch_range)},
                                           validation_fraction=split.validation_fraction,
                                           test_fraction=split.test_fraction, split_salt=split.salt)
        path = build_synthetic_corpus(settings, synthetic_dir)
        parts = [SourcePart(path=str(path), format="csv", root=str(path.parent))]
    else:
        parts = source.parts or ([SourcePart(path=source.path, format=source.format, root=source.root)]
                                 if source.path else [])
        if not parts:
            raise ManifestError("source.kind is `manifest` but no source.path (or source.parts[].path) is set; point "
                                "it at your manifest file or corpus directory")
    frames = []
    for part in parts:
        path = Path(part.path)
        root = Path(part.root or default_root(path))
        rows, unreadable = read_manifest(path, part.format or "auto")
        resolved = resolve_rows(rows, root) if len(rows) else pd.DataFrame(columns=["utterance_id"])
        resolved["parse_error"] = None
        if len(unreadable):
            broken = pd.DataFrame({"utterance_id": [f"row-{n}" for n in unreadable["source_row"]],
                                   "source_row": unreadable["source_row"], "parse_error": unreadable["reason"]})
            resolved = pd.concat([resolved, broken], ignore_index=True)
        resolved["corpus_root"] = str(root.resolve())
        resolved["manifest_path"] = str(path.resolve())
        if part.split:
            resolved["given_split"] = part.split
        frames.append(resolved)
        log.info("source %s: %d rows from %s", kind, len(resolved), path)
    frames.extend(replay_rows(source.replay))
    resolved = pd.concat(frames, ignore_index=True)
    if source.text_case == "sentence":
        resolved["text"] = [sentence_case(t) if isinstance(t, str) else t for t in resolved["text"]]
    return resolved


def replay_rows(replay: ReplaySettings) -> list[pd.DataFrame]:
    """The replay corpora's rows (the last `utterances` with a transcript of each), split `train`,
    `replay_set` naming the corpus; one frame per corpus found."""
    if not replay.utterances or not replay.sets:
        return []
    frames = []
    for spec in replay.sets:
        path = Path(spec.path)
        if not source_exists(path):
            if replay.when_missing == "error":
                raise ManifestError(f"source.replay: {spec.path} does not exist; point source.replay.sets at real "
                                    "general speech of yours, or set source.replay.utterances: 0")
            log.warning("source.replay: %s not found; training without it", spec.path)
            continue
        rows, unreadable = read_manifest(path, spec.format or "auto")
        if len(unreadable):
            log.warning("source.replay %s: %d entries left out: %s", spec.path, len(unreadable),
                        "; ".join(unreadable["reason"].astype(str).head(5)))
        root = default_root(path)
        rows = resolve_rows(rows, root)
        rows = rows[rows["text"].astype(str).str.strip().str.len() > 0].tail(replay.utterances).copy()
        if spec.text_case == "sentence":
            rows["text"] = [sentence_case(t) for t in rows["text"]]
        rows["parse_error"] = None
        rows["corpus_root"] = str(Path(root).resolve())
        rows["manifest_path"] = str(path.resolve())
        rows["given_split"] = "train"
        rows["replay_set"] = corpus_name(path, spec.name)
        log.info("source.replay: %d rows of %s (%s) added to the training split", len(rows), rows["replay_set"].iat[0]
                 if len(rows) else spec.path, spec.path)
        frames.append(rows)
    return frames


def validate_corpus(raw_manifest: pd.DataFrame, limits: AudioLimits,
                    clean_audio_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate every row; return (clean rows with 16 kHz WAV copies, quarantined rows with reasons)."""
    broken = raw_manifest["parse_error"].notna()
    parse_quarantine = raw_manifest[broken].rename(columns={"parse_error": "reason"})
    rows = raw_manifest[~broken]
    cleans, quarantines = [], []
    for root, part in rows.groupby("corpus_root", sort=False):  # each source part has its own root
        clean, quarantine = validate_and_normalise(part.drop(columns=["parse_error", "corpus_root", "manifest_path"]),
                                                   root, clean_audio_dir, limits)
        cleans.append(clean)
        quarantines.append(quarantine)
    if not cleans:  # every row unreadable
        clean, quarantine = validate_and_normalise(rows.drop(columns=["parse_error", "corpus_root", "manifest_path"]),
                                                   ".", clean_audio_dir, limits)
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
                 split: SplitSettings) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Assign splits; return (manifest, full quarantine report, ingestion summary)."""
    manifest, rejected = split_manifest(clean_manifest, split.by, split.validation_fraction,
                                        split.test_fraction, split.salt, split.test_only_speakers or ())
    report = pd.concat([quarantine, rejected], ignore_index=True)
    counts = {"rows_in": len(raw_manifest), "clean": len(manifest), "quarantined": len(report)}
    if counts["rows_in"] != counts["clean"] + counts["quarantined"]:
        raise RuntimeError(f"row accounting broken: {counts}")  # a silent drop would be a bug
    # An empty manifest is saved with its quarantine report; `require_usable_rows` stops the next stage.
    summary = {**counts,
               "quarantine_reasons": report["reason"].map(reason_kind).value_counts().to_dict(),
               "splits": manifest["split"].value_counts().to_dict(),
               "speakers_per_split": manifest.groupby("split")["speaker"].nunique().to_dict(),
               "audio_hours_per_split": (manifest.groupby("split")["duration"].sum() / 3600).round(4).to_dict(),
               "split_rule": {k: getattr(split, k) for k in ("by", "validation_fraction", "test_fraction", "salt")},
               "test_only_speakers": list(split.test_only_speakers or []),
               "source_manifests": sorted(raw_manifest["manifest_path"].dropna().unique().tolist())}
    if "replay_set" in manifest and manifest["replay_set"].notna().any():
        summary["replay_rows"] = manifest["replay_set"].dropna().value_counts().to_dict()
    if len(report):
        log.warning("%d of %d rows quarantined: %s", len(report), counts["rows_in"], summary["quarantine_reasons"])
    return manifest, report, summary


def reason_kind(reason: str) -> str:
    """The kind of a quarantine reason, without the file, line and figures it names:
    "/data/a.wav: cannot decode audio (...)" -> "cannot decode audio"."""
    text = _LEADING_PATH.sub("", str(reason))
    return _REASON_END.split(text, maxsplit=1)[0].strip() or str(reason)


_LEADING_PATH = re.compile(r"^[^\s:]*[/\\][^\s:]*: ")  # "<file path>: " at the start
_REASON_END = re.compile(r"[:(']")


def require_usable_rows(manifest: pd.DataFrame, vertical: str) -> None:
    """Stop a run whose ingestion kept no row, pointing at the saved quarantine report."""
    if manifest.empty or not (manifest["split"] == "train").any():
        kept = "no row" if manifest.empty else "no training row"
        raise ValueError(f"no usable rows: ingestion kept {kept}; the reasons are in this run's quarantine report "
                         f"(the newest version of the catalog entry {vertical}.quarantine) and the counts in "
                         f"{vertical}.ingestion_summary")
