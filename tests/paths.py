"""Paths the tests share: the checkout and the `shared/` data folder beside it (may be absent)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"
