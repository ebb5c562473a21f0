"""Model families behind one interface: Whisper (encoder-decoder), CTC and RNN-T.

A `ModelFamily` knows how to load a checkpoint of its kind, turn audio into the compact per-clip
input stored in the feature cache, turn text into label ids, pad a batch of cached examples into
model keyword arguments, and decode greedily. Library and pipeline code call these methods and never
branch on the family; `family_for` picks the family from a checkpoint's config.

Loss normalisation is the same for every family: `model(**family.collate(...)).loss` is the summed
negative log-likelihood of the batch divided by its label tokens (`family.n_label_tokens(batch)`),
so token-weighted gradient accumulation equals one large batch. Whisper's cross-entropy already is;
for CTC and RNN-T, `load_model` installs that loss on the model (see `_ctc_token_mean_loss`,
`_rnnt_token_mean_loss`).
"""

from __future__ import annotations

import itertools
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from vernacular.audio import TARGET_SAMPLE_RATE

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
FAMILY_NAMES = ("whisper", "ctc", "rnnt")

# RNN-T checkpoints whose forward/generate this module drives (tested with a tiny random model).
RNNT_MODEL_CLASSES = {"nemotron3_5_asr": "Nemotron3_5AsrForRNNT"}
# Transducers that transformers has but whose loss and decoding differ (durations, own loss): not wired up.
UNSUPPORTED_TRANSDUCERS = ("parakeet_rnnt", "parakeet_tdt", "nemotron_asr_streaming")


def _unwrap(model):
    """The transformers model under a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _input_device_dtype(model, device):
    param = next(model.parameters())
    return (torch.device(device) if device is not None else param.device), param.dtype


class ModelFamily:
    """One instance per family (`WHISPER`, `CTC`, `RNNT`); see the module docstring."""

    name: str = ""
    default_target_modules: list[str] = ["q_proj", "v_proj"]
    feature_layout: str = ""  # shape of one cached clip's features, for the cache index

    def __repr__(self) -> str:
        return f"<ModelFamily {self.name}>"

    def load_processor(self, location: str):
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(location)

    def load_model(self, location: str, dtype=torch.float32):
        raise NotImplementedError

    def prepare_for_training(self, model) -> None:
        raise NotImplementedError

    def features(self, processor, audios: list[np.ndarray]) -> list[tuple[torch.Tensor, float]]:
        raise NotImplementedError

    def label_ids(self, processor, text: str) -> list[int]:
        raise NotImplementedError

    def collate(self, examples: list[dict], processor, n_frames: int | None = None) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def fixed_frames(self, processor) -> int | None:
        """The input length every batch is padded to, or None to pad to the batch's longest clip."""
        return None

    def unknown_token_id(self, processor) -> int | None:
        """The tokenizer's unknown-token id (labels holding it are counted in the feature index)."""
        return getattr(processor.tokenizer, "unk_token_id", None)

    def n_label_tokens(self, batch: dict) -> int:
        """Label tokens counted in the loss (labels are padded with IGNORE_INDEX in every family)."""
        return int((batch["labels"] != IGNORE_INDEX).sum())

    def loss(self, model, batch: dict) -> torch.Tensor:
        """Mean loss per label token of `batch` (the same as `model(**batch).loss`)."""
        return model(**batch).loss

    def transcribe(self, model, processor, audios: list[np.ndarray], settings=None, device=None,
                   progress: bool = False) -> list[str]:
        raise NotImplementedError


# --- Whisper --------------------------------------------------------------------------------------

