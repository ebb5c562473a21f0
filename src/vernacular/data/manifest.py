"""Manifest reading, row validation with quarantine, and deterministic splits.

A manifest row (the typed record every source is turned into) has:

| column | meaning |
|---|---|
| utterance_id | unique id (given, or derived from the audio path and offset) |
| audio_path | absolute path of the source recording |
| text | reference transcript |
| speaker | speaker or voice id ("unknown" when absent) |
| offset, duration | optional segment within the recording, seconds |
| source_row | 1-based line of the row in the source file, for error messages |

Any other source column (Kaldi `gender`/`age`, a CSV's own metadata) follows these, unchanged.

Source formats (`read_manifest`): `csv`, `tsv`, `jsonl` (columns as above), `nemo` (JSON lines with
`audio_filepath`, `duration`, `text`, `offset`), `kaldi` (a data directory: `wav.scp`, `text`,
`utt2spk`, optional `segments`, `spk2gender`, `spk2age`) and `audiofolder` (Hugging Face layout:
`metadata.csv` or `metadata.jsonl` with `file_name` and a transcript column, beside the audio).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from vernacular.common.fileio import file_key, sha256_file, sha256_text, short_id
from vernacular.common.storage import portable_path
from vernacular.common.text import sentence_key
from vernacular.data.audio import AUDIO_EXTENSIONS, TARGET_SAMPLE_RATE, AudioError, read_audio, write_wav

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["utterance_id", "audio_path", "text", "speaker", "offset", "duration", "source_row"]
SPLITS = ("train", "validation", "test")
FORMATS = ("csv", "tsv", "jsonl", "nemo", "kaldi", "audiofolder", "sidecar")
# `sidecar`: audio files each with a same-named .txt transcript beside it (LibriSpeech-style, FLEURS
# exports); the path is the folder or a glob of the audio files (`corpus/fleurs-en-*.ogg`).
SIDECAR_SUFFIX = ".txt"
_GLOB_CHARS = frozenset("*?[")
FORMAT_HINT = f"set `source.format` to one of {', '.join(FORMATS)}"
# Columns the pipeline adds itself; a source column of the same name is kept as `orig_<name>`.
RESERVED_COLUMNS = frozenset({*MANIFEST_COLUMNS, "source_audio_path", "reason", "split", "parse_error",
                              "corpus_root", "manifest_path"})
AUDIOFOLDER_TEXT_COLUMNS = ("transcription", "text", "sentence", "transcript")
AUDIOFOLDER_SPEAKER_COLUMNS = ("speaker", "speaker_id", "client_id")
AUDIOFOLDER_METADATA = ("metadata.csv", "metadata.jsonl")
# Kaldi's extract-segments tolerates segments that end this far past the recording.
SEGMENT_OVERSHOOT_SECONDS = 0.5


class ManifestError(ValueError):
    """A manifest that cannot be read at all (as opposed to a bad row, which is quarantined)."""


@dataclass(frozen=True)
class AudioLimits:
    """`params:<vertical>.audio_limits`: what a usable clip is (docs/reliability.md lists each reason)."""

    min_seconds: float = 0.3
    max_seconds: float = 30.0
    min_peak: float = 1e-4  # below this the clip is treated as silence
    min_std: float = 1e-5  # a constant signal (DC) has no variation at all
    max_clipped_share: float = 0.01  # share of samples at full scale (|x| >= 0.999)
    # Spectral flatness of the louder half of the frames: white noise ~0.56; the shared real corpora
    # and espeak-ng stay below 0.14 (measured, docs/reliability.md).
    max_spectral_flatness: float = 0.4
    # Words of the transcript per second of audio: real read speech here is 0.5-3.9.
    min_words_per_second: float = 0.1
    max_words_per_second: float = 8.0

    def check(self, audio: np.ndarray, sample_rate: int, words: int) -> str | None:
        """Why a decoded clip is not usable speech for its transcript, or None."""
        seconds = len(audio) / sample_rate
        peak = float(np.abs(audio).max())
        if seconds < self.min_seconds:
            return f"too short: {seconds:.2f} s < {self.min_seconds} s"
        if seconds > self.max_seconds:
            return (f"too long: {seconds:.1f} s > {self.max_seconds} s; split the recording into segments "
                    "(offset/duration columns) first")
        if peak > 1.0 + 1e-6:
            return (f"samples beyond full scale: peak {peak:.2f} (a float file that is not normalised); "
                    "rescale it to [-1, 1]")
        if peak < self.min_peak:
            return f"silent audio (peak {peak:.1e})"
        if float(audio.std()) < self.min_std:
            return f"no signal: constant value {float(audio.mean()):+.3f} (DC)"
        clipped = float((np.abs(audio) >= 0.999).mean())
        if clipped > self.max_clipped_share:
            return f"clipped: {100 * clipped:.1f}% of samples at full scale (> {100 * self.max_clipped_share:g}%)"
        flatness = spectral_flatness(audio)
        if flatness > self.max_spectral_flatness:
            return f"noise, not speech: spectral flatness {flatness:.2f} > {self.max_spectral_flatness}"
        rate = words / seconds
        if not self.min_words_per_second <= rate <= self.max_words_per_second:
            return (f"transcript does not fit the audio: {words} words in {seconds:.1f} s = {rate:.1f} words/s "
                    f"(expected {self.min_words_per_second}-{self.max_words_per_second}); wrong transcript or "
                    "wrong file?")
        return None


def spectral_flatness(audio: np.ndarray, frame: int = 512) -> float:
    """Median spectral flatness (geometric / arithmetic mean of the power spectrum) of the louder half
    of the frames: near 0 for speech and tones, about 0.56 for white noise."""
    if len(audio) < frame:
        return 0.0
    frames = np.lib.stride_tricks.sliding_window_view(audio, frame)[::frame // 2]
    power = np.abs(np.fft.rfft(frames * np.hanning(frame), axis=1)) ** 2 + 1e-12
    energy = power.sum(1)
    loud = power[energy >= np.median(energy)]
    return float(np.median(np.exp(np.log(loud).mean(1)) / loud.mean(1)))


def has_words(text: str) -> bool:
    """True when the text holds a letter or a digit of any script (not only punctuation or symbols)."""
    return any(unicodedata.category(c)[0] in "LN" for c in text)


def _first_json_object(path: Path, max_lines: int = 50) -> dict | None:
    with open(path, encoding="utf-8-sig", errors="replace") as handle:
        for number, line in enumerate(handle):
            if number >= max_lines:
                break
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                return record
    return None


def _csv_header(path: Path) -> list[str]:
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as handle:
        return next(csv.reader(handle), [])


def detect_format(path: str | Path) -> str:
    """Tell the source format of `path` (a manifest file or a corpus directory); ManifestError if unknown.

    A directory with `wav.scp` is `kaldi`, one with `metadata.csv`/`metadata.jsonl` is `audiofolder`,
    one with audio files and .txt transcripts beside them (or a glob pattern) is `sidecar`; a JSON-lines
    file whose first object has `audio_filepath` is `nemo`; otherwise the extension decides.
    """
    path = Path(path)
    if is_glob(path):
        return "sidecar"
    if path.is_dir():
        if (path / "wav.scp").is_file():
            return "kaldi"
        if any((path / name).is_file() for name in AUDIOFOLDER_METADATA):
            return "audiofolder"
        if any(p.suffix.lower() in AUDIO_EXTENSIONS and p.with_suffix(SIDECAR_SUFFIX).is_file() for p in path.iterdir()):
            return "sidecar"
        raise ManifestError(f"{path}: a directory without `wav.scp` (Kaldi), `metadata.csv` (audiofolder) or "
                            f"audio files with .txt transcripts beside them (sidecar); point `source.path` at a "
                            f"manifest file or {FORMAT_HINT}")
    suffix = path.suffix.lower()
    if suffix in (".json", ".jsonl"):
        first = _first_json_object(path)
        if first is not None and "audio_filepath" in first:
            return "nemo"
        if path.name.lower() == "metadata.jsonl" and first is not None and "file_name" in first:
            return "audiofolder"
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        if path.name.lower() == "metadata.csv" and "file_name" in _csv_header(path):
            return "audiofolder"
        return suffix[1:]
    if path.name == "wav.scp":
        return "kaldi"
    raise ManifestError(f"{path}: cannot tell the manifest format from the extension; {FORMAT_HINT}")


def default_root(path: str | Path) -> Path:
    """The folder relative audio paths resolve against when `source.root` is not set.

    The manifest file's folder (csv, tsv, jsonl, nemo, and a `metadata.csv` or `wav.scp` given as a
    file); the directory itself for a Kaldi data directory or an audiofolder.
    """
    path = Path(path)
    return path if path.is_dir() else path.parent


def is_glob(path: str | Path) -> bool:
    return bool(_GLOB_CHARS & set(Path(path).name))


def source_exists(path: str | Path) -> bool:
    """A corpus path (file, folder, or a glob over file names) that names at least one thing."""
    p = Path(path)
    return any(p.parent.glob(p.name)) if is_glob(p) else p.exists()


def corpus_name(path: str | Path, name: str | None = None) -> str:
    """A short name for a corpus in reports: `name`, else its folder (Kaldi dir, audiofolder, glob) or file name."""
    if name:
        return name
    p = Path(path)
    return p.parent.name if p.name in ("wav.scp", "metadata.csv") or is_glob(p) else p.name


def sha256_source(path: str | Path) -> dict:
    """SHA-256 of a source manifest: a file, or a corpus directory (Kaldi data dir, audiofolder).

    For a directory, every top-level file that is not audio is hashed (wav.scp, text, utt2spk,
    segments, metadata.csv, ...) and the directory digest is the SHA-256 of the `sha256sum`-style
    listing "<sha256>  <name>" lines, sorted by name. A glob of audio files (sidecar corpus) hashes
    the transcripts beside the matches the same way. A path that no longer exists is recorded as missing.
    """
    path = Path(path)
    if path.is_file():
        return {"path": str(path), "kind": "file", "sha256": sha256_file(path), "bytes": path.stat().st_size}
    if is_glob(path) or path.is_dir():
        if is_glob(path):
            matches = path.parent.glob(path.name) if path.parent.is_dir() else []
            files = sorted({p.with_suffix(SIDECAR_SUFFIX) for p in matches})
            files = [p for p in files if p.is_file()]
        else:
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() not in AUDIO_EXTENSIONS)
        listing = [{"name": p.name, "sha256": sha256_file(p), "bytes": p.stat().st_size} for p in files]
        combined = sha256_text("".join(f"{f['sha256']}  {f['name']}\n" for f in listing))
        return {"path": str(path), "kind": "glob" if is_glob(path) else "directory", "sha256": combined,
                "files": listing}
    return {"path": str(path), "kind": "missing", "sha256": None}


def _read_text(path: Path) -> str:
    """The file's text; bytes that are not UTF-8 survive as surrogates so that only the rows holding
    them are quarantined (`_not_utf8`), not the whole file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the manifest ({exc})") from exc
    return data.decode("utf-8-sig" if data.startswith(b"\xef\xbb\xbf") else "utf-8", errors="surrogateescape")


