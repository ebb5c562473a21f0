"""Batched transcription (any model family) with loop guards, and latency measurement."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from vernacular.config import build_settings
from vernacular.audio import TARGET_SAMPLE_RATE


@dataclass
class DecodeSettings:
    batch_size: int = 8
    num_beams: int = 1
    # Whisper tiny loops on hard audio ("an an an ..."); cap the output by the audio length.
    max_tokens_per_second: float = 7.0
    min_new_tokens_cap: int = 16
    no_repeat_ngram_size: int = 0
    # Loops that survive the cap ("no, no, no, ...") are cut to this many repeats (0: keep as is).
    max_ngram_repeats: int = 2

    @classmethod
    def from_dict(cls, values: dict | None) -> "DecodeSettings":
        return build_settings(cls, values, "decoding")


def max_new_tokens_for(duration_s: float, settings: DecodeSettings, limit: int = 440) -> int:
    return int(min(limit, max(settings.min_new_tokens_cap, duration_s * settings.max_tokens_per_second + 8)))


def transcribe(model, processor, audios: list[np.ndarray], settings: DecodeSettings | None = None,
               device: torch.device | str | None = None, progress: bool = False) -> list[str]:
    """Transcribe 16 kHz mono clips (each at most 30 s) greedily, in batches, with the decoder of the
    model's family (Whisper generate, CTC argmax, RNN-T greedy search; see `vernacular.families`)."""
    from vernacular.families import family_for

    return family_for(model).transcribe(model, processor, audios, settings, device, progress)


@torch.no_grad()
def whisper_transcribe(model, processor, audios: list[np.ndarray], settings: DecodeSettings | None = None,
                       device: torch.device | str | None = None, progress: bool = False) -> list[str]:
    """Whisper: batched greedy `generate` with the output cap and the repeat guard."""
    from tqdm.auto import tqdm

    settings = settings or DecodeSettings()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    texts: list[str] = []
    for start in tqdm(range(0, len(audios), settings.batch_size), desc="transcribe", disable=not progress):
        chunk = audios[start:start + settings.batch_size]
        features = processor.feature_extractor(chunk, sampling_rate=TARGET_SAMPLE_RATE,
                                               return_tensors="pt").input_features.to(device, dtype)
        longest = max(len(a) for a in chunk) / TARGET_SAMPLE_RATE
        kwargs = {"max_new_tokens": max_new_tokens_for(longest, settings), "num_beams": settings.num_beams}
        if settings.no_repeat_ngram_size:
            kwargs["no_repeat_ngram_size"] = settings.no_repeat_ngram_size
        tokens = _quiet_generate(model, features, kwargs)
        decoded = processor.tokenizer.batch_decode(tokens, skip_special_tokens=True)
        texts.extend(collapse_repeats(t.strip(), settings.max_ngram_repeats) for t in decoded)
    return texts


def collapse_repeats(text: str, max_repeats: int, max_ngram: int = 8) -> str:
    """Cut any run of a word n-gram (n <= max_ngram) repeated back to back to `max_repeats` copies.

    A decoding guard, applied to every model alike: a looping hypothesis otherwise adds dozens
    of insertions to one utterance and dominates a group's WER.
    """
    if max_repeats <= 0:
        return text
    words = text.split()
    changed = True
    while changed:
        changed = False
        for n in range(1, max_ngram + 1):
            i = 0
            while i + n * (max_repeats + 1) <= len(words):
                unit = [w.strip(",.;:!?").lower() for w in words[i:i + n]]
                count = 1
                while words[i + count * n:i + (count + 1) * n] and \
                        [w.strip(",.;:!?").lower() for w in words[i + count * n:i + (count + 1) * n]] == unit:
                    count += 1
                if count > max_repeats:
                    del words[i + max_repeats * n:i + count * n]
                    changed = True
                i += 1
    return " ".join(words)


def _quiet_generate(model, features, kwargs):
    # transformers' own Whisper generate() warns on every call about arguments it sets itself
    # (suppress_tokens, max_length next to max_new_tokens); keep the log readable.
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return model.generate(input_features=features, **kwargs)
    finally:
        hf_logging.set_verbosity(previous)


def build_segments(audios: list[np.ndarray], target_seconds: float = 28.0, gap_seconds: float = 0.3,
                   max_segments: int = 4) -> list[np.ndarray]:
    """Concatenate clips (with short silences) into segments of about `target_seconds`."""
    gap = np.zeros(int(gap_seconds * TARGET_SAMPLE_RATE), dtype=np.float32)
    limit = int(target_seconds * TARGET_SAMPLE_RATE)
    segments, current = [], []
    for audio in audios:
        if current and sum(len(a) for a in current) + len(gap) + len(audio) > limit:
            segments.append(np.concatenate(current))
            current = []
            if len(segments) == max_segments:
                break
        current.extend([audio, gap] if len(audio) + len(gap) <= limit else [audio[: limit - len(gap)], gap])
    if current and len(segments) < max_segments:
        segments.append(np.concatenate(current))
    return segments


def measure_latency(models: dict, processor, segments: list[np.ndarray], settings: DecodeSettings,
                    repeats: int = 2) -> dict:
    """Seconds per segment at batch size 1 (feature extraction + generate) for each model.

    Models are timed round-robin on each segment, so load from other processes on a shared
    machine hits all of them alike; the median over segments and repeats is reported.
    """
    one = DecodeSettings(**{**settings.__dict__, "batch_size": 1})
    for model in models.values():  # warm-up
        transcribe(model, processor, [segments[0]], one)
    times = {name: [] for name in models}
    texts = {name: [] for name in models}
    for repeat in range(repeats):
        for segment in segments:
            for name, model in models.items():
                started = time.perf_counter()
                text = transcribe(model, processor, [segment], one)
                times[name].append(time.perf_counter() - started)
                if repeat == 0:
                    texts[name].extend(text)
    mean_segment = sum(len(s) for s in segments) / len(segments) / TARGET_SAMPLE_RATE
    return {name: {"segments": len(segments), "repeats": repeats, "mean_segment_seconds": mean_segment,
                   "seconds_per_segment": float(np.median(times[name])),
                   "seconds_per_segment_min": float(np.min(times[name])),
                   "seconds_per_segment_max": float(np.max(times[name])),
                   "real_time_factor": float(np.median(times[name]) / mean_segment), "texts": texts[name]}
            for name in models}
