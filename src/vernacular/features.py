"""Model input features and label token ids, cached by content fingerprint.

What is stored per utterance comes from the model family (`vernacular.families`). Whisper: the
log-mel trimmed to the frames that carry audio, in float16, with the constant value that Whisper's
feature extractor gives the padded tail; `pad_features` rebuilds the exact 3000-frame input (the
cache is ~6x smaller than padded features). CTC and RNN-T: the processor's own input per clip
(log-mel (frames, n_mels) or raw waveform), trimmed to its valid length, in float16.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from vernacular.audio import TARGET_SAMPLE_RATE, read_audio

FEATURE_FORMAT_VERSION = 5  # 3: the family decides the layout; 4: reference texts; 5: shards
SHARD_UTTERANCES = 256  # a split is written in shards of this many utterances: memory stays flat
HOP_LENGTH = 160
WINDOW_HALF = 200  # half of Whisper's 400-sample STFT window


def label_ids(tokenizer, text: str) -> list[int]:
    """Token ids [<|startoftranscript|>, <|notimestamps|>, ...text..., <|endoftext|>].

    Whisper transcripts start with a space, so one is prepended.
    """
    ids = tokenizer(" " + text.strip()).input_ids
    if ids[-1] != tokenizer.eos_token_id:
        ids = ids + [tokenizer.eos_token_id]
    return ids


def manifest_fingerprint(manifest: pd.DataFrame, processor, params: dict) -> str:
    """Hash of everything the features depend on: rows, audio files, processor, parameters."""
    digest = hashlib.sha256()
    digest.update(f"v{FEATURE_FORMAT_VERSION}".encode())
    digest.update(json.dumps(processor.feature_extractor.to_dict(), sort_keys=True, default=str).encode())
    digest.update(str(len(processor.tokenizer)).encode())
    digest.update(json.dumps(params, sort_keys=True, default=str).encode())
    for row in manifest.sort_values("utterance_id").to_dict("records"):
        stat = os.stat(row["audio_path"])
        digest.update(f"{row['utterance_id']}|{row['split']}|{row['text']}|{row['audio_path']}|"
                      f"{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def compute_log_mel(feature_extractor, audios: list[np.ndarray]) -> list[tuple[torch.Tensor, float]]:
    """Trimmed log-mel (n_mels, frames) in float16 and the padding value, per clip."""
    batch = feature_extractor(audios, sampling_rate=TARGET_SAMPLE_RATE, return_tensors="np").input_features
    n_frames_total = batch.shape[-1]
    out = []
    for audio, features in zip(audios, batch):
        keep = min(n_frames_total, math.ceil((len(audio) + WINDOW_HALF) / HOP_LENGTH) + 1)
        pad_value = float(features[:, -1].max()) if keep < n_frames_total else 0.0
        out.append((torch.from_numpy(features[:, :keep].copy()).to(torch.float16), pad_value))
    return out


def pad_features(trimmed: list[torch.Tensor], pad_values: list[float], n_frames: int = 3000) -> torch.Tensor:
    """Rebuild a (batch, n_mels, n_frames) float32 tensor from trimmed features."""
    n_mels = trimmed[0].shape[0]
    out = torch.empty(len(trimmed), n_mels, n_frames, dtype=torch.float32)
    for i, (features, pad) in enumerate(zip(trimmed, pad_values)):
        frames = min(features.shape[1], n_frames)
        out[i, :, :frames] = features[:, :frames].float()
        out[i, :, frames:] = pad
    return out


def extract_features(manifest: pd.DataFrame, processor, cache_dir: str | Path, splits=("train", "validation"),
                     batch_size: int = 16, max_label_tokens: int = 440, progress: bool = True,
                     family=None) -> dict:
    """Compute (or reuse) features for `splits`; return the index describing the cache entry.

    `family`: a `vernacular.families.ModelFamily` or its name; None means Whisper and is only
    accepted with a WhisperProcessor. The cache entry is `cache_dir/<fingerprint>/` with shards
    `<split>-NNNNN.pt` of at most SHARD_UTTERANCES utterances, each written as soon as it is full, so
    the stage's memory does not grow with the corpus. When the entry already exists the work is
    skipped and `reused` is True in the returned index.
    """
    from tqdm.auto import tqdm

    from vernacular.families import family_for, family_of_processor

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
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".{fingerprint}."))
    skipped, counts, shards, with_unknown = [], {}, {}, 0
    unk_id = family.unknown_token_id(processor)
    try:
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

            records = part.to_dict("records")
            for start in tqdm(range(0, len(records), batch_size), desc=f"features {split}", disable=not progress):
                chunk = records[start:start + batch_size]
                audios = [read_audio(r["audio_path"]) for r in chunk]
                for row, (features, pad), audio in zip(chunk, family.features(processor, audios), audios):
                    ids = family.label_ids(processor, row["text"])
                    if len(ids) > max_label_tokens:
                        skipped.append({"utterance_id": row["utterance_id"], "split": split,
                                        "reason": f"transcript is {len(ids)} tokens > {max_label_tokens}"})
                        continue
                    with_unknown += unk_id is not None and unk_id in ids
                    record["utterance_ids"].append(row["utterance_id"])
                    record["features"].append(features)
                    record["pad_values"].append(pad)
                    record["labels"].append(ids)
                    record["durations"].append(len(audio) / TARGET_SAMPLE_RATE)
                    record["speakers"].append(row["speaker"])
                    record["audio_paths"].append(row["audio_path"])
                    record["texts"].append(row["text"])  # validation WER scores against the transcript itself
                    if len(record["utterance_ids"]) >= SHARD_UTTERANCES:
                        record = flush(record)
            if record["utterance_ids"] or not shards[split]:
                flush(record)
        # n_frames: the fixed input length to pad to (Whisper's 3000); None = pad to the batch's longest clip.
        # n_mels: the feature extractor's feature_size (1 for a raw waveform).
        index = {"fingerprint": fingerprint, "path": str(entry.resolve()), "splits": list(splits),
                 "counts": counts, "shards": shards, "skipped": skipped, "n_mels": int(processor.feature_extractor.feature_size),
                 "n_frames": family.fixed_frames(processor), "family": family.name,
                 "feature_layout": family.feature_layout, "labels_with_unknown_tokens": int(with_unknown),
                 "format_version": FEATURE_FORMAT_VERSION}
        (tmp / "index.json").write_text(json.dumps(index, indent=2))
        os.replace(tmp, entry)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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