def _not_utf8(*values) -> str | None:
    """A reason when any value holds bytes that were not UTF-8, else None."""
    for value in values:
        if isinstance(value, str):
            bad = next((c for c in value if "\udc80" <= c <= "\udcff"), None)
            if bad is not None:
                return (f"not UTF-8 text (byte 0x{ord(bad) - 0xDC00:02X}, e.g. Latin-1); re-save the file as "
                        "UTF-8")
    return None


def _read_table(path: Path, fmt: str) -> tuple[list[dict], list[str], list[dict]]:
    """Records, column names and unparseable rows of a CSV/TSV/JSON-lines file.

    `source_row` is the record's first line in the file. TSV has no quoting (a transcript may start
    with `"`); a CSV record spanning several lines (usually an unbalanced quote) is quarantined line by
    line, so every data line of the file is one kept or quarantined row.
    """
    bad: list[dict] = []
    records: list[dict] = []
    text = _read_text(path)
    if fmt in ("csv", "tsv"):
        options = {"delimiter": ","} if fmt == "csv" else {"delimiter": "\t", "quoting": csv.QUOTE_NONE}
        reader = csv.DictReader(io.StringIO(text), **options)
        columns = list(reader.fieldnames or [])
        if _not_utf8(*columns):
            raise ManifestError(f"{path}: header line: {_not_utf8(*columns)}")
        physical = text.splitlines()
        previous = reader.line_num
        for record in reader:
            first, last = previous + 1, reader.line_num
            while first < last and not physical[first - 1].strip():  # blank lines the reader skipped
                first += 1
            previous = last
            problem = None
            if None in record:  # more fields than header columns
                problem = f"more fields ({len(columns) + len(record[None])}) than header columns ({len(columns)})"
            elif last > first and any("\n" in str(v) for v in record.values()):
                for line in range(first, last + 1):
                    bad.append({"source_row": line, "reason": f"malformed row: {path.name}:{line}: inside a quoted "
                                f"field spanning lines {first}-{last} (an unbalanced quote?); fix the quoting"})
                continue
            else:
                problem = _not_utf8(*record.values())
            if problem:
                bad.append({"source_row": first, "reason": f"malformed row: {path.name}:{first}: {problem}"})
                continue
            record["source_row"] = first
            records.append(record)
        return records, columns, bad
    columns: dict[str, None] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            if _not_utf8(line):
                raise ValueError(_not_utf8(line))
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            bad.append({"source_row": number, "reason": f"malformed JSON line: {path.name}:{number}: {exc}"})
            continue
        record["source_row"] = number
        columns.update(dict.fromkeys(record))
        records.append(record)
    return records, list(columns), bad


