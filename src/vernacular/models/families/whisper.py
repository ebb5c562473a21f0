"""Whisper (`WhisperForConditionalGeneration`): log-mel features, teacher-forced labels, generate().

Label ids are the prefix generate() uses at inference, then the text: [<|startoftranscript|>,
<|notimestamps|>, ...text..., <|endoftext|>] for an English-only model, [<|startoftranscript|>,
<|de|>, <|transcribe|>, <|notimestamps|>, ...] for a multilingual one (`set_speech_task` sets the
language and task on the tokenizer and on the generation config alike). The collator feeds
`ids[:-1]` as decoder input and `ids[1:]` as labels, so the start token is never doubled.
The cached log-mel is trimmed to the frames that carry audio (float16) with the constant value
Whisper's feature extractor gives the padded tail; `pad_features` rebuilds the exact 3000-frame
input.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from transformers import WhisperForConditionalGeneration, WhisperProcessor
from transformers.utils import logging as hf_logging

from vernacular.data.audio import TARGET_SAMPLE_RATE
from vernacular.data.augment import AugmentSettings, augment_audio, spec_augment
from vernacular.models.whisper_ct2 import MULTILINGUAL_VOCAB_SIZE, TASKS, export_to_ct2
from vernacular.models.families.base import (IGNORE_INDEX, DecodeSettings, ModelFamily, decode_batches, guard_loops,
                                             input_device_dtype, stopping_criteria, unwrap)

HOP_LENGTH = 160
WINDOW_HALF = 200  # half of Whisper's 400-sample STFT window
MAX_LABEL_TOKENS = 440


def is_multilingual(tokenizer) -> bool:
    """OpenAI's rule: 51,865 tokens or more (English-only Whisper has 51,864)."""
    return len(tokenizer) >= MULTILINGUAL_VOCAB_SIZE


def label_ids(tokenizer, text: str) -> list[int]:
    """Token ids: the tokenizer's prefix (start, language, task, no-timestamps), text, <|endoftext|>.

    Whisper transcripts start with a space, so one is prepended.
    """
    if is_multilingual(tokenizer) and tokenizer.language is None:
        raise ValueError("training labels of a multilingual Whisper need a language token: set model.language "
                         "to the language of the training data (auto is for transcription only)")
    ids = tokenizer(" " + text.strip()).input_ids
    if ids[-1] != tokenizer.eos_token_id:
        ids = ids + [tokenizer.eos_token_id]
    return ids


def compute_log_mel(feature_extractor, audios: list[np.ndarray]) -> list[tuple[torch.Tensor, float]]:
    """Trimmed log-mel (n_mels, frames) in float16 and the padding value, per clip."""
    batch = feature_extractor(audios, sampling_rate=TARGET_SAMPLE_RATE, return_tensors="np").input_features
    n_frames_total = batch.shape[-1]
    out = []
    for audio, features in zip(audios, batch):
        keep = min(n_frames_total, math.ceil((len(audio) + WINDOW_HALF) / HOP_LENGTH) + 1)
        pad_value = float(features[:, -1].max()) if keep < n_frames_total else 0.0
        out.append((torch.from_numpy(features[:, :keep].copy()).to(torch.float16), pad_value))
    return out


def pad_features(trimmed: list[torch.Tensor], pad_values: list[float], n_frames: int = 3000) -> torch.Tensor:
    """Rebuild a (batch, n_mels, n_frames) float32 tensor from trimmed features."""
    n_mels = trimmed[0].shape[0]
    out = torch.empty(len(trimmed), n_mels, n_frames, dtype=torch.float32)
    for i, (features, pad) in enumerate(zip(trimmed, pad_values)):
        frames = min(features.shape[1], n_frames)
        out[i, :, :frames] = features[:, :frames].float()
        out[i, :, frames:] = pad
    return out


