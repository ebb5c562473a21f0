"""Training node: a LoRA adapter on the base model, resumable from checkpoints."""

from __future__ import annotations

import logging

from vernacular.common.storage import StorageLayout
from vernacular.data.augment import AugmentSettings
from vernacular.evaluation.run import EvaluationSettings
from vernacular.models.loading import SPEECH_TASK_FILE, hub_name, speech_task, speech_task_file
from vernacular.training.settings import LoraSettings, TrainSettings
from vernacular.training.train import train_lora_adapter

log = logging.getLogger(__name__)


def train_adapter(base_model: dict, features_index: dict, training: dict, adapter: dict, augmentation: dict,
                  evaluation: dict, storage: dict, vertical: str) -> tuple[object, dict]:
    """Train and return (adapter for the AdapterDataset, training metrics).

    The validation WER is decoded and normalised with the evaluation's settings. The adapter folder
    gets SPEECH_TASK_FILE (language and task), which transcription and export read back."""
    scoring = EvaluationSettings.from_dict(evaluation)
    model, metrics = train_lora_adapter(base_model, features_index, TrainSettings.from_dict(training),
                                        LoraSettings.from_dict(adapter),
                                        StorageLayout.for_vertical(vertical, storage).checkpoint_dir,
                                        augmentation=AugmentSettings.from_dict(augmentation),
                                        decoding=scoring.decoding, normaliser=scoring.normaliser)
    log.info("adapter: %d/%d trainable params (%.3f%%), loss %.3f -> %.3f in %.1f min on %s",
             metrics["trainable_params"], metrics["total_params"], 100 * metrics["trainable_fraction"],
             metrics["first_loss"], metrics["final_loss"], metrics["train_seconds"] / 60, metrics["device_name"])
    # adapter_config.json names the base as the Hub does (openai/whisper-tiny.en for the embedded
    # model), not this machine's conversion folder, so the folder loads anywhere with plain PEFT.
    for config in model.peft_config.values():
        config.base_model_name_or_path = hub_name(base_model["name_or_path"])
    language, task = speech_task(base_model)
    return {"model": model, "files": {SPEECH_TASK_FILE: speech_task_file(base_model)}}, {
        **metrics, "base_model": base_model, "language": language, "task": task,
        "features": {k: features_index[k] for k in ("fingerprint", "counts")}}