def _rename(records: list[dict], mapping: dict[str, str]) -> list[dict]:
    """Map source column names to manifest names; a clashing source column becomes `orig_<name>`."""
    out = []
    for record in records:
        renamed = {}
        for key, value in record.items():
            if key in mapping:
                renamed[mapping[key]] = value
            elif key in mapping.values() or (key in RESERVED_COLUMNS and key not in MANIFEST_COLUMNS):
                # e.g. a `text` column beside the chosen `transcription`, or the source's own `split`
                renamed[f"orig_{key}"] = value
            else:
                renamed[key] = value
        out.append(renamed)
    return out


def _check_numbers(records: list[dict], bad: list[dict], where: str) -> list[dict]:
    """Move rows whose offset/duration is not a finite number >= 0 to `bad`."""
    kept = []
    for record in records:
        problem = None
        for column in ("offset", "duration"):
            value = record.get(column)
            if _blank(value):
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                problem = f"{column} {value!r} is not a number"
            else:
                if not math.isfinite(number) or number < 0:
                    problem = f"{column} {value!r} must be a finite number >= 0"
            if problem:
                break
        if problem:
            number = record["source_row"]
            bad.append({"source_row": number, "reason": f"malformed row: {where}:{number}: {problem}"})
        else:
            kept.append(record)
    return kept


