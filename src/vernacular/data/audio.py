"""Audio reading, downmixing and resampling (soundfile for I/O, torchaudio for DSP)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from vernacular.common.fileio import write_file_atomically

TARGET_SAMPLE_RATE = 16000


class AudioError(ValueError):
    """An audio file that cannot be used, with the reason in the message."""


def read_audio(path: str | os.PathLike, target_sample_rate: int = TARGET_SAMPLE_RATE,
               offset: float = 0.0, duration: float | None = None) -> np.ndarray:
    """Decode `path` to float32 mono at `target_sample_rate`.

    `offset`/`duration` (seconds) select a segment. Raises AudioError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: file not found")
    try:
        with sf.SoundFile(str(path)) as handle:
            rate = handle.samplerate
            start = int(round(offset * rate))
            if start:
                handle.seek(start)
            frames = -1 if duration is None else int(round(duration * rate))
            data = handle.read(frames=frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(f"{path}: cannot decode audio ({exc}); re-encode it as WAV/FLAC/OGG") from exc
    if data.size == 0:
        raise AudioError(f"{path}: no audio samples (empty file or segment)")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(mono).all():
        raise AudioError(f"{path}: audio contains NaN or infinite samples")
    return resample(mono, rate, target_sample_rate)


def resample(audio: np.ndarray, source_rate: int, target_rate: int = TARGET_SAMPLE_RATE) -> np.ndarray:
    """Resample a mono float array; returns float32."""
    audio = np.asarray(audio, dtype=np.float32)
    if source_rate == target_rate:
        return audio
    tensor = torch.from_numpy(np.ascontiguousarray(audio))
    return torchaudio.functional.resample(tensor, source_rate, target_rate).numpy().astype(np.float32)


def write_wav(path: str | os.PathLike, audio: np.ndarray, sample_rate: int = TARGET_SAMPLE_RATE) -> Path:
    """Write 16-bit PCM WAV atomically (temp file in the same folder, then rename)."""
    return write_file_atomically(path, lambda tmp: sf.write(tmp, np.clip(audio, -1.0, 1.0), sample_rate,
                                                            subtype="PCM_16", format="WAV"))

