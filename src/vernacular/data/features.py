"""Model input features and label token ids, cached by content fingerprint.

What is stored per utterance comes from the model family (`vernacular.models.families`): for
Whisper the log-mel trimmed to the frames that carry audio (about 6x smaller than padded features),
for CTC and RNN-T the processor's own input per clip, trimmed to its valid length; float16 either way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from vernacular.common.config import build_settings
from vernacular.common.fileio import file_key, new_digest, sha256_file, sha256_text, write_directory_atomically, \
    write_file_atomically
from vernacular.common.storage import portable_path
from vernacular.data.audio import TARGET_SAMPLE_RATE, read_audio
from vernacular.models.families import family_for, family_of_processor

@dataclass
class FeatureSettings:
    """`params:<vertical>.features`."""

    splits: list[str] = field(default_factory=lambda: ["train", "validation"])
    batch_size: int = 16
    max_label_tokens: int = 440  # longer transcripts are skipped (Whisper's decoder holds 448 positions)
    workers: int = 1  # processes computing features of new utterances (audio decoding + log-mel); 1: in-process

    @classmethod
    def from_dict(cls, values: dict | None) -> "FeatureSettings":
        return build_settings(cls, values, "features")


FEATURE_FORMAT_VERSION = 6  # 3: the family decides the layout; 4: reference texts; 5: shards; 6: label prefix
SHARD_UTTERANCES = 256  # a split is written in shards of this many utterances: memory stays flat


def _settings_digest(processor, family_name: str) -> str:
    """Hash of what a stored utterance's features depend on besides its audio."""
    digest = new_digest(f"v{FEATURE_FORMAT_VERSION}|{family_name}")
    digest.update(json.dumps(processor.feature_extractor.to_dict(), sort_keys=True, default=str).encode())
    return digest.hexdigest()


def manifest_fingerprint(manifest: pd.DataFrame, processor, params: dict) -> str:
    """Hash of everything a cache entry depends on: rows, audio files, processor, parameters."""
    digest = new_digest(f"v{FEATURE_FORMAT_VERSION}")
    digest.update(json.dumps(processor.feature_extractor.to_dict(), sort_keys=True, default=str).encode())
    digest.update(str(len(processor.tokenizer)).encode())
    # the tokenizer's own prefix (Whisper: start, language, task tokens) is part of every label
    digest.update(json.dumps(list(processor.tokenizer(" a").input_ids)).encode())
    digest.update(json.dumps(params, sort_keys=True, default=str).encode())
    for row in manifest.sort_values("utterance_id").to_dict("records"):
        size, mtime_ns = file_key(row["audio_path"])
        digest.update(f"{row['utterance_id']}|{row['split']}|{row['text']}|{row['audio_path']}|"
                      f"{size}|{mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


class UtteranceStore:
    """Features per utterance, keyed by the content hash of its audio and the processor settings
    (`cache_dir/utterances/ab/<key>.pt`): a cache entry for a grown corpus computes only the new
    recordings. Labels are not stored (the tokenizer is cheap and the text may change)."""

    def __init__(self, cache_dir: Path, processor, family_name: str) -> None:
        self.root = Path(cache_dir) / "utterances"
        self.settings = _settings_digest(processor, family_name)
        self._keys: dict[tuple, str] = {}

    def key(self, audio_path: str) -> str:
        memo = (str(audio_path), *file_key(audio_path))
        if memo not in self._keys:
            self._keys[memo] = sha256_text(f"{self.settings}|{sha256_file(audio_path)}")[:32]
        return self._keys[memo]

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.pt"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def load(self, key: str) -> dict:
        return torch.load(self.path(key), weights_only=True)


def _compute_and_store(processor, family, audio_paths: list[str], targets: list[Path]) -> int:
    audios = [read_audio(p) for p in audio_paths]
    for target, (features, pad), audio in zip(targets, family.features(processor, audios), audios):
        item = {"features": features.clone(), "pad_value": float(pad), "samples": len(audio)}
        write_file_atomically(target, lambda tmp, item=item: torch.save(item, tmp))
    return len(targets)


_WORKER: dict = {}


def _init_worker(processor, family_name: str) -> None:
    torch.set_num_threads(1)  # one process per core
    _WORKER.update(processor=processor, family=family_for(family_name))


def _worker_batch(job: tuple[list[str], list[str]]) -> int:
    paths, targets = job
    return _compute_and_store(_WORKER["processor"], _WORKER["family"], paths, [Path(t) for t in targets])


def _fill_store(store: UtteranceStore, processor, family, records: list[dict], batch_size: int, workers: int,
                progress: bool) -> int:
    """Compute the stored features of every record that has none; return how many were computed."""
    missing: dict[str, str] = {}
    for row in records:
        key = store.key(row["audio_path"])
        if not store.has(key):
            missing.setdefault(key, row["audio_path"])
    if not missing:
        return 0
    keys = list(missing)
    jobs = [([missing[k] for k in keys[i:i + batch_size]], [str(store.path(k)) for k in keys[i:i + batch_size]])
            for i in range(0, len(keys), batch_size)]
    bar = tqdm(total=len(keys), desc="features (new utterances)", disable=not progress)
    if workers > 1 and len(jobs) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn: forking a process whose torch thread pool is running can hang
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_worker, initargs=(processor, family.name)) as pool:
            for done in pool.map(_worker_batch, jobs):
                bar.update(done)
    else:
        for paths, targets in jobs:
            bar.update(_compute_and_store(processor, family, paths, [Path(t) for t in targets]))
    bar.close()
    return len(keys)