def _table_manifest(path: Path, fmt: str) -> tuple[list[dict], list[dict]]:
    """csv / tsv / jsonl / nemo files."""
    records, columns, bad = _read_table(path, "jsonl" if fmt == "nemo" else fmt)
    if fmt == "nemo":
        required, mapping = {"audio_filepath", "text"}, {"audio_filepath": "audio_path"}
        needs = "`audio_filepath` and `text` (and `duration`, `offset` for segments)"
    else:
        required, mapping = {"audio_path", "text"}, {}
        needs = "`audio_path` and `text` (and ideally `speaker`)"
    missing = required - set(columns)
    if missing and records:
        hint = ""
        if fmt == "jsonl" and "audio_filepath" in columns:
            hint = "; this looks like a NeMo manifest: set `source.format: nemo`"
        raise ManifestError(f"{path}: missing required column(s) {sorted(missing)}; a {fmt} manifest needs "
                            f"{needs}{hint}")
    return _rename(records, mapping), bad


def _audiofolder_manifest(folder: Path) -> tuple[list[dict], list[dict], Path]:
    metadata = next((folder / name for name in AUDIOFOLDER_METADATA if (folder / name).is_file()), None)
    if metadata is None:
        raise ManifestError(f"{folder}: no `metadata.csv` or `metadata.jsonl` in this audiofolder; "
                            f"add one (columns `file_name`, `transcription`) or {FORMAT_HINT}")
    records, columns, bad = _read_table(metadata, "csv" if metadata.suffix == ".csv" else "jsonl")
    text_column = next((c for c in AUDIOFOLDER_TEXT_COLUMNS if c in columns), None)
    if records and ("file_name" not in columns or text_column is None):
        raise ManifestError(f"{metadata}: an audiofolder `{metadata.name}` needs a `file_name` column and a "
                            f"transcript column (one of {', '.join(AUDIOFOLDER_TEXT_COLUMNS)}); found "
                            f"{', '.join(columns) or 'no columns'}")
    mapping = {"file_name": "audio_path", text_column: "text"}
    speaker_column = next((c for c in AUDIOFOLDER_SPEAKER_COLUMNS if c in columns), None)
    if speaker_column:
        mapping[speaker_column] = "speaker"
    return _rename(records, mapping), bad, metadata


def _sidecar_manifest(path: Path) -> tuple[list[dict], list[dict]]:
    """One row per audio file with its `.txt` transcript; an audio file without one, or a
    transcript without audio, is an unreadable entry (numbered in sorted file order)."""
    folder, pattern = (path.parent, path.name) if is_glob(path) else (path, "*")
    audio = sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
    if not audio:
        raise ManifestError(f"{path}: no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))}) match; point "
                            "`source.path` at the folder or a glob such as corpus/*.flac")
    stems = {p.with_suffix("") for p in audio}
    orphans = [] if is_glob(path) else sorted(
        p for p in folder.glob(f"*{SIDECAR_SUFFIX}") if p.with_suffix("") not in stems)
    records, bad = [], []
    for row, file in enumerate(audio, start=1):
        transcript = file.with_suffix(SIDECAR_SUFFIX)
        if not transcript.is_file():
            bad.append({"source_row": row, "reason": f"{file.name}: no transcript {transcript.name} beside it"})
            continue
        text = _read_text(transcript).strip()
        problem = _not_utf8(text)
        if problem:
            bad.append({"source_row": row, "reason": f"{transcript.name}: {problem}"})
            continue
        records.append({"utterance_id": file.stem, "audio_path": file.name, "text": text, "source_row": row})
    bad += [{"source_row": len(audio) + n, "reason": f"{t.name}: transcript without an audio file of the same name"}
            for n, t in enumerate(orphans, start=1)]
    return records, bad


_ARCHIVE_OFFSET = re.compile(r":\d+(\[[^\]]*\])?$")


