"""CTC models (`AutoModelForCTC`: wav2vec2, HuBERT, `ParakeetForCTC`) and what CTC shares with RNN-T.

`SequenceFamily` stores the processor's own input per clip (log-mel (frames, n_mels) or raw
waveform), trimmed to its valid length, padded to the batch's longest clip. CTC decoding is greedy:
argmax, collapse repeats, drop blank. The loss is summed over the batch and divided by its label
tokens (`ctc_token_mean_loss`).
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import torch
from transformers import AutoModelForCTC, PretrainedConfig
from transformers.loss.loss_ctc import ForCTCLoss

from vernacular.data.audio import TARGET_SAMPLE_RATE
from vernacular.models.families.base import (IGNORE_INDEX, DecodeSettings, ModelFamily, decode_batches, guard_loops,
                                             input_device_dtype, unwrap)

log = logging.getLogger(__name__)

_CASE_CACHE: dict[tuple, str | None] = {}


def _vocab_case(tokenizer) -> str | None:
    """'lower' or 'upper' when the vocabulary's letters have one case only, else None."""
    key = (id(tokenizer), len(tokenizer), tokenizer.name_or_path)
    if key not in _CASE_CACHE:
        special = set(tokenizer.all_special_tokens)
        letters = "".join(t for t in tokenizer.get_vocab() if t not in special)
        lower = any(c.islower() for c in letters)
        upper = any(c.isupper() for c in letters)
        _CASE_CACHE[key] = "lower" if lower and not upper else "upper" if upper and not lower else None
    return _CASE_CACHE[key]


def _ctc_collapse(ids: list[int], blank: int) -> list[int]:
    return [token for token, _ in itertools.groupby(ids) if token != blank]


class SequenceFamily(ModelFamily):
    """CTC and RNN-T: the processor's own input per clip, padded to the batch's longest clip."""

    feature_layout = ("processor input per clip, trimmed to its valid length: (frames, n_mels) log-mel, or "
                      "(samples,) waveform for wav2vec2-style models; padded with pad_value")

    def prepare_for_training(self, model) -> None:
        base = unwrap(model)
        configs = [base.config] + [v for v in vars(base.config).values() if isinstance(v, PretrainedConfig)]
        # LayerDrop skips whole layers at random: a skipped layer's LoRA weights get no gradient that
        # step, and Parakeet/wav2vec2 checkpoints ship 0.1. Encoders copy the value at init.
        for config in configs:
            if getattr(config, "layerdrop", 0):
                config.layerdrop = 0.0
        for module in base.modules():
            if isinstance(getattr(module, "layerdrop", None), float) and module.layerdrop > 0:
                module.layerdrop = 0.0
        if getattr(base.config, "use_cache", None):
            base.config.use_cache = False
        if hasattr(base, "freeze_feature_encoder"):  # wav2vec2/HuBERT convolutional front end
            base.freeze_feature_encoder()

    def features(self, processor, audios):
        # One clip per call: wav2vec2's per-utterance normalisation then never sees another clip's padding,
        # so a clip's features do not depend on its batch.
        extractor = processor.feature_extractor
        name = extractor.model_input_names[0]
        pad_value = float(getattr(extractor, "padding_value", 0.0))
        out = []
        for audio in audios:
            encoded = extractor(np.asarray(audio, dtype=np.float32), sampling_rate=TARGET_SAMPLE_RATE,
                                return_tensors="pt", return_attention_mask=True)
            values = encoded[name][0]
            mask = encoded.get("attention_mask")
            length = int(mask[0].sum()) if mask is not None else values.shape[0]
            out.append((values[:length].to(torch.float16).clone(), pad_value))
        return out

    def label_ids(self, processor, text: str) -> list[int]:
        tokenizer = processor.tokenizer
        text = text.strip()
        case = _vocab_case(tokenizer)
        if case == "lower":
            text = text.lower()
        elif case == "upper":
            text = text.upper()
        ids = tokenizer(text, add_special_tokens=False).input_ids
        blank = self._blank_id(processor)
        return [i for i in ids if i != blank]

    def _blank_id(self, processor) -> int | None:
        return processor.tokenizer.pad_token_id

    def _pad_inputs(self, examples: list[dict], processor, n_frames: int | None = None) -> dict[str, torch.Tensor]:
        extractor = processor.feature_extractor
        lengths = [ex["features"].shape[0] for ex in examples]
        longest = max(max(lengths), n_frames or 0)
        first = examples[0]["features"]
        values = torch.empty((len(examples), longest, *first.shape[1:]), dtype=torch.float32)
        for i, ex in enumerate(examples):
            values[i, :lengths[i]] = ex["features"].float()
            values[i, lengths[i]:] = ex["pad_value"]
        batch = {extractor.model_input_names[0]: values}
        # wav2vec2-base style checkpoints (group norm) are trained without a mask, as transformers advises
        if getattr(extractor, "return_attention_mask", True):
            batch["attention_mask"] = (torch.arange(longest)[None, :] < torch.tensor(lengths)[:, None]).long()
        return batch

    @staticmethod
    def _padded_labels(examples: list[dict]) -> torch.Tensor:
        longest = max(len(ex["labels"]) for ex in examples)
        labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
        for i, ex in enumerate(examples):
            labels[i, :len(ex["labels"])] = torch.tensor(ex["labels"], dtype=torch.long)
        return labels

    def _decode_inputs(self, processor, chunk, device, dtype):
        """(examples, padded model inputs on `device`) for a chunk of audio clips."""
        examples = [{"features": f, "pad_value": p} for f, p in self.features(processor, chunk)]
        batch = self._pad_inputs(examples, processor)
        name = processor.feature_extractor.model_input_names[0]
        batch[name] = batch[name].to(device, dtype)
        return examples, {k: v.to(device) for k, v in batch.items()}


