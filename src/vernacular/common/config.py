"""Typed settings from the plain mappings Kedro passes in from conf/.

`build_settings` turns a mapping into a dataclass, recursively (a field typed as a dataclass is
built from its sub-mapping), checks every value against its field's type, and names the full key
(`radiology.training.epochs`), the expected type and the known keys when something is off.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar, Union

T = TypeVar("T")


class SettingsError(ValueError):
    """A parameter block that does not fit its settings: unknown key or wrong type."""


def _type_name(hint) -> str:
    if hint is type(None):
        return "null"
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if origin in (list, tuple):
        args = typing.get_args(hint)
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if origin is dict or hint is dict:
        return "a mapping"
    if dataclasses.is_dataclass(hint):
        return f"a mapping ({hint.__name__})"
    return getattr(hint, "__name__", str(hint))


def _check(value, hint, key: str):
    """`value` converted to `hint` (int -> float, list -> tuple where asked), or SettingsError."""
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        errors = []
        for option in typing.get_args(hint):
            try:
                return _check(value, option, key)
            except SettingsError as exc:
                errors.append(exc)
        raise SettingsError(f"{key}: expected {_type_name(hint)}, got {type(value).__name__} {value!r}")
    if hint is type(None):
        if value is None:
            return None
    elif dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if value is None or isinstance(value, dict):
            return build_settings(hint, value, key)
    elif origin in (list, tuple) or hint in (list, tuple):
        if isinstance(value, (list, tuple)):
            args = typing.get_args(hint)
            items = [_check(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
            return tuple(items) if (origin or hint) is tuple else items
    elif origin is dict or hint is dict:
        if isinstance(value, dict):
            return dict(value)
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif isinstance(hint, type):
        if isinstance(value, hint):
            return value
    else:
        return value
    raise SettingsError(f"{key}: expected {_type_name(hint)}, got {type(value).__name__} {value!r}")


def build_settings(cls: type[T], values, section: str) -> T:
    """Instantiate the dataclass `cls` from the mapping `values` (None: all defaults), checked deeply.

    `section` is the key path of `values` (e.g. `radiology.training`), used in every message.
    """
    if values is None:
        values = {}
    if isinstance(values, cls):
        return values
    if not isinstance(values, dict):
        raise SettingsError(f"{section}: expected a mapping of settings, got {type(values).__name__} {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    known = sorted(fields)
    unknown = sorted(set(values) - set(known))
    if unknown:
        listed = ", ".join(f"{section}.{k}" for k in unknown)
        raise SettingsError(f"unknown setting(s) {listed}; known keys of {section}: {known}")
    hints = typing.get_type_hints(cls)
    checked = {name: _check(value, hints[name], f"{section}.{name}") for name, value in values.items()}
    return cls(**checked)
