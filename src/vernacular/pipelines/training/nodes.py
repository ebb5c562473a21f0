"""Training node: a LoRA adapter on the base model, resumable from checkpoints."""

from __future__ import annotations

import logging

from vernacular.augment import AugmentSettings
from vernacular.training import TrainSettings, lora_from_dict, train_lora_adapter

log = logging.getLogger(__name__)


def train_adapter(base_model: dict, features_index: dict, training: dict, adapter: dict, augmentation: dict,
                  storage: dict) -> tuple[object, dict]:
    """Train and return (adapter model for the AdapterDataset, training metrics)."""
    model, metrics = train_lora_adapter(base_model, features_index, TrainSettings.from_dict(training),
                                        lora_from_dict(adapter), storage["checkpoint_dir"],
                                        augmentation=AugmentSettings.from_dict(augmentation))
    log.info("adapter: %d/%d trainable params (%.3f%%), loss %.3f -> %.3f in %.1f min on %s",
             metrics["trainable_params"], metrics["total_params"], 100 * metrics["trainable_fraction"],
             metrics["first_loss"], metrics["final_loss"], metrics["train_seconds"] / 60, metrics["device_name"])
    metrics = {k: v for k, v in metrics.items()}
    metrics["base_model"] = base_model
    metrics["features"] = {k: features_index[k] for k in ("fingerprint", "counts")}
    return model, metrics
