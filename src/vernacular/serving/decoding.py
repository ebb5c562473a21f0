"""Batched transcription through the model family's decoder, 30-s latency segments, latency timing."""

from __future__ import annotations

import time

import numpy as np
import torch

from vernacular.data.audio import TARGET_SAMPLE_RATE
from vernacular.models.families import DecodeSettings, family_for


def transcribe(model, processor, audios: list[np.ndarray], settings: DecodeSettings | None = None,
               device: torch.device | str | None = None, progress: bool | str = False) -> list[str]:
    """Transcribe 16 kHz mono clips (each at most 30 s) greedily, in batches, with the decoder of the
    model's family (Whisper generate, CTC argmax, RNN-T greedy search; see `vernacular.models.families`);
    `progress`: a progress bar, a string labels it."""
    return family_for(model).transcribe(model, processor, audios, settings, device, progress)


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