def _kaldi_lines(path: Path) -> list[tuple[int, str]]:
    return [(n, line.strip()) for n, line in enumerate(_read_text(path).splitlines(), start=1) if line.strip()]


def _kaldi_manifest(folder: Path) -> tuple[list[dict], list[dict]]:
    """Rows of a Kaldi data directory: one per utterance (per `segments` line when that file exists)."""
    bad: list[dict] = []

    def report(name: str, number: int, category: str, detail: str) -> None:
        bad.append({"source_row": number, "reason": f"{category}: {name}:{number}: {detail}"})

    def pairs(name: str, what: str) -> dict[str, tuple[str, int]] | None:
        """`<key> <value...>` lines of an optional file: {key: (value, line)}."""
        file = folder / name
        if not file.is_file():
            return None
        out: dict[str, tuple[str, int]] = {}
        for number, line in _kaldi_lines(file):
            parts = line.split(maxsplit=1)
            value = parts[1].strip() if len(parts) > 1 else ""
            if name != "text" and (not value or len(value.split()) != 1):
                report(name, number, f"malformed {name} line", f"expected `<id> <{what}>`, got {line!r}")
            elif parts[0] in out:
                report(name, number, f"duplicate id in {name}", f"{parts[0]!r} is already on line {out[parts[0]][1]}")
            else:
                out[parts[0]] = (value, number)
        return out

    if not (folder / "wav.scp").is_file():
        raise ManifestError(f"{folder}: not a Kaldi data directory (no `wav.scp`); {FORMAT_HINT}")
    if not (folder / "text").is_file():
        raise ManifestError(f"{folder}: Kaldi data directory without a `text` file; add the transcripts "
                            "(`<utterance-id> <transcript>` per line)")
    recordings: dict[str, tuple[str, int]] = {}
    broken_recordings: dict[str, str] = {}  # id -> where its unusable wav.scp entry is
    for number, line in _kaldi_lines(folder / "wav.scp"):
        parts = line.split(maxsplit=1)
        if len(parts) < 2:
            report("wav.scp", number, "malformed wav.scp line", f"expected `<recording-id> <path>`, got {line!r}")
            continue
        rec, target = parts[0], parts[1].strip()
        if rec in recordings or rec in broken_recordings:
            report("wav.scp", number, "duplicate id in wav.scp", f"recording {rec!r} is listed twice")
            continue
        if target.endswith("|") or target.startswith("|"):
            report("wav.scp", number, "wav.scp entry is a command pipe; convert to files first", repr(line))
        elif target == "-" or _ARCHIVE_OFFSET.search(target):
            report("wav.scp", number, "wav.scp entry is an extended filename (archive offset or stdin); "
                   "convert to files first", repr(line))
        else:
            recordings[rec] = (target, number)
            continue
        broken_recordings[rec] = f"wav.scp:{number}"
    texts = pairs("text", "transcript")
    speakers = pairs("utt2spk", "speaker-id") or {}
    extras = {column: table for column, name in (("gender", "spk2gender"), ("age", "spk2age"))
              if (table := pairs(name, column)) is not None}

    rows: list[dict] = []
    skip_texts: set[str] = set()  # utterances already reported unreadable
    if (folder / "segments").is_file():
        seen: dict[str, int] = {}
        for number, line in _kaldi_lines(folder / "segments"):
            fields = line.split()
            if len(fields) != 4:
                report("segments", number, "malformed segments line",
                       f"expected `<utterance-id> <recording-id> <start> <end>`, got {line!r}")
                continue
            utt, rec = fields[0], fields[1]
            try:
                start, end = float(fields[2]), float(fields[3])
            except ValueError:
                report("segments", number, "malformed segments line", f"start/end are not numbers in {line!r}")
                skip_texts.add(utt)
                continue
            if utt in seen:
                report("segments", number, "duplicate id in segments", f"{utt!r} is already on line {seen[utt]}")
                continue
            seen[utt] = number
            if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or (end != -1 and end <= start):
                report("segments", number, "malformed segments line",
                       f"need 0 <= start < end (end -1: to the end of the recording), got {line!r}")
                skip_texts.add(utt)
            elif rec in broken_recordings:
                report("segments", number, "segment of an unreadable recording",
                       f"recording {rec!r} ({broken_recordings[rec]}) is not a plain file")
                skip_texts.add(utt)
            elif rec not in recordings:
                report("segments", number, "segment for unknown recording", f"recording {rec!r} is not in wav.scp")
                skip_texts.add(utt)
            else:
                rows.append({"utterance_id": utt, "audio_path": recordings[rec][0], "offset": start,
                             "duration": None if end == -1 else round(end - start, 6), "source_row": number,
                             "recording_id": rec})
        listing = "segments"
    else:
        rows = [{"utterance_id": rec, "audio_path": target, "offset": 0.0, "duration": None, "source_row": number}
                for rec, (target, number) in recordings.items()]
        skip_texts.update(broken_recordings)
        listing = "wav.scp"
    known = {row["utterance_id"] for row in rows}
    for utt, (_, number) in texts.items():
        if utt not in known and utt not in skip_texts:
            report("text", number, "transcript for unknown utterance", f"{utt!r} is not in {listing}")
    for row in rows:
        row["text"] = texts.get(row["utterance_id"], ("", 0))[0]
        speaker = speakers.get(row["utterance_id"], (None, 0))[0]
        row["speaker"] = speaker
        for column, table in extras.items():
            row[column] = table.get(speaker, (None, 0))[0] if speaker else None
    return rows, bad


