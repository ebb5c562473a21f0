"""The Hugging Face hub as this project meets it: offline mode and the hint a failed load gives."""

from __future__ import annotations

import os
from pathlib import Path


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE asks for the local hub cache only."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def offline_hint(location: str) -> str:
    """The sentence to add to a failed load of `location`: the offline hint for a hub id, else nothing."""
    if hub_offline() and not Path(str(location)).expanduser().exists():
        return (" HF_HUB_OFFLINE is set and the model is not in the local hub cache: download it once with "
                "network access (hf download ...) or use a local directory.")
    return ""
