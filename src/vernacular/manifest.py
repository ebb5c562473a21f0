"""Manifest reading, row validation with quarantine, and deterministic splits.

A manifest row (the typed record every source is turned into) has:

| column | meaning |
|---|---|
| utterance_id | unique id (given, or derived from the audio path and offset) |
| audio_path | absolute path of the source recording |
| text | reference transcript |
| speaker | speaker or voice id ("unknown" when absent) |
| offset, duration | optional segment within the recording, seconds |
| source_row | 1-based row number in the source manifest, for error messages |
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from vernacular.audio import TARGET_SAMPLE_RATE, AudioError, read_audio, write_wav

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["utterance_id", "audio_path", "text", "speaker", "offset", "duration", "source_row"]
SPLITS = ("train", "validation", "test")


class ManifestError(ValueError):
    """A manifest that cannot be read at all (as opposed to a bad row, which is quarantined)."""


@dataclass(frozen=True)
class AudioLimits:
    min_seconds: float = 0.3
    max_seconds: float = 30.0
    min_peak: float = 1e-4  # below this the clip is treated as silence


def read_manifest(path: str | Path, fmt: str = "auto") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read a CSV or JSONL manifest into (rows, unreadable_rows).

    Required columns: `audio_path` and `text`; optional: `speaker`, `utterance_id`, `offset`,
    `duration`. Relative audio paths are kept as written; `resolve_rows` anchors them.
    Rows that cannot be parsed at all (bad JSON) come back in the second frame with a reason.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found; set `source.path` in conf/ to an existing file")
    if fmt == "auto":
        fmt = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}.get(path.suffix.lower())
        if fmt is None:
            raise ManifestError(f"{path}: cannot tell the manifest format from the extension; "
                                "set `source.format` to csv, tsv or jsonl")
    bad: list[dict] = []
    if fmt in ("csv", "tsv"):
        text = path.read_text(encoding="utf-8-sig")
        reader = csv.DictReader(io.StringIO(text), delimiter="," if fmt == "csv" else "\t")
        records = []
        for number, record in enumerate(reader, start=1):
            if None in record:  # more fields than header columns
                bad.append({"source_row": number, "reason": "malformed row: more fields than header columns"})
                continue
            record["source_row"] = number
            records.append(record)
        columns = reader.fieldnames or []
    elif fmt == "jsonl":
        records, columns = [], set()
        for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                bad.append({"source_row": number, "reason": f"malformed JSON line: {exc}"})
                continue
            record["source_row"] = number
            columns.update(record)
            records.append(record)
    else:
        raise ManifestError(f"{path}: unknown manifest format {fmt!r}; use csv, tsv or jsonl")
    missing = {"audio_path", "text"} - set(columns)
    if missing and records:
        raise ManifestError(f"{path}: missing required column(s) {sorted(missing)}; a manifest needs "
                            "`audio_path` and `text` (and ideally `speaker`)")
    if not records and not bad:
        raise ManifestError(f"{path}: manifest has no rows")
    frame = pd.DataFrame.from_records(records)
    for column, default in (("speaker", "unknown"), ("utterance_id", None), ("offset", 0.0), ("duration", None)):
        if column not in frame:
            frame[column] = default
    bad_frame = pd.DataFrame(bad, columns=["source_row", "reason"])
    return frame, bad_frame


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == ""


def resolve_rows(rows: pd.DataFrame, root: str | Path) -> pd.DataFrame:
    """Anchor relative paths at `root`, fill ids and speakers, and type the columns."""
    root = Path(root).resolve()
    out = rows.copy()
    out["audio_path"] = [str((root / str(p)).resolve()) if not _blank(p) else "" for p in out["audio_path"]]
    out["speaker"] = ["unknown" if _blank(s) else str(s).strip() for s in out["speaker"]]
    out["text"] = ["" if _blank(t) else str(t).strip() for t in out["text"]]
    out["offset"] = [0.0 if _blank(o) else float(o) for o in out["offset"]]
    out["duration"] = [None if _blank(d) else float(d) for d in out["duration"]]
    ids = []
    for path, offset, given in zip(out["audio_path"], out["offset"], out["utterance_id"]):
        if not _blank(given):
            ids.append(str(given))
        else:
            stem = Path(path).stem or "row"
            digest = hashlib.sha1(f"{path}|{offset}".encode()).hexdigest()[:8]
            ids.append(f"{stem}-{digest}")
    out["utterance_id"] = ids
    return out[MANIFEST_COLUMNS].reset_index(drop=True)


def _cache_key(path: Path, offset: float, duration: float | None) -> str:
    stat = path.stat()
    return hashlib.sha1(f"{path}|{stat.st_size}|{stat.st_mtime_ns}|{offset}|{duration}".encode()).hexdigest()[:16]


def validate_and_normalise(rows: pd.DataFrame, root: str | Path, audio_dir: str | Path,
                           limits: AudioLimits = AudioLimits()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Check every row and write 16 kHz mono WAV copies of the good ones.

    Returns (clean, quarantine). Every input row ends up in exactly one of them; quarantine
    rows carry a `reason`. Normalised audio is cached by source path, size, mtime and segment,
    so a rerun does not decode unchanged files again.
    """
    root = Path(root).resolve()
    audio_dir = Path(audio_dir)
    audio_dir.mkdir(parents=True, exist_ok=True)
    clean, quarantine = [], []
    seen_ids: set[str] = set()
    for row in rows.to_dict("records"):
        reason = None
        # Values may have been through a CSV round trip (None -> NaN).
        row["offset"] = 0.0 if _blank(row["offset"]) else float(row["offset"])
        row["duration"] = None if _blank(row["duration"]) else float(row["duration"])
        row["text"] = "" if _blank(row["text"]) else str(row["text"]).strip()
        path = Path(row["audio_path"]) if not _blank(row["audio_path"]) else None
        if not row["text"]:
            reason = "missing transcript: the text column is empty"
        elif path is None:
            reason = "missing audio_path"
        elif not path.is_relative_to(root):
            reason = f"audio path {path} is outside the corpus root {root}"
        elif not path.is_file():
            reason = f"audio file not found: {path}"
        elif row["utterance_id"] in seen_ids:
            reason = f"duplicate utterance_id {row['utterance_id']!r}"
        if reason is None:
            key = _cache_key(path, row["offset"], row["duration"])
            target = audio_dir / f"{key}.wav"
            try:
                if target.is_file():
                    info = sf.info(str(target))
                    seconds = info.frames / info.samplerate
                    peak = None
                else:
                    audio = read_audio(path, TARGET_SAMPLE_RATE, row["offset"], row["duration"])
                    seconds = len(audio) / TARGET_SAMPLE_RATE
                    peak = float(np.abs(audio).max())
                if seconds < limits.min_seconds:
                    reason = f"too short: {seconds:.2f} s < {limits.min_seconds} s"
                elif seconds > limits.max_seconds:
                    reason = (f"too long: {seconds:.1f} s > {limits.max_seconds} s; split the recording "
                              "into segments (offset/duration columns) first")
                elif peak is not None and peak < limits.min_peak:
                    reason = f"silent audio (peak {peak:.1e})"
                elif peak is not None:
                    write_wav(target, audio)
            except AudioError as exc:
                reason = str(exc)
        if reason is not None:
            quarantine.append({**row, "reason": reason})
            continue
        seen_ids.add(row["utterance_id"])
        clean.append({**row, "source_audio_path": row["audio_path"], "audio_path": str(target.resolve()),
                      "duration": round(seconds, 4)})
    clean_frame = pd.DataFrame(clean, columns=[*MANIFEST_COLUMNS, "source_audio_path"])
    quarantine_frame = pd.DataFrame(quarantine, columns=[*MANIFEST_COLUMNS, "reason"])
    return clean_frame, quarantine_frame


