"""Typed settings from the plain mappings Kedro passes in from conf/."""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


def build_settings(cls: type[T], values: dict | None, section: str) -> T:
    """Instantiate the dataclass `cls` from `values`, naming any unknown key and the known ones."""
    values = dict(values or {})
    known = sorted(cls.__dataclass_fields__)  # type: ignore[attr-defined]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown {section} setting(s) {unknown}; known: {known}")
    return cls(**values)