def read_manifest(path: str | Path, fmt: str = "auto") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read a manifest file or corpus directory into (rows, unreadable_rows).

    fmt: one of FORMATS or `auto` (see `detect_format`). Rows carry MANIFEST_COLUMNS (audio paths as
    written; `resolve_rows` anchors them) plus any extra source columns. Entries that cannot be
    parsed (bad JSON, malformed Kaldi lines, command pipes in wav.scp, non-numeric offsets) come back
    in the second frame (`source_row`, `reason`; the reason names file:line where there are several files).
    """
    path = Path(path)
    if not (path.parent.is_dir() if is_glob(path) else path.exists()):
        raise ManifestError(f"{path}: manifest not found; set `source.path` in conf/ to an existing file "
                            "or corpus directory")
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt not in FORMATS:
        raise ManifestError(f"{path}: unknown manifest format {fmt!r}; {FORMAT_HINT}")
    if fmt in ("kaldi", "audiofolder") and path.is_file():
        path = path.parent  # `wav.scp` or `metadata.csv` given instead of its folder
    elif fmt not in ("kaldi", "audiofolder", "sidecar") and path.is_dir():
        raise ManifestError(f"{path}: is a directory; a {fmt} manifest is a file ({FORMAT_HINT})")
    if fmt == "sidecar":
        records, bad = _sidecar_manifest(path)
        where = path.name
    elif fmt == "kaldi":
        records, bad = _kaldi_manifest(path)
        where = "wav.scp"
    elif fmt == "audiofolder":
        records, bad, metadata = _audiofolder_manifest(path)
        where = metadata.name
    else:
        records, bad = _table_manifest(path, fmt)
        where = path.name
    records = _check_numbers(records, bad, where)
    if not records and not bad:
        raise ManifestError(f"{path}: manifest has no rows")
    frame = pd.DataFrame.from_records(records)
    for column, default in (("audio_path", None), ("text", None), ("speaker", "unknown"), ("utterance_id", None),
                            ("offset", 0.0), ("duration", None), ("source_row", None)):
        if column not in frame:
            frame[column] = default
    frame = frame[[*MANIFEST_COLUMNS, *[c for c in frame.columns if c not in MANIFEST_COLUMNS]]]
    if fmt != "kaldi":  # one file: report in file order (Kaldi keeps its per-file order)
        bad = sorted(bad, key=lambda b: b["source_row"])
    bad_frame = pd.DataFrame(bad, columns=["source_row", "reason"])
    return frame, bad_frame


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == ""


def extra_columns(frame: pd.DataFrame) -> list[str]:
    """Source metadata columns (e.g. gender, age) beyond MANIFEST_COLUMNS and the pipeline's own."""
    return [c for c in frame.columns if c not in RESERVED_COLUMNS]


def _extra_value(value):
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True)
    return None if _blank(value) else value


def _anchor(path: str, root: Path) -> str:
    """An absolute path as written (the user's own file); a relative one joined to `root` without
    following links, and left relative when `..` takes it out of `root` (validation rejects it)."""
    if os.path.isabs(path):
        return os.path.normpath(path)
    joined = os.path.normpath(os.path.join(root, path))
    return joined if Path(joined).is_relative_to(root) else path


def resolve_rows(rows: pd.DataFrame, root: str | Path) -> pd.DataFrame:
    """Anchor relative paths at `root`, fill ids and speakers, and type the columns.

    Returns MANIFEST_COLUMNS followed by the extra source columns.
    """
    root = Path(root).resolve()
    out = rows.copy()
    out["audio_path"] = [_anchor(str(p), root) if not _blank(p) else "" for p in out["audio_path"]]
    out["speaker"] = ["unknown" if _blank(s) else str(s).strip() for s in out["speaker"]]
    out["text"] = ["" if _blank(t) else str(t).strip() for t in out["text"]]
    out["offset"] = [0.0 if _blank(o) else float(o) for o in out["offset"]]
    out["duration"] = [None if _blank(d) else float(d) for d in out["duration"]]
    ids = []
    for path, offset, duration, given in zip(out["audio_path"], out["offset"], out["duration"], out["utterance_id"]):
        if not _blank(given):
            ids.append(str(given))
        else:
            stem = Path(path).stem or "row"
            # Two segments of one file may share an offset; the duration tells them apart.
            key = f"{path}|{offset}" if _blank(duration) else f"{path}|{offset}|{float(duration)}"
            digest = short_id(key, 8)
            ids.append(f"{stem}-{digest}")
    out["utterance_id"] = ids
    extras = extra_columns(out)
    for column in extras:
        out[column] = [_extra_value(v) for v in out[column]]
    return out[[*MANIFEST_COLUMNS, *extras]].reset_index(drop=True)