class WhisperFamily(ModelFamily):
    """`WhisperForConditionalGeneration`; delegates to the original Whisper code paths unchanged."""

    name = "whisper"
    default_target_modules = ["q_proj", "v_proj"]
    feature_layout = "log-mel (n_mels, frames), trimmed; re-padded to n_frames with pad_value"

    def load_processor(self, location: str):
        from transformers import WhisperProcessor

        return WhisperProcessor.from_pretrained(location)

    def load_model(self, location: str, dtype=torch.float32):
        from transformers import WhisperForConditionalGeneration

        model = WhisperForConditionalGeneration.from_pretrained(location, dtype=dtype)
        model.eval()
        return model

    def prepare_for_training(self, model) -> None:
        _unwrap(model).config.use_cache = False

    def fixed_frames(self, processor) -> int | None:
        return int(processor.feature_extractor.nb_max_frames)  # the encoder takes exactly 30 s

    def unknown_token_id(self, processor) -> int | None:
        return None  # byte-level BPE: every text has a tokenisation (its unk token is <|endoftext|>)

    def features(self, processor, audios):
        from vernacular.features import compute_log_mel

        return compute_log_mel(processor.feature_extractor, audios)

    def label_ids(self, processor, text: str) -> list[int]:
        from vernacular.features import label_ids

        return label_ids(processor.tokenizer, text)

    def collate(self, examples, processor, n_frames=None):
        n_frames = n_frames or self.fixed_frames(processor)
        return whisper_collate(examples, processor.tokenizer.eos_token_id, n_frames)

    def transcribe(self, model, processor, audios, settings=None, device=None, progress=False):
        from vernacular.transcribe import whisper_transcribe

        return whisper_transcribe(model, processor, audios, settings, device, progress)


def whisper_collate(examples: list[dict], pad_token_id: int, n_frames: int = 3000) -> dict[str, torch.Tensor]:
    """Pad features to Whisper's window and build teacher-forcing inputs and labels.

    Label ids start with <|startoftranscript|><|notimestamps|>: `ids[:-1]` is the decoder input and
    `ids[1:]` the labels, so the start token is never doubled.
    """
    from vernacular.features import pad_features

    features = pad_features([b["features"] for b in examples], [b["pad_value"] for b in examples], n_frames)
    return {"input_features": features, **whisper_teacher_forcing(examples, pad_token_id)}


