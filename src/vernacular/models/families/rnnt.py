"""RNN-T models: `Nemotron3_5AsrForRNNT` (nvidia/nemotron-3.5-asr-streaming-0.6b), greedy decoding via generate."""

from __future__ import annotations

import warnings

import torch
import transformers
from transformers import AutoConfig
from transformers.loss.loss_rnnt import rnnt_loss
from transformers.utils import logging as hf_logging

from vernacular.models.families.base import (IGNORE_INDEX, DecodeSettings, decode_batches, guard_loops,
                                             input_device_dtype, unwrap)
from vernacular.models.families.ctc import SequenceFamily

# RNN-T checkpoints whose forward/generate this module drives (tested with a tiny random model).
RNNT_MODEL_CLASSES = {"nemotron3_5_asr": "Nemotron3_5AsrForRNNT"}
# Transducers that transformers has but whose loss and decoding differ (durations, own loss): not wired up.
UNSUPPORTED_TRANSDUCERS = ("parakeet_rnnt", "parakeet_tdt", "nemotron_asr_streaming")


def rnnt_token_mean_loss(blank_token_id: int):
    """The RNN-T loss that `Nemotron3_5AsrForRNNT.forward(labels=...)` lacks in transformers 5.24.

    There the class name matches no entry of transformers' loss mapping, so `labels=` falls back to
    the causal-LM loss and fails. This computes `torchaudio.functional.rnnt_loss` (through
    transformers' wrapper) with NeMo's `mean_volume` reduction: summed over the batch, divided by
    the label tokens. Labels are padded with IGNORE_INDEX; logits are (batch, frames, labels + 1, vocab).
    """

    def loss(logits, labels, encoder_outputs=None, **kwargs):
        label_lengths = (labels != IGNORE_INDEX).sum(-1)
        mask = getattr(encoder_outputs, "attention_mask", None)
        if mask is not None:
            logit_lengths = mask.sum(-1)
        else:
            logit_lengths = torch.full((logits.shape[0],), logits.shape[1], dtype=torch.long, device=logits.device)
        # torchaudio wants the frame and label axes exactly as long as the longest entry
        longest_labels = int(label_lengths.max())
        logits = logits[:, :int(logit_lengths.max()), :longest_labels + 1]
        targets = labels[:, :longest_labels]
        targets = targets.masked_fill(targets == IGNORE_INDEX, blank_token_id)
        return rnnt_loss(logits, targets, logit_lengths, label_lengths, blank_token_id, reduction="mean_volume")

    return loss


class RNNTFamily(SequenceFamily):
    """Transducer with an LSTM predictor; LoRA targets the encoder's attention (the predictor is no target)."""

    name = "rnnt"
    model_class = "Nemotron3_5AsrForRNNT"
    hub_tags = ("rnnt", "transducer")
    language = "en-US"  # language prompt for checkpoints with prompt conditioning (Nemotron 3.5)

    def load_model(self, location: str, dtype=torch.float32):
        config = AutoConfig.from_pretrained(location)
        cls = getattr(transformers, RNNT_MODEL_CLASSES[config.model_type])
        model = cls.from_pretrained(location, dtype=dtype)
        model.loss_function = rnnt_token_mean_loss(model.config.blank_token_id)
        model.eval()
        return model

    def _blank_id(self, processor) -> int | None:
        return getattr(processor, "blank_token_id", None)

    def _prompt_ids(self, processor, n: int) -> torch.Tensor | None:
        dictionary = getattr(processor, "prompt_dictionary", None)
        if not dictionary:
            return None
        return torch.full((n,), int(dictionary[self.language]), dtype=torch.long)

    def collate(self, examples, processor, n_frames=None):
        batch = self._pad_inputs(examples, processor, n_frames)
        labels = self._padded_labels(examples)
        blank = processor.blank_token_id
        # The prediction network reads [blank, y_1, ..., y_U]; padding positions are masked by the label lengths.
        start = torch.full((len(examples), 1), blank, dtype=torch.long)
        batch["decoder_input_ids"] = torch.cat([start, labels.masked_fill(labels == IGNORE_INDEX, blank)], dim=1)
        batch["labels"] = labels
        prompts = self._prompt_ids(processor, len(examples))
        if prompts is not None:
            batch["prompt_ids"] = prompts
        return batch

    @torch.no_grad()
    def transcribe(self, model, processor, audios, settings=None, device=None, progress=False):
        settings = settings or DecodeSettings()
        device, dtype = input_device_dtype(model, device)
        base = unwrap(model)
        blank = base.config.blank_token_id
        skip = {blank, base.generation_config.pad_token_id, base.config.pad_token_id} - {None}
        kwargs = {}
        if base.generation_config.decoder_start_token_id is None:
            kwargs["decoder_start_token_id"] = blank  # the predictor starts from blank (NeMo's SOS)
        texts = []
        for chunk in decode_batches(audios, settings, progress):
            examples, batch = self._decode_inputs(processor, chunk, device, dtype)
            prompts = self._prompt_ids(processor, len(chunk))
            if prompts is not None:
                batch["prompt_ids"] = prompts.to(device)
            previous = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()  # generate() warns about its own defaults on every call
            try:
                with warnings.catch_warnings():
                    # No output cap is needed: decoding stops when every clip's encoder frames are consumed
                    # (at most config.max_symbols_per_step symbols per frame); the default length is that bound.
                    warnings.filterwarnings("ignore", message="Using the model-agnostic default `max_length`")
                    sequences = model.generate(**batch, **kwargs).sequences.cpu()
            finally:
                hf_logging.set_verbosity(previous)
            for row in sequences.tolist():
                tokens = [t for t in row if t not in skip]
                text = processor.tokenizer.decode(tokens, skip_special_tokens=True, group_tokens=False)
                texts.append(guard_loops(text, settings))
        return texts
