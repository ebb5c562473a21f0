"""Synthetic speech corpora: authored sentences spoken by espeak-ng voices, cached on disk.

The plan is a pure function of the sentences and the settings. Each sentence's split comes from
the same hash rule that ingestion applies (`manifest.assign_split` on the normalised sentence),
so test sentences are never spoken in training, and held-out voices only ever speak test sentences.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from vernacular.common.config import build_settings
from vernacular.common.fileio import sha256_text, short_id
from vernacular.common.text import sentence_key, slug
from vernacular.data.manifest import assign_split
from vernacular.data.synth import render


@dataclass
class SyntheticCorpusSettings:
    sentences: str = "radiology"  # a packaged corpus name (vernacular/corpora/<name>.txt) or a file path
    train_voices: list[str] = field(default_factory=lambda: ["en-us+m3", "en-gb-x-rp+f2", "en-029+m1",
                                                             "en-gb-scotland+m2"])
    heldout_voices: list[str] = field(default_factory=lambda: ["en-gb-x-gbcwmd+f3"])
    heldout_share: float = 0.4  # share of test sentences read by held-out voices
    readings_per_sentence: int = 1  # training sentences can be read by several training voices
    rate_range: tuple[int, int] = (150, 195)
    pitch_range: tuple[int, int] = (35, 65)
    validation_fraction: float = 0.1
    test_fraction: float = 0.2
    split_salt: str = "vernacular"
    max_sentences: int | None = None  # take a deterministic subset, for quick runs

    def __post_init__(self) -> None:
        if not self.train_voices:
            raise ValueError("source.train_voices must name at least one espeak-ng voice")
        if set(self.train_voices) & set(self.heldout_voices):
            raise ValueError("a voice cannot be both a training voice and a held-out voice")

    @classmethod
    def from_dict(cls, values: dict | None) -> "SyntheticCorpusSettings":
        return build_settings(cls, values, "synthetic source")


def packaged_text(package: str, name_or_path: str, kind: str) -> Path:
    """The file behind a packaged text resource (`<package>/<name>.txt`) or a `.txt` path.

    `kind` names the resource in the error ("sentence corpus", "term list").
    """
    path = Path(name_or_path)
    if path.suffix == ".txt" and path.is_file():
        return path
    resource = resources.files(package) / f"{name_or_path}.txt"
    if not resource.is_file():
        available = sorted(p.name[:-4] for p in resources.files(package).iterdir() if p.name.endswith(".txt"))
        raise ValueError(f"no {kind} {name_or_path!r}: use one of {available} or a .txt file path")
    return Path(str(resource))


def load_sentences(name_or_path: str) -> list[str]:
    """Sentences of a packaged corpus (`radiology`, `general`, ...) or of a text file, one per line."""
    text = packaged_text("vernacular.data.corpora", name_or_path, "sentence corpus").read_text(encoding="utf-8")
    sentences, seen = [], set()
    for line in text.splitlines():
        line = line.strip()
        if line and sentence_key(line) not in seen:
            seen.add(sentence_key(line))
            sentences.append(line)
    return sentences


def load_terms(name_or_path: str) -> list[str]:
    """Domain terms of a packaged list (`radiology`, `finance`) or of a text file: one term per line,
    `#` starts a comment; duplicates (case-insensitive) are dropped."""
    text = packaged_text("vernacular.data.terms", name_or_path, "term list").read_text(encoding="utf-8")
    terms, seen = [], set()
    for line in text.splitlines():
        term = line.split("#", 1)[0].strip()
        if term and term.lower() not in seen:
            seen.add(term.lower())
            terms.append(term)
    if not terms:
        raise ValueError(f"term list {name_or_path!r} has no terms")
    return terms


def _hash_int(*parts: object) -> int:
    return int(sha256_text("|".join(map(str, parts)))[:15], 16)


def plan_corpus(sentences: list[str], settings: SyntheticCorpusSettings) -> pd.DataFrame:
    """One row per utterance to synthesise: text, voice, rate, pitch, split."""
    keyed = sorted(((sentence_key(s), s) for s in sentences), key=lambda kv: _hash_int("order", kv[0]))
    if settings.max_sentences:
        keyed = keyed[: settings.max_sentences]
    rows = []
    for key, sentence in keyed:
        split = assign_split(key, settings.validation_fraction, settings.test_fraction, settings.split_salt)
        h = _hash_int("voice", key)
        if split == "test" and settings.heldout_voices and (h % 1000) / 1000 < settings.heldout_share:
            voices = [settings.heldout_voices[h % len(settings.heldout_voices)]]
        elif split == "train":
            count = min(settings.readings_per_sentence, len(settings.train_voices))
            first = h % len(settings.train_voices)
            voices = [settings.train_voices[(first + k) % len(settings.train_voices)] for k in range(count)]
        else:
            voices = [settings.train_voices[h % len(settings.train_voices)]]
        for voice in voices:
            hv = _hash_int("prosody", key, voice)
            lo, hi = settings.rate_range
            plo, phi = settings.pitch_range
            rows.append({"utterance_id": f"{short_id(key)}-{slug(voice)}",
                         "text": sentence, "speaker": voice, "rate": lo + hv % (hi - lo + 1),
                         "pitch": plo + (hv // 997) % (phi - plo + 1), "planned_split": split})
    return pd.DataFrame(rows)


def build_synthetic_corpus(settings: SyntheticCorpusSettings, out_dir: str | Path, progress: bool = True) -> Path:
    """Synthesise the planned utterances into `out_dir` (cached per file) and write `manifest.csv`.

    Returns the manifest path. Files that already exist are not synthesised again.
    """
    out_dir = Path(out_dir)
    audio_dir = out_dir / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    plan = plan_corpus(load_sentences(settings.sentences), settings)
    paths, durations = [], []
    for row in tqdm(plan.to_dict("records"), desc="synthesise", disable=not progress):
        target = audio_dir / f"{row['utterance_id']}.wav"
        info = render(row["text"], row["speaker"], int(row["rate"]), int(row["pitch"]), target)
        paths.append(f"audio/{target.name}")
        durations.append(round(float(info["duration"]), 4))
    plan.insert(1, "audio_path", paths)
    plan["synth_duration"] = durations
    manifest = out_dir / "manifest.csv"
    tmp = manifest.with_suffix(".csv.tmp")
    plan.to_csv(tmp, index=False)
    tmp.replace(manifest)
    return manifest
