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


# File name endings counted as audio (corpus folders, card hashes).
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".sph", ".aac", ".webm"})

def read_audio(path: str | os.PathLike, target_sample_rate: int = TARGET_SAMPLE_RATE,
               offset: float = 0.0, duration: float | None = None) -> np.ndarray:
    """Decode `path` to float32 mono at `target_sample_rate`.

    `offset`/`duration` (seconds) select a segment. Raises AudioError naming the file.
    """
    path = Path(path)
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, not an audio file")
    if not path.is_file():
        raise AudioError(f"{path}: file not found" + (" (a dangling symbolic link)" if path.is_symlink() else ""))
    truncated = wav_truncation(path)
    if truncated:
        declared, held = truncated
        raise AudioError(f"{path}: truncated WAV: its header declares {declared:.2f} s but the file holds "
                         f"{held:.2f} s (an interrupted copy?); copy or export it again")
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


def wav_truncation(path: Path) -> tuple[float, float] | None:
    """(declared, held) seconds when `path` is a RIFF WAV whose data chunk is shorter than its header
    says; None otherwise (libsndfile silently reads what is there)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            byte_rate = None
            while True:
                chunk = handle.read(8)
                if len(chunk) < 8:
                    return None
                name, size = chunk[:4], int.from_bytes(chunk[4:], "little")
                if name == b"fmt ":
                    fmt = handle.read(size)
                    byte_rate = int.from_bytes(fmt[8:12], "little")
                    handle.seek(size % 2, 1)
                elif name == b"data":
                    held = os.fstat(handle.fileno()).st_size - handle.tell()
                    # 0 and 0xFFFFFFFF: streaming writers that never filled in the size
                    if byte_rate and 0 < size < 0xFFFFFFFF and held < size:
                        return size / byte_rate, held / byte_rate
                    return None
                else:
                    handle.seek(size + size % 2, 1)
    except OSError:
        return None


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