def teacher_forcing(examples: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """`decoder_input_ids` (ids[:-1], padded with pad_token_id) and `labels` (ids[1:], padded with -100)."""
    longest = max(len(b["labels"]) for b in examples) - 1
    decoder_input_ids = torch.full((len(examples), longest), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
    for i, b in enumerate(examples):
        ids = torch.tensor(b["labels"], dtype=torch.long)
        decoder_input_ids[i, : len(ids) - 1] = ids[:-1]
        labels[i, : len(ids) - 1] = ids[1:]
    return {"decoder_input_ids": decoder_input_ids, "labels": labels}


def collate(examples: list[dict], pad_token_id: int, n_frames: int = 3000) -> dict[str, torch.Tensor]:
    """Features padded to Whisper's window plus teacher-forcing inputs and labels.

    Examples carrying `encoder_output` (cached frozen-encoder states) give `encoder_hidden_states`
    instead of `input_features`.
    """
    if "encoder_output" in examples[0]:
        return {"encoder_hidden_states": torch.stack([b["encoder_output"] for b in examples]).float(),
                **teacher_forcing(examples, pad_token_id)}
    features = pad_features([b["features"] for b in examples], [b["pad_value"] for b in examples], n_frames)
    return {"input_features": features, **teacher_forcing(examples, pad_token_id)}


def max_new_tokens_for(duration_s: float, settings: DecodeSettings, limit: int = MAX_LABEL_TOKENS) -> int:
    return int(min(limit, max(settings.min_new_tokens_cap, duration_s * settings.max_tokens_per_second + 8)))


def _quiet_generate(model, features, kwargs):
    # transformers' own Whisper generate() warns on every call about arguments it sets itself
    # (suppress_tokens, max_length next to max_new_tokens); keep the log readable.
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return model.generate(input_features=features, **kwargs)
    finally:
        hf_logging.set_verbosity(previous)


class WhisperFamily(ModelFamily):
    name = "whisper"
    feature_layout = "log-mel (n_mels, frames), trimmed; re-padded to n_frames with pad_value"
    model_class = "WhisperForConditionalGeneration"
    processor_class = "WhisperProcessor"
    hub_tags = ("whisper",)
    supports_augmentation = True
    supports_encoder_cache = True
    supports_ct2_export = True

    def load_processor(self, location: str):
        return WhisperProcessor.from_pretrained(location)

    def load_model(self, location: str, dtype=torch.float32):
        model = WhisperForConditionalGeneration.from_pretrained(location, dtype=dtype)
        model.eval()
        return model

    def prepare_for_training(self, model) -> None:
        unwrap(model).config.use_cache = False

    def set_speech_task(self, processor, model, language: str, task: str) -> None:
        """Language and task on the tokenizer (labels) and the generation config (generate()).

        `auto` leaves the language to generate(), which detects it per clip. An English-only
        model takes only `en` and `transcribe`."""
        tokenizer = processor.tokenizer
        if task not in TASKS:
            raise ValueError(f"model.task must be one of {list(TASKS)}, got {task!r}")
        if not is_multilingual(tokenizer):
            if language != "en" or task != "transcribe":
                raise ValueError(f"this Whisper model is English-only ({len(tokenizer)} tokens): it cannot "
                                 f"{task} {language!r} speech; set model.language: en and model.task: transcribe, "
                                 "or use a multilingual base model (embedded:whisper-base, openai/whisper-small)")
            return
        if language != "auto" and tokenizer.convert_tokens_to_ids(f"<|{language}|>") in (None, tokenizer.unk_token_id):
            raise ValueError(f"model.language {language!r} is not a Whisper language code (such as en, de, cy); "
                             "or set auto to detect the language per clip")
        tokenizer.set_prefix_tokens(language=None if language == "auto" else language, task=task,
                                    predict_timestamps=False)
        if model is not None:
            generation = unwrap(model).generation_config
            generation.language = None if language == "auto" else language
            generation.task = task

    def fixed_frames(self, processor) -> int | None:
        return int(processor.feature_extractor.nb_max_frames)  # the encoder takes exactly 30 s

    def unknown_token_id(self, processor) -> int | None:
        return None  # byte-level BPE: every text has a tokenisation (its unk token is <|endoftext|>)

    def features(self, processor, audios):
        return compute_log_mel(processor.feature_extractor, audios)

    def label_ids(self, processor, text: str) -> list[int]:
        return label_ids(processor.tokenizer, text)

    def augmented_features(self, processor, audio, settings: AugmentSettings, seed: int):
        (features, pad_value), = compute_log_mel(processor.feature_extractor, [augment_audio(audio, settings, seed)])
        return spec_augment(features, settings, seed + 1), pad_value

    def collate(self, examples, processor, n_frames=None):
        return collate(examples, processor.tokenizer.eos_token_id, n_frames or self.fixed_frames(processor))

    def model_inputs(self, batch: dict) -> dict:
        if "encoder_hidden_states" in batch:  # cached frozen-encoder states
            rest = {k: v for k, v in batch.items() if k != "encoder_hidden_states"}
            return {**rest, "encoder_outputs": (batch["encoder_hidden_states"],)}
        return batch

    def check_encoder_cache(self, model) -> None:
        in_encoder = [n for n, p in model.named_parameters() if p.requires_grad and ".encoder." in n]
        if in_encoder:
            raise ValueError("training.cache_encoder_outputs needs adapters on the decoder only (adapter.scope: "
                             f"decoder); these trainable parameters are in the encoder: {in_encoder[:3]} ...")

    @torch.no_grad()
    def cache_encoder_outputs(self, model, examples, n_frames, device, autocast_ctx, batch_size) -> None:
        """Run the frozen encoder once per example and keep its output (fp16, CPU) on the example."""
        self.check_encoder_cache(model)
        encoder = model.get_encoder()
        for start in range(0, len(examples), batch_size):
            chunk = examples[start:start + batch_size]
            features = pad_features([ex["features"] for ex in chunk], [ex["pad_value"] for ex in chunk], n_frames)
            with autocast_ctx:
                hidden = encoder(input_features=features.to(device)).last_hidden_state
            for ex, h in zip(chunk, hidden):
                ex["encoder_output"] = h.to("cpu", torch.float16)

    @torch.no_grad()
    def transcribe(self, model, processor, audios, settings=None, device=None, progress=False):
        """Batched greedy `generate` with the output cap and the repeat guard."""
        settings = settings or DecodeSettings()
        device, dtype = input_device_dtype(model, device)
        texts: list[str] = []
        for chunk in decode_batches(audios, settings, progress):
            features = processor.feature_extractor(chunk, sampling_rate=TARGET_SAMPLE_RATE,
                                                   return_tensors="pt").input_features.to(device, dtype)
            longest = max(len(a) for a in chunk) / TARGET_SAMPLE_RATE
            kwargs = {"max_new_tokens": max_new_tokens_for(longest, settings), "num_beams": settings.num_beams}
            if settings.no_repeat_ngram_size:
                kwargs["no_repeat_ngram_size"] = settings.no_repeat_ngram_size
            if settings.stop_repeats:
                kwargs["stopping_criteria"] = stopping_criteria(settings)
            tokens = _quiet_generate(model, features, kwargs)
            decoded = processor.tokenizer.batch_decode(tokens, skip_special_tokens=True)
            texts.extend(guard_loops(t, settings) for t in decoded)
        return texts

    def export_ct2(self, model_dir, dest, quantization: str) -> None:
        export_to_ct2(model_dir, dest, quantization)