def whisper_teacher_forcing(examples: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """`decoder_input_ids` (ids[:-1], padded with pad_token_id) and `labels` (ids[1:], padded with -100)."""
    longest = max(len(b["labels"]) for b in examples) - 1
    decoder_input_ids = torch.full((len(examples), longest), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
    for i, b in enumerate(examples):
        ids = torch.tensor(b["labels"], dtype=torch.long)
        decoder_input_ids[i, : len(ids) - 1] = ids[:-1]
        labels[i, : len(ids) - 1] = ids[1:]
    return {"decoder_input_ids": decoder_input_ids, "labels": labels}


# --- shared by CTC and RNN-T ------------------------------------------------------------------------

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


class _SequenceFamily(ModelFamily):
    """CTC and RNN-T: the processor's own input per clip, padded to the batch's longest clip."""

    feature_layout = ("processor input per clip, trimmed to its valid length: (frames, n_mels) log-mel, or "
                      "(samples,) waveform for wav2vec2-style models; padded with pad_value")

    def prepare_for_training(self, model) -> None:
        from transformers import PretrainedConfig

        base = _unwrap(model)
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

    def _batches(self, audios, settings, progress):
        from tqdm.auto import tqdm

        for start in tqdm(range(0, len(audios), settings.batch_size), desc="transcribe", disable=not progress):
            yield audios[start:start + settings.batch_size]


# --- CTC ------------------------------------------------------------------------------------------

def _ctc_token_mean_loss(logits, labels, logit_lengths, blank_token_id, reduction=None, zero_infinity=None,
                         **kwargs):
    """CTC loss summed over the batch and divided by its label tokens.

    transformers' own reductions differ by checkpoint (wav2vec2 ships "sum", Parakeet "mean" =
    per-utterance mean); this one is the same for every checkpoint. Infinite losses (audio too short
    for its transcript) count as zero rather than poisoning the step.
    """
    from transformers.loss.loss_ctc import ForCTCLoss

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


class CTCFamily(_SequenceFamily):
    """`AutoModelForCTC`: wav2vec2, HuBERT, `ParakeetForCTC`, ... (greedy: argmax, collapse, drop blank)."""

    name = "ctc"
    default_target_modules = ["q_proj", "v_proj"]  # attention projections in wav2vec2, HuBERT and Parakeet

    def load_model(self, location: str, dtype=torch.float32):
        from transformers import AutoModelForCTC

        model = AutoModelForCTC.from_pretrained(location, dtype=dtype)
        model.loss_function = _ctc_token_mean_loss
        model.eval()
        return model

    def collate(self, examples, processor, n_frames=None):
        batch = self._pad_inputs(examples, processor, n_frames)
        batch["labels"] = self._padded_labels(examples)
        return batch

    @staticmethod
    def _output_lengths(model, input_lengths: torch.Tensor) -> torch.Tensor:
        base = _unwrap(model)
        if hasattr(base, "_get_feat_extract_output_lengths"):  # wav2vec2, HuBERT
            return base._get_feat_extract_output_lengths(input_lengths)
        return base._get_subsampling_output_length(input_lengths)  # Parakeet

    @torch.no_grad()
    def transcribe(self, model, processor, audios, settings=None, device=None, progress=False):
        from vernacular.transcribe import DecodeSettings, collapse_repeats

        settings = settings or DecodeSettings()
        device, dtype = _input_device_dtype(model, device)
        blank = _unwrap(model).config.pad_token_id
        texts = []
        for chunk in self._batches(audios, settings, progress):
            examples, batch = self._decode_inputs(processor, chunk, device, dtype)
            ids = model(**batch).logits.argmax(-1).cpu()
            lengths = self._output_lengths(model, torch.tensor([ex["features"].shape[0] for ex in examples]))
            for row, length in zip(ids, lengths.tolist()):
                tokens = _ctc_collapse(row[:int(length)].tolist(), blank)
                text = processor.tokenizer.decode(tokens, skip_special_tokens=True, group_tokens=False)
                texts.append(collapse_repeats(text.strip(), settings.max_ngram_repeats))
        return texts


# --- RNN-T ----------------------------------------------------------------------------------------

def _rnnt_token_mean_loss(blank_token_id: int):
    """The RNN-T loss that `Nemotron3_5AsrForRNNT.forward(labels=...)` lacks in transformers 5.24.

    There the class name matches no entry of transformers' loss mapping, so `labels=` falls back to
    the causal-LM loss and fails. This computes `torchaudio.functional.rnnt_loss` (through
    transformers' wrapper) with NeMo's `mean_volume` reduction: summed over the batch, divided by
    the label tokens. Labels are padded with IGNORE_INDEX; logits are (batch, frames, labels + 1, vocab).
    """
    from transformers.loss.loss_rnnt import rnnt_loss

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


class RNNTFamily(_SequenceFamily):
    """`Nemotron3_5AsrForRNNT` (nvidia/nemotron-3.5-asr-streaming-0.6b): transducer, greedy decoding via generate."""

    name = "rnnt"
    default_target_modules = ["q_proj", "v_proj"]  # encoder self-attention; the LSTM predictor is not a LoRA target
    language = "en-US"  # language prompt for checkpoints with prompt conditioning (Nemotron 3.5)

    def load_model(self, location: str, dtype=torch.float32):
        import transformers
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(location)
        cls = getattr(transformers, RNNT_MODEL_CLASSES[config.model_type])
        model = cls.from_pretrained(location, dtype=dtype)
        model.loss_function = _rnnt_token_mean_loss(model.config.blank_token_id)
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
        from transformers.utils import logging as hf_logging

        from vernacular.transcribe import DecodeSettings, collapse_repeats

        settings = settings or DecodeSettings()
        device, dtype = _input_device_dtype(model, device)
        base = _unwrap(model)
        blank = base.config.blank_token_id
        skip = {blank, base.generation_config.pad_token_id, base.config.pad_token_id} - {None}
        kwargs = {}
        if base.generation_config.decoder_start_token_id is None:
            kwargs["decoder_start_token_id"] = blank  # the predictor starts from blank (NeMo's SOS)
        texts = []
        for chunk in self._batches(audios, settings, progress):
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
                texts.append(collapse_repeats(text.strip(), settings.max_ngram_repeats))
        return texts


WHISPER = WhisperFamily()
CTC = CTCFamily()
RNNT = RNNTFamily()
FAMILIES = {f.name: f for f in (WHISPER, CTC, RNNT)}


# --- detection ------------------------------------------------------------------------------------

def _detect(config, where: str) -> ModelFamily:
    model_type = getattr(config, "model_type", None)
    architectures = list(getattr(config, "architectures", None) or [])
    if model_type == "whisper":
        return WHISPER
    if model_type in RNNT_MODEL_CLASSES:
        return RNNT
    if model_type == "parakeet_ctc" or any(a.endswith("ForCTC") for a in architectures):
        return CTC
    hint = ""
    if model_type in UNSUPPORTED_TRANSDUCERS:
        hint = (f" {model_type} is a transducer whose loss and decoding are not wired up here; the supported "
                "RNN-T model is nemotron3_5_asr (e.g. nvidia/nemotron-3.5-asr-streaming-0.6b).")
    elif model_type in ("wav2vec2", "hubert", "wavlm", "data2vec-audio"):
        hint = (f" This {model_type} checkpoint has no CTC head (architectures {architectures}); LoRA does not "
                "train a new output layer: start from a fine-tuned *ForCTC checkpoint.")
    raise ValueError(f"{where}: model_type {model_type!r} (architectures {architectures}) is not a supported model "
                     f"family.{hint} Supported: whisper (WhisperForConditionalGeneration), ctc (AutoModelForCTC: "
                     f"wav2vec2, HuBERT, parakeet_ctc, ...), rnnt ({', '.join(RNNT_MODEL_CLASSES)}).")


def _load_config(location: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(location)
    except OSError as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
        hint = (" HF_HUB_OFFLINE is set and the model is not in the local hub cache: download it once with "
                "network access or use a local directory." if offline else "")
        raise OSError(f"cannot read the config of base model {location!r}: {exc}.{hint}") from exc


def family_named(name: str) -> ModelFamily:
    if name not in FAMILIES:
        raise ValueError(f"model.family must be `auto` or one of {list(FAMILIES)}, got {name!r}")
    return FAMILIES[name]


def family_for(location_or_config) -> ModelFamily:
    """The family of a checkpoint: from a family, its name, a resolved base-model dict, a location
    (directory or hub id), a transformers config or a (PEFT-wrapped) model.

    A base-model dict with `family` set (not `auto`) must agree with the checkpoint's config when the
    config names a supported family; it decides only when detection cannot.
    """
    from transformers import PretrainedConfig

    target = location_or_config
    if isinstance(target, ModelFamily):
        return target
    if isinstance(target, dict):
        requested = target.get("family") or "auto"
        location = target.get("local_dir") or target["name_or_path"]
        if requested != "auto":
            family = family_named(requested)
            try:
                detected = _detect(_load_config(location), location)
            except ValueError:
                return family
            if detected is not family:
                raise ValueError(f"model.family is {requested!r} but {location} is a {detected.name} checkpoint; "
                                 f"set model.family: auto (or {detected.name})")
            return family
        return _detect(_load_config(location), location)
    if isinstance(target, PretrainedConfig):
        return _detect(target, f"config {getattr(target, 'name_or_path', '') or type(target).__name__}")
    if isinstance(target, (str, Path)):
        if str(target) in FAMILIES:
            return FAMILIES[str(target)]
        return _detect(_load_config(str(target)), str(target))
    config = getattr(_unwrap(target), "config", None)
    if isinstance(config, PretrainedConfig):
        return _detect(config, type(_unwrap(target)).__name__)
    raise TypeError(f"family_for: cannot tell the model family of a {type(target).__name__}")


def family_of_processor(processor) -> ModelFamily:
    """Whisper for a WhisperProcessor; other processors are ambiguous (Parakeet's serves CTC and
    transducers), so the caller must name the family."""
    from transformers import WhisperProcessor

    if isinstance(processor, WhisperProcessor):
        return WHISPER
    raise ValueError(f"cannot tell the model family from a {type(processor).__name__}: pass family= "
                     "(vernacular.families.family_for(base_model))")
