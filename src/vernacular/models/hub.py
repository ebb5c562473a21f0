"""The Hugging Face hub as this project meets it: offline mode and the hint a failed load gives."""

from __future__ import annotations

import os
from pathlib import Path


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE asks for the local hub cache only."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def offline_hint(location: str) -> str:
    """The sentence to add to a failed load of `location` (empty when nothing more is known)."""
    path = Path(str(location)).expanduser()
    if path.is_absolute() or str(location).startswith((".", "~")) or path.exists():
        if not path.exists():
            return (f" There is no folder {path}: check model.base_model (a local save_pretrained directory, "
                    "a hub id such as openai/whisper-small, or embedded:whisper-tiny.en).")
        return ""
    if hub_offline():
        return (" HF_HUB_OFFLINE is set and the model is not in the local hub cache: download it once with "
                "network access (hf download ...) or use a local directory.")
    return ""
