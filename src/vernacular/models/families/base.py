"""The model-family interface: what every family (Whisper, CTC, RNN-T) provides.

A `ModelFamily` knows how to load a checkpoint of its kind, turn audio into the compact per-clip
input stored in the feature cache, turn text into label ids, pad a batch of cached examples into
model keyword arguments, compute the loss, decode greedily, augment its inputs, cache encoder
outputs, export, and describe itself on a model card. Code outside this package calls these
methods and never branches on the family.

Loss normalisation is the same for every family: `family.loss(model, batch)` is the summed
negative log-likelihood of the batch divided by its label tokens (`family.n_label_tokens(batch)`),
so token-weighted gradient accumulation equals one large batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoProcessor, StoppingCriteria, StoppingCriteriaList

from vernacular.common.config import build_settings
from vernacular.common.text import collapse_repeats
from vernacular.data.augment import AugmentSettings

IGNORE_INDEX = -100  # label padding: ignored by every family's loss


@dataclass
class DecodeSettings:
    """Greedy/beam decoding and the loop guards, the same for evaluation, validation and serving."""

    batch_size: int = 8
    num_beams: int = 1
    # Whisper tiny loops on hard audio ("an an an ..."); cap the output by the audio length.
    max_tokens_per_second: float = 7.0
    min_new_tokens_cap: int = 16
    no_repeat_ngram_size: int = 0
    # Loops that survive the cap ("no, no, no, ...") are cut to this many repeats (0: keep as is) ...
    max_ngram_repeats: int = 2
    # ... when the hypothesis compresses this well (a loop); genuine repeats ("five five five") stay.
    loop_compression_ratio: float = 2.4
    # Stop a sequence while it is generated once its tail is one 2-4-token n-gram this many times in
    # a row (a single token: twice as many); 0: off. Saves the decode time a loop would spend.
    stop_repeats: int = 4

    @classmethod
    def from_dict(cls, values: dict | None, section: str = "decoding") -> "DecodeSettings":
        return build_settings(cls, values, section)


def unwrap(model):
    """The transformers model under a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def input_device_dtype(model, device):
    param = next(model.parameters())
    return (torch.device(device) if device is not None else param.device), param.dtype


def guard_loops(text: str, settings: DecodeSettings) -> str:
    """The decode-time loop guard every family applies to its hypotheses."""
    return collapse_repeats(text.strip(), settings.max_ngram_repeats,
                            min_compression_ratio=settings.loop_compression_ratio)


class RepeatStop(StoppingCriteria):
    """Ends each sequence whose last tokens are one n-gram (1 <= n <= max_n) repeated `repeats`
    times in a row (a 1-gram: 2 x `repeats`); the generation-time half of the loop guard."""

    def __init__(self, repeats: int, max_n: int = 4):
        self.repeats, self.max_n = repeats, max_n

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for n in range(1, self.max_n + 1):
            times = self.repeats * (2 if n == 1 else 1)
            if input_ids.shape[1] < n * times:
                break
            tail = input_ids[:, -n * times:].reshape(input_ids.shape[0], times, n)
            done |= (tail == tail[:, :1]).all(dim=2).all(dim=1)
        return done


def stopping_criteria(settings: DecodeSettings) -> StoppingCriteriaList | None:
    return StoppingCriteriaList([RepeatStop(settings.stop_repeats)]) if settings.stop_repeats else None


def decode_batches(audios: list, settings: DecodeSettings, progress: bool | str):
    """`audios` in chunks of `settings.batch_size`, with a progress bar when `progress` is true (a
    string is the bar's label, e.g. "adapter: test set")."""
    desc = progress if isinstance(progress, str) else "transcribe"
    for start in tqdm(range(0, len(audios), settings.batch_size), desc=desc, disable=not progress):
        yield audios[start:start + settings.batch_size]


