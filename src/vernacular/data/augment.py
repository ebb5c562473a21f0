"""Training-time augmentation: speed perturbation, additive noise, SpecAugment (torchaudio).

Each example's random choices come from a seed derived from (run seed, epoch, example index), so
an augmented run is reproducible and resumes to the same result. Evaluation never augments.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torchaudio

from vernacular.common.config import build_settings
from vernacular.data.audio import TARGET_SAMPLE_RATE


@dataclass
class AugmentSettings:
    enabled: bool = False
    speed_factors: list[float] = field(default_factory=lambda: [0.9, 1.0, 1.1])
    noise_snr_db: float | None = None  # e.g. 20: white noise at 20 dB SNR
    noise_probability: float = 0.5
    freq_mask_param: int = 0  # SpecAugment: widest frequency mask (mel bins); 0 = off
    time_mask_param: int = 0  # widest time mask (frames); 0 = off
    n_freq_masks: int = 1
    n_time_masks: int = 2

    def __post_init__(self) -> None:
        if any(f <= 0 for f in self.speed_factors) or not self.speed_factors:
            raise ValueError(f"augmentation.speed_factors must be positive, got {self.speed_factors}")
        if not 0 <= self.noise_probability <= 1:
            raise ValueError("augmentation.noise_probability must be in [0, 1]")

    @classmethod
    def from_dict(cls, values: dict | None) -> "AugmentSettings":
        return build_settings(cls, values, "augmentation")


def augment_audio(audio: np.ndarray, settings: AugmentSettings, seed: int) -> np.ndarray:
    """Speed-perturb and add noise to one 16 kHz clip, deterministically for `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        wave = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).unsqueeze(0)
        factor = settings.speed_factors[int(torch.randint(len(settings.speed_factors), (1,)))]
        if factor != 1.0:
            wave, _ = torchaudio.functional.speed(wave, TARGET_SAMPLE_RATE, factor)
        if settings.noise_snr_db is not None and float(torch.rand(1)) < settings.noise_probability:
            noise = torch.randn_like(wave)
            wave = torchaudio.functional.add_noise(wave, noise, torch.tensor([float(settings.noise_snr_db)]))
        return wave.squeeze(0).clamp(-1.0, 1.0).numpy()


def spec_augment(features: torch.Tensor, settings: AugmentSettings, seed: int) -> torch.Tensor:
    """Frequency and time masks on one (n_mels, frames) log-mel, filled with its minimum."""
    if not settings.freq_mask_param and not settings.time_mask_param:
        return features
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        spec = features.float().unsqueeze(0)
        fill = float(spec.min())
        if settings.freq_mask_param:
            masking = torchaudio.transforms.FrequencyMasking(settings.freq_mask_param)
            for _ in range(settings.n_freq_masks):
                spec = masking(spec, mask_value=fill)
        if settings.time_mask_param:
            masking = torchaudio.transforms.TimeMasking(min(settings.time_mask_param, spec.shape[-1]))
            for _ in range(settings.n_time_masks):
                spec = masking(spec, mask_value=fill)
        return spec.squeeze(0)