def _cache_key(path: Path, offset: float, duration: float | None, limits: AudioLimits) -> str:
    size, mtime_ns = file_key(path)
    return short_id(f"{path}|{size}|{mtime_ns}|{offset}|{duration}|{limits}", 16)


def _segment_problem(path: Path, offset: float, duration: float | None) -> str | None:
    """Why a segment does not fit inside its recording, or None (also None when the header is unreadable:
    decoding then reports the real error)."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return None
    total = info.frames / info.samplerate if info.samplerate else 0.0
    if offset >= total:
        return f"segment starts after the end of the recording: offset {offset:.2f} s, {path} lasts {total:.2f} s"
    if duration is not None and offset + duration > total + SEGMENT_OVERSHOOT_SECONDS:
        return (f"segment runs past the end of the recording: {offset:.2f}-{offset + duration:.2f} s, "
                f"{path} lasts {total:.2f} s")
    return None


def validate_and_normalise(rows: pd.DataFrame, root: str | Path, audio_dir: str | Path,
                           limits: AudioLimits = AudioLimits()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Check every row and write 16 kHz mono WAV copies of the good ones.

    Returns (clean, quarantine). Every input row ends up in exactly one of them; quarantine
    rows carry a `reason`. Extra source columns (gender, age, ...) are kept in both. Normalised
    audio is cached by source path, size, mtime and segment, so a rerun does not decode unchanged
    files again. A segment (offset/duration) that starts or ends past the recording is quarantined
    rather than silently cut short.
    """
    root = Path(root).resolve()
    audio_dir = Path(audio_dir)
    audio_dir.mkdir(parents=True, exist_ok=True)
    extras = extra_columns(rows)
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
        elif _not_utf8(row["text"], row["audio_path"] if isinstance(row["audio_path"], str) else None):
            reason = _not_utf8(row["text"], row["audio_path"] if isinstance(row["audio_path"], str) else None)
        elif not has_words(row["text"]):
            reason = f"transcript has no words (only punctuation or symbols): {row['text'][:40]!r}"
        elif path is None:
            reason = "missing audio_path"
        elif not path.is_absolute():
            reason = (f"audio path outside the corpus root: {path} leaves {root} through `..`; give an absolute "
                      "path or set `source.root` to a folder that holds all the audio")
        elif path.is_dir():
            reason = f"audio path is a directory, not a file: {path}"
        elif not path.is_file():
            reason = (f"audio file not found: {path}" +
                      (f" (a symbolic link to the missing {os.readlink(path)})" if path.is_symlink() else ""))
        elif row["utterance_id"] in seen_ids:
            reason = f"duplicate utterance_id {row['utterance_id']!r}"
        elif row["offset"] < 0 or (row["duration"] is not None and row["duration"] <= 0):
            reason = f"invalid segment: offset {row['offset']} s, duration {row['duration']} s"
        elif row["offset"] > 0 or row["duration"] is not None:
            reason = _segment_problem(path, row["offset"], row["duration"])
        if reason is None:
            # the limits are part of the key: a copy exists only for audio that passed these checks
            key = _cache_key(path, row["offset"], row["duration"], limits)
            target = audio_dir / f"{key}.wav"
            try:
                if target.is_file():
                    info = sf.info(str(target))
                    seconds = info.frames / info.samplerate
                else:
                    audio = read_audio(path, TARGET_SAMPLE_RATE, row["offset"], row["duration"])
                    seconds = len(audio) / TARGET_SAMPLE_RATE
                    reason = limits.check(audio, TARGET_SAMPLE_RATE, len(row["text"].split()))
                    if reason is None:
                        write_wav(target, audio)
            except AudioError as exc:
                reason = str(exc)
        if reason is not None:
            quarantine.append({**row, "reason": reason})
            continue
        seen_ids.add(row["utterance_id"])
        clean.append({**row, "source_audio_path": portable_path(row["audio_path"]), "audio_path": portable_path(target),
                      "duration": round(seconds, 4)})
    clean_frame = pd.DataFrame(clean, columns=[*MANIFEST_COLUMNS, *extras, "source_audio_path"])
    quarantine_frame = pd.DataFrame(quarantine, columns=[*MANIFEST_COLUMNS, *extras, "reason"])
    return clean_frame, quarantine_frame


