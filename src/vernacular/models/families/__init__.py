"""Model families behind one interface (`base.ModelFamily`): Whisper, CTC and RNN-T.

This package is the only code that knows a family. `family_for` picks the family of a checkpoint
(from its config, a resolved base-model record, a model or a name); every stage then calls the
family's methods: features, labels, collate, loss, decoding, augmentation, encoder-output cache,
export and the model card's loading snippet.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoConfig, PretrainedConfig, WhisperProcessor

from vernacular.models.families.base import IGNORE_INDEX, DecodeSettings, ModelFamily, unwrap
from vernacular.models.families.ctc import CTCFamily
from vernacular.models.families.rnnt import RNNT_MODEL_CLASSES, UNSUPPORTED_TRANSDUCERS, RNNTFamily
from vernacular.models.families.whisper import WhisperFamily
from vernacular.models.hub import offline_hint

__all__ = ["CTC", "FAMILIES", "FAMILY_NAMES", "IGNORE_INDEX", "RNNT", "WHISPER", "DecodeSettings", "ModelFamily",
           "family_for", "family_named", "family_of_processor", "unwrap"]

WHISPER = WhisperFamily()
CTC = CTCFamily()
RNNT = RNNTFamily()
FAMILIES = {f.name: f for f in (WHISPER, CTC, RNNT)}
FAMILY_NAMES = tuple(FAMILIES)


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
    path = Path(location).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        raise OSError(f"base model folder {location!r} has no config.json: point model.base_model at a "
                      "save_pretrained directory or a hub id")
    try:
        return AutoConfig.from_pretrained(location)
    except OSError as exc:
        raise OSError(f"cannot read the config of base model {location!r}: {exc}.{offline_hint(location)}") from exc


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
    config = getattr(unwrap(target), "config", None)
    if isinstance(config, PretrainedConfig):
        return _detect(config, type(unwrap(target)).__name__)
    raise TypeError(f"family_for: cannot tell the model family of a {type(target).__name__}")


def family_of_processor(processor) -> ModelFamily:
    """Whisper for a WhisperProcessor; other processors are ambiguous (Parakeet's serves CTC and
    transducers), so the caller must name the family."""
    if isinstance(processor, WhisperProcessor):
        return WHISPER
    raise ValueError(f"cannot tell the model family from a {type(processor).__name__}: pass family= "
                     "(vernacular.models.families.family_for(base_model))")
