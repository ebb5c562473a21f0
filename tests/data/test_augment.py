"""Training-time augmentation: speed, noise at a given SNR, SpecAugment; reproducible per seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vernacular.data.augment import AugmentSettings, augment_audio, spec_augment


@pytest.fixture(scope="module")
def clip(speech_clips):
    return speech_clips[0][1]


def test_speed_perturbation_changes_length_by_the_factor(clip):
    slow = augment_audio(clip, AugmentSettings(enabled=True, speed_factors=[0.9]), seed=1)
    fast = augment_audio(clip, AugmentSettings(enabled=True, speed_factors=[1.1]), seed=1)
    assert len(slow) == pytest.approx(len(clip) / 0.9, rel=0.01)
    assert len(fast) == pytest.approx(len(clip) / 1.1, rel=0.01)


def test_noise_is_added_at_the_requested_snr(clip):
    settings = AugmentSettings(enabled=True, speed_factors=[1.0], noise_snr_db=10.0, noise_probability=1.0)
    noisy = augment_audio(clip, settings, seed=3)
    noise = noisy - clip
    snr = 10 * np.log10(np.mean(clip ** 2) / np.mean(noise ** 2))
    assert snr == pytest.approx(10.0, abs=0.5)


def test_same_seed_same_audio_other_seed_other_audio(clip):
    settings = AugmentSettings(enabled=True, noise_snr_db=20.0, noise_probability=1.0)
    a, b = augment_audio(clip, settings, 7), augment_audio(clip, settings, 7)
    assert np.array_equal(a, b)
    assert not any(np.array_equal(a, augment_audio(clip, settings, s)) for s in (8, 9))


def test_spec_augment_masks_bands_deterministically():
    features = torch.randn(80, 300)
    settings = AugmentSettings(enabled=True, freq_mask_param=20, time_mask_param=40)
    masked = spec_augment(features, settings, seed=5)
    assert torch.equal(masked, spec_augment(features, settings, seed=5))
    changed = (masked != features)
    assert changed.any() and changed.float().mean() < 0.6
    assert torch.equal(spec_augment(features, AugmentSettings(), seed=5), features)  # off by default


def test_bad_augmentation_settings_are_rejected():
    with pytest.raises(ValueError, match="unknown setting.*augmentation.speed"):
        AugmentSettings.from_dict({"speed": [1.1]})
    with pytest.raises(ValueError, match="speed_factors"):
        AugmentSettings.from_dict({"speed_factors": [0.0]})