def assign_split(key: str, validation_fraction: float, test_fraction: float, salt: str = "") -> str:
    """Hash-based split: stable for a key whatever other rows exist."""
    if not 0 <= validation_fraction < 1 or not 0 <= test_fraction < 1 or validation_fraction + test_fraction >= 1:
        raise ValueError("split fractions must be in [0, 1) and leave room for training; "
                         f"got validation={validation_fraction}, test={test_fraction}")
    bucket = int(sha256_text(f"{salt}|{key}")[:12], 16) / float(16 ** 12)
    if bucket < test_fraction:
        return "test"
    if bucket < test_fraction + validation_fraction:
        return "validation"
    return "train"


def split_manifest(clean: pd.DataFrame, by: str, validation_fraction: float, test_fraction: float,
                   salt: str = "vernacular", test_only_speakers: list[str] | tuple = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Add a `split` column. Returns (manifest with split, rows rejected by the split rule).

    by: "sentence" (all readings of one normalised sentence share a split), "speaker"
    (speaker-disjoint), "utterance", or "given" (keep the corpus's own split from the
    `given_split` column, e.g. speechocean762's train/test folders; validation is carved out of
    the given training rows by speaker hash when the corpus gives none). Speakers in
    `test_only_speakers` are held out for test: with by="sentence" their rows on non-test
    sentences are rejected, so no test sentence or held-out voice is ever trained on. Rows with a
    `given_split` (source parts with a `split`, replay corpora) keep it under any rule; one whose
    sentence the rule puts in another split of the main corpus is rejected.
    """
    keys = {"sentence": lambda r: sentence_key(r["text"]), "speaker": lambda r: r["speaker"],
            "utterance": lambda r: r["utterance_id"]}
    if by == "given":
        return _given_split(clean, validation_fraction, salt)
    if by not in keys:
        raise ValueError(f"split.by must be one of {sorted([*keys, 'given'])}, got {by!r}")
    if by == "speaker" and set(clean["speaker"]) <= {"unknown"}:
        log.warning("split.by=speaker but no speakers are known: splitting by utterance instead")
        by = "utterance"
    held_out = set(test_only_speakers)
    frame = clean.copy()
    splits = [assign_split(keys[by](r), validation_fraction, test_fraction, salt) for r in frame.to_dict("records")]
    frame["split"] = splits
    fixed = frame["given_split"].notna() if "given_split" in frame else pd.Series(False, index=frame.index)
    clash = frame.iloc[0:0]
    if fixed.any():  # source parts with their own split (e.g. source.replay: train) keep it
        frame.loc[fixed, "split"] = frame.loc[fixed, "given_split"].astype(str)
        others = {sentence_key(t): s for t, s in zip(frame.loc[~fixed, "text"], frame.loc[~fixed, "split"])}
        crossed = fixed & pd.Series([others.get(sentence_key(t), sp) != sp for t, sp in zip(frame["text"], frame["split"])],
                                    index=frame.index)
        clash = frame[crossed].copy()
        clash["reason"] = [f"sentence also in the {others[sentence_key(t)]} split of the main corpus"
                           for t in clash["text"]]
        frame = frame[~crossed]
    in_held = frame["speaker"].isin(held_out)
    rejected = frame[in_held & (frame["split"] != "test")].copy()
    if by == "speaker":
        frame.loc[in_held, "split"] = "test"
        rejected = rejected.iloc[0:0]
    else:
        frame = frame[~(in_held & (frame["split"] != "test"))]
    rejected["reason"] = "held-out test speaker on a non-test sentence"
    rejected = pd.concat([rejected, clash], ignore_index=True)
    return frame.reset_index(drop=True), rejected.drop(columns=["split"]).reset_index(drop=True)


def _given_split(clean: pd.DataFrame, validation_fraction: float, salt: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    if "given_split" not in clean:
        raise ValueError("split.by=given needs a split per source part: give each entry of source.parts a "
                         "`split` (train, validation or test)")
    frame = clean.copy()
    given = frame["given_split"].astype(str)
    known = given.isin(SPLITS)
    frame["split"] = given
    if not (given == "validation").any():
        carve = known & (given == "train")
        frame.loc[carve, "split"] = [
            "validation" if assign_split(s, validation_fraction, 0.0, salt) == "validation" else "train"
            for s in frame.loc[carve, "speaker"]]
    rejected = frame[~known].drop(columns=["split"]).copy()
    rejected["reason"] = "no given split for this row (source part without `split`)"
    return frame[known].reset_index(drop=True), rejected.reset_index(drop=True)