def ctc_token_mean_loss(logits, labels, logit_lengths, blank_token_id, reduction=None, zero_infinity=None,
                        **kwargs):
    """CTC loss summed over the batch and divided by its label tokens.

    transformers' own reductions differ by checkpoint (wav2vec2 ships "sum", Parakeet "mean" =
    per-utterance mean); this one is the same for every checkpoint. Infinite losses (audio too short
    for its transcript) count as zero rather than poisoning the step.
    """
    valid = (labels != IGNORE_INDEX) & (labels != blank_token_id)
    # CTC needs a frame per label plus a blank between repeated labels; report what cannot be aligned
    repeats = (valid[:, 1:] & valid[:, :-1] & (labels[:, 1:] == labels[:, :-1])).sum(-1)
    infeasible = int(((valid.sum(-1) + repeats).to(logit_lengths.device) > logit_lengths).sum())
    if infeasible:
        log.warning("%d of %d utterances have more labels than CTC output frames and add zero loss: use a "
                    "tokenizer with longer pieces, a model with less subsampling, or drop them", infeasible,
                    labels.shape[0])
    total = ForCTCLoss(logits, labels, logit_lengths, blank_token_id, reduction="sum", zero_infinity=True)
    return total / valid.sum().clamp(min=1).to(total.device)


class CTCFamily(SequenceFamily):
    """`AutoModelForCTC`: wav2vec2, HuBERT, `ParakeetForCTC`, ... (greedy: argmax, collapse, drop blank)."""

    name = "ctc"
    model_class = "AutoModelForCTC"
    hub_tags = ("ctc",)

    def load_model(self, location: str, dtype=torch.float32):
        model = AutoModelForCTC.from_pretrained(location, dtype=dtype)
        model.loss_function = ctc_token_mean_loss
        model.eval()
        return model

    def collate(self, examples, processor, n_frames=None):
        batch = self._pad_inputs(examples, processor, n_frames)
        batch["labels"] = self._padded_labels(examples)
        return batch

    @staticmethod
    def _output_lengths(model, input_lengths: torch.Tensor) -> torch.Tensor:
        base = unwrap(model)
        if hasattr(base, "_get_feat_extract_output_lengths"):  # wav2vec2, HuBERT
            return base._get_feat_extract_output_lengths(input_lengths)
        return base._get_subsampling_output_length(input_lengths)  # Parakeet

    @torch.no_grad()
    def transcribe(self, model, processor, audios, settings=None, device=None, progress=False):
        settings = settings or DecodeSettings()
        device, dtype = input_device_dtype(model, device)
        blank = unwrap(model).config.pad_token_id
        texts = []
        for chunk in decode_batches(audios, settings, progress):
            examples, batch = self._decode_inputs(processor, chunk, device, dtype)
            ids = model(**batch).logits.argmax(-1).cpu()
            lengths = self._output_lengths(model, torch.tensor([ex["features"].shape[0] for ex in examples]))
            for row, length in zip(ids, lengths.tolist()):
                tokens = _ctc_collapse(row[:int(length)].tolist(), blank)
                text = processor.tokenizer.decode(tokens, skip_special_tokens=True, group_tokens=False)
                texts.append(guard_loops(text, settings))
        return texts
