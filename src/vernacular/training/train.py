"""Entry point of adapter training: in this process, or over several processes with torchrun."""

from __future__ import annotations

import os
from pathlib import Path

from vernacular.data.augment import AugmentSettings
from vernacular.models.families import DecodeSettings
from vernacular.training.distributed import launch_distributed
from vernacular.training.loop import train_in_process
from vernacular.training.settings import LoraSettings, TrainSettings


def train_lora_adapter(base_model: dict, features_index: dict, settings: TrainSettings, lora: LoraSettings,
                       checkpoint_root: str | Path, stop_after_steps: int | None = None,
                       augmentation: AugmentSettings | None = None, decoding: DecodeSettings | None = None,
                       normaliser: str = "whisper_english"):
    """Train an adapter; returns (peft_model, metrics).

    With `settings.distributed` (processes_per_node x nodes > 1, not already inside a distributed
    launch) this starts `torchrun` and loads the adapter the ranks trained (`launch_distributed`).
    Checkpoints go to `checkpoint_root/<run fingerprint>/`; a rerun with the same inputs and
    settings resumes from the newest checkpoint (a finished run resumes at its end and returns
    at once). `stop_after_steps` ends the run early (as a crash would) for tests. With
    `augmentation.enabled`, training examples are rebuilt from their audio at every step
    (speed, noise, SpecAugment), seeded per (seed, epoch, example) so resume stays exact.
    `decoding` and `normaliser` (evaluation's) score the validation WER.
    """
    if settings.distributed and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return launch_distributed(base_model, features_index, settings, lora, checkpoint_root,
                                  stop_after_steps=stop_after_steps, augmentation=augmentation, decoding=decoding,
                                  normaliser=normaliser)
    return train_in_process(base_model, features_index, settings, lora, checkpoint_root, stop_after_steps,
                            augmentation, decoding, normaliser)
