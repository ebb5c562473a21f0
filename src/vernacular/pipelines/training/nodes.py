"""Training node: a LoRA adapter on the base model, resumable from checkpoints."""

from __future__ import annotations

import logging

from vernacular.common.storage import StorageLayout
from vernacular.data.augment import AugmentSettings
from vernacular.evaluation.run import EvaluationSettings
from vernacular.models.loading import SPEECH_TASK_FILE, hub_name, speech_task, speech_task_file
from vernacular.serving.batch import BatchSettings
from vernacular.serving.ct2 import PRECISION_FILE
from vernacular.serving.precision import precision_file_text, serving_precision_record
from vernacular.training.settings import LoraSettings, TrainSettings
from vernacular.training.train import train_lora_adapter

log = logging.getLogger(__name__)


def train_adapter(base_model: dict, features_index: dict, training: dict, adapter: dict, augmentation: dict,
                  evaluation: dict, transcription: dict, storage: dict, vertical: str) -> tuple[object, dict]:
    """Train and return (adapter for the AdapterDataset, training metrics).

    The validation WER is decoded and normalised with the evaluation's settings. The adapter folder
    gets SPEECH_TASK_FILE (language and task), which transcription and export read back, and, when
    batch transcription serves it with CTranslate2, PRECISION_FILE: the weight type `quantization:
    auto` serves it with, measured on the validation split (`transcription` settings)."""
    scoring = EvaluationSettings.from_dict(evaluation)
    train_settings = TrainSettings.from_dict(training)
    layout = StorageLayout.for_vertical(vertical, storage)
    model, metrics = train_lora_adapter(base_model, features_index, train_settings,
                                        LoraSettings.from_dict(adapter),
                                        layout.checkpoint_dir,
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
    files = {SPEECH_TASK_FILE: speech_task_file(base_model)}
    precision = serving_precision_record(model, files, base_model, features_index, BatchSettings.from_dict(transcription),
                                         layout.ct2_cache_dir, scoring.normaliser,
                                         train_settings.max_validation_utterances)
    if precision is not None:
        files[PRECISION_FILE] = precision_file_text(precision)
    return {"model": model, "files": files}, {
        **metrics, "base_model": base_model, "language": language, "task": task, "serving_precision": precision,
        "features": {k: features_index[k] for k in ("fingerprint", "counts")}}