def normalise_key(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def assign_split(key: str, validation_fraction: float, test_fraction: float, salt: str = "") -> str:
    """Hash-based split: stable for a key whatever other rows exist."""
    if not 0 <= validation_fraction < 1 or not 0 <= test_fraction < 1 or validation_fraction + test_fraction >= 1:
        raise ValueError("split fractions must be in [0, 1) and leave room for training; "
                         f"got validation={validation_fraction}, test={test_fraction}")
    bucket = int(hashlib.sha256(f"{salt}|{key}".encode()).hexdigest()[:12], 16) / float(16 ** 12)
    if bucket < test_fraction:
        return "test"
    if bucket < test_fraction + validation_fraction:
        return "validation"
    return "train"


def split_manifest(clean: pd.DataFrame, by: str, validation_fraction: float, test_fraction: float,
                   salt: str = "vernacular", test_only_speakers: list[str] | tuple = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Add a `split` column. Returns (manifest with split, rows rejected by the split rule).

    by: "sentence" (all readings of one normalised sentence share a split), "speaker"
    (speaker-disjoint) or "utterance". Speakers in `test_only_speakers` are held out for test:
    with by="sentence" their rows on non-test sentences are rejected, so no test sentence or
    held-out voice is ever trained on.
    """
    keys = {"sentence": lambda r: normalise_key(r["text"]), "speaker": lambda r: r["speaker"],
            "utterance": lambda r: r["utterance_id"]}
    if by not in keys:
        raise ValueError(f"split.by must be one of {sorted(keys)}, got {by!r}")
    if by == "speaker" and set(clean["speaker"]) <= {"unknown"}:
        log.warning("split.by=speaker but no speakers are known: splitting by utterance instead")
        by = "utterance"
    held_out = set(test_only_speakers)
    frame = clean.copy()
    splits = [assign_split(keys[by](r), validation_fraction, test_fraction, salt) for r in frame.to_dict("records")]
    frame["split"] = splits
    in_held = frame["speaker"].isin(held_out)
    rejected = frame[in_held & (frame["split"] != "test")].copy()
    if by == "speaker":
        frame.loc[in_held, "split"] = "test"
        rejected = rejected.iloc[0:0]
    else:
        frame = frame[~(in_held & (frame["split"] != "test"))]
    rejected["reason"] = "held-out test speaker on a non-test sentence"
    return frame.reset_index(drop=True), rejected.drop(columns=["split"]).reset_index(drop=True)
