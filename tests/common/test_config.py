from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from vernacular.common.config import SettingsError, build_settings


@dataclass
class Inner:
    size: int = 1
    ratio: float = 0.5


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    tags: list[str] = field(default_factory=list)
    limit: int | None = None
    flag: bool = False


def test_nested_sections_are_built_and_numbers_converted():
    settings = build_settings(Outer, {"inner": {"ratio": 1, "size": 3}, "tags": ["a"], "limit": None}, "v.outer")
    assert settings.inner == Inner(size=3, ratio=1.0) and isinstance(settings.inner.ratio, float)
    assert settings.tags == ["a"] and build_settings(Outer, None, "v") == Outer()


@pytest.mark.parametrize("values, fragment", [
    ({"nmae": "y"}, "unknown setting(s) v.outer.nmae; known keys of v.outer: ['flag', 'inner', 'limit', 'name', 'tags']"),
    ({"inner": {"szie": 2}}, "unknown setting(s) v.outer.inner.szie"),
    ({"inner": {"size": "two"}}, "v.outer.inner.size: expected int, got str 'two'"),
    ({"flag": "yes"}, "v.outer.flag: expected bool, got str 'yes'"),
    ({"limit": 2.5}, "v.outer.limit: expected int or null, got float 2.5"),
    ({"tags": ["a", 3]}, "v.outer.tags[1]: expected str, got int 3"),
    ({"inner": [1]}, "v.outer.inner: expected a mapping (Inner), got list [1]"),
])
def test_bad_keys_and_types_name_the_full_key(values, fragment):
    with pytest.raises(SettingsError) as info:
        build_settings(Outer, values, "v.outer")
    assert fragment in str(info.value)


def test_a_bool_is_not_taken_for_an_int():
    with pytest.raises(SettingsError, match="expected int"):
        build_settings(Inner, {"size": True}, "inner")