class ModelFamily:
    """One instance per family (`WHISPER`, `CTC`, `RNNT`); see the module docstring."""

    name: str = ""
    # adapter.target_modules when the settings name none: attention projections exist in every family
    default_target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    feature_layout: str = ""  # shape of one cached clip's features, for the cache index
    model_class: str = ""     # transformers class a user loads the base with (model card snippet)
    processor_class: str = "AutoProcessor"
    hub_tags: tuple[str, ...] = ()
    supports_augmentation: bool = False
    supports_encoder_cache: bool = False
    supports_ct2_export: bool = False

    def __repr__(self) -> str:
        return f"<ModelFamily {self.name}>"

    # --- loading --------------------------------------------------------------------------------
    def load_processor(self, location: str):
        return AutoProcessor.from_pretrained(location)

    def load_model(self, location: str, dtype=torch.float32):
        raise NotImplementedError

    def prepare_for_training(self, model) -> None:
        raise NotImplementedError

    def set_speech_task(self, processor, model, language: str, task: str) -> None:
        """Make labels and decoding use `language` and `task` (`model` may be None).

        A family whose checkpoints have one fixed language records the setting and only checks
        the task."""
        if task != "transcribe":
            raise ValueError(f"model.task {task!r}: {self.name} models only transcribe; set model.task: transcribe")

    # --- features and labels ----------------------------------------------------------------------
    def features(self, processor, audios: list[np.ndarray]) -> list[tuple[torch.Tensor, float]]:
        raise NotImplementedError

    def label_ids(self, processor, text: str) -> list[int]:
        raise NotImplementedError

    def fixed_frames(self, processor) -> int | None:
        """The input length every batch is padded to, or None to pad to the batch's longest clip."""
        return None

    def unknown_token_id(self, processor) -> int | None:
        """The tokenizer's unknown-token id (labels holding it are counted in the feature index)."""
        return getattr(processor.tokenizer, "unk_token_id", None)

    def check_augmentation(self) -> None:
        """Raise unless `augmented_features` is implemented for this family."""
        if not self.supports_augmentation:
            raise ValueError(f"augmentation is implemented for Whisper models only; this base model is a {self.name} "
                             "model: set augmentation.enabled: false")

    def augmented_features(self, processor, audio: np.ndarray, settings: AugmentSettings,
                           seed: int) -> tuple[torch.Tensor, float]:
        """Features of an augmented clip, in the feature cache's layout."""
        self.check_augmentation()
        raise NotImplementedError

    # --- batches, loss --------------------------------------------------------------------------
    def collate(self, examples: list[dict], processor, n_frames: int | None = None) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def n_label_tokens(self, batch: dict) -> int:
        """Label tokens counted in the loss (labels are padded with IGNORE_INDEX in every family)."""
        return int((batch["labels"] != IGNORE_INDEX).sum())

    def model_inputs(self, batch: dict) -> dict:
        """Model keyword arguments from a collated batch (on the device)."""
        return batch

    def loss(self, model, batch: dict) -> torch.Tensor:
        """Mean loss per label token of `batch`."""
        return model(**self.model_inputs(batch)).loss

    def check_encoder_cache(self, model) -> None:
        """Raise unless the frozen encoder's outputs may be cached for this (PEFT) model."""
        raise ValueError(f"training.cache_encoder_outputs is implemented for Whisper models only; this base model is "
                         f"a {self.name} model: set it to false")

    def cache_encoder_outputs(self, model, examples: list[dict], n_frames, device, autocast_ctx,
                              batch_size: int) -> None:
        self.check_encoder_cache(model)

    # --- decoding -------------------------------------------------------------------------------
    def transcribe(self, model, processor, audios: list[np.ndarray], settings: DecodeSettings | None = None,
                   device=None, progress: bool = False) -> list[str]:
        raise NotImplementedError

    # --- export and model card ------------------------------------------------------------------
    def check_ct2_export(self) -> None:
        """Raise unless `export_ct2` is implemented for this family."""
        if not self.supports_ct2_export:
            raise ValueError(f"CTranslate2 export exists for Whisper models only; this adapter's base is a "
                             f"{self.name} model: export without --ct2 (a merged transformers checkpoint)")

    def export_ct2(self, model_dir, dest, quantization: str) -> None:
        self.check_ct2_export()
        raise NotImplementedError

    def loading_snippet(self, location: str, adapter_folder: str) -> list[str]:
        """Python lines that load the base model and the adapter with plain transformers + peft."""
        return ["from peft import PeftModel",
                f"from transformers import {self.model_class}, {self.processor_class}",
                "",
                f"base = {self.model_class}.from_pretrained({location!r})",
                f"processor = {self.processor_class}.from_pretrained({location!r})",
                f"model = PeftModel.from_pretrained(base, {adapter_folder!r}).merge_and_unload()  "
                "# merged: base-model speed"]