def extract_features(manifest: pd.DataFrame, processor, cache_dir: str | Path, splits=("train", "validation"),
                     batch_size: int = 16, max_label_tokens: int = 440, progress: bool = True,
                     family=None, workers: int = 1) -> dict:
    """Compute (or reuse) features for `splits`; return the index describing the cache entry.

    `family`: a `vernacular.models.families.ModelFamily` or its name; None means Whisper and is only
    accepted with a WhisperProcessor. The cache entry is `cache_dir/<fingerprint>/` with shards
    `<split>-NNNNN.pt` of at most SHARD_UTTERANCES utterances, each written as soon as it is full, so
    the stage's memory does not grow with the corpus. When the entry already exists the work is
    skipped and `reused` is True in the returned index. Otherwise the shards are assembled from the
    per-utterance store (`UtteranceStore`), computing only utterances it lacks, in `workers`
    processes; the index counts them (`utterances_computed`, `utterances_from_store`).
    """
    family = family_of_processor(processor) if family is None else family_for(family)
    params = {"splits": list(splits), "max_label_tokens": max_label_tokens, "family": family.name}
    rows = manifest[manifest["split"].isin(splits)]
    fingerprint = manifest_fingerprint(rows, processor, params)
    cache_dir = Path(cache_dir)
    entry = cache_dir / fingerprint
    index_path = entry / "index.json"
    if index_path.is_file():
        index = json.loads(index_path.read_text())
        index["reused"] = True
        return index
    store = UtteranceStore(cache_dir, processor, family.name)
    computed = _fill_store(store, processor, family, rows.to_dict("records"), batch_size, workers, progress)
    skipped, counts, shards, with_unknown = [], {}, {}, 0
    unk_id = family.unknown_token_id(processor)
    index: dict = {}

    def write(tmp: Path) -> None:
        nonlocal with_unknown
        for split in splits:
            part = rows[rows["split"] == split].sort_values("utterance_id")
            record = _empty_record()
            shards[split], counts[split] = [], 0

            def flush(record: dict, split: str = split) -> dict:
                name = f"{split}-{len(shards[split]):05d}.pt"
                torch.save(record, tmp / name)
                shards[split].append(name)
                counts[split] += len(record["utterance_ids"])
                return _empty_record()

            for row in part.to_dict("records"):
                ids = family.label_ids(processor, row["text"])
                if len(ids) > max_label_tokens:
                    skipped.append({"utterance_id": row["utterance_id"], "split": split,
                                    "reason": f"transcript is {len(ids)} tokens > {max_label_tokens}"})
                    continue
                item = store.load(store.key(row["audio_path"]))
                with_unknown += unk_id is not None and unk_id in ids
                record["utterance_ids"].append(row["utterance_id"])
                record["features"].append(item["features"])
                record["pad_values"].append(item["pad_value"])
                record["labels"].append(ids)
                record["durations"].append(item["samples"] / TARGET_SAMPLE_RATE)
                record["speakers"].append(row["speaker"])
                record["audio_paths"].append(row["audio_path"])
                record["texts"].append(row["text"])  # validation WER scores against the transcript itself
                if len(record["utterance_ids"]) >= SHARD_UTTERANCES:
                    record = flush(record)
            if record["utterance_ids"] or not shards[split]:
                flush(record)
        # n_frames: the fixed input length to pad to (Whisper's 3000); None = pad to the batch's longest clip.
        # n_mels: the feature extractor's feature_size (1 for a raw waveform).
        index.update({"fingerprint": fingerprint, "path": portable_path(entry), "splits": list(splits),
                      "counts": counts, "shards": shards, "skipped": skipped,
                      "n_mels": int(processor.feature_extractor.feature_size),
                      "n_frames": family.fixed_frames(processor), "family": family.name,
                      "feature_layout": family.feature_layout, "labels_with_unknown_tokens": int(with_unknown),
                      "utterances_computed": computed, "utterances_from_store": len(rows) - computed,
                      "format_version": FEATURE_FORMAT_VERSION})
        (tmp / "index.json").write_text(json.dumps(index, indent=2))

    write_directory_atomically(entry, write)
    index["reused"] = False
    return index


def _empty_record() -> dict:
    return {"utterance_ids": [], "features": [], "pad_values": [], "labels": [], "durations": [], "speakers": [],
            "audio_paths": [], "texts": []}


def load_split(index: dict, split: str) -> dict:
    """One split of a cache entry. Shards are memory-mapped: features are read from disk when used
    (the page cache can drop them again), so training does not hold the corpus in RAM."""
    names = (index.get("shards") or {}).get(split)
    if names is None:
        raise FileNotFoundError(f"{index['path']}: no shards for split {split!r} in this feature cache (format "
                                f"{index.get('format_version')}); rerun the features stage")
    out = _empty_record()
    for name in names:
        path = Path(index["path"]) / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: feature cache entry is missing; rerun the features stage")
        part = torch.load(path, weights_only=True, mmap=True)
        for key in out:
            out[key].extend(part.get(key, []))
    return out
