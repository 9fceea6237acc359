"""Checking that task arguments are JSON values, naming the offending one."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from boilermaker.exceptions import ArgumentNotSerializable


def _first_bad(
    value: Any, path: str, active: frozenset[int] = frozenset()
) -> tuple[str, Any, str] | None:
    """Depth-first search for the first part of ``value`` that is not JSON.

    ``active`` holds the ids of the containers being walked, to catch cycles.
    """
    if value is None or isinstance(value, bool | int | str):
        return None
    if isinstance(value, float):
        if math.isfinite(value):
            return None
        return path, value, "NaN and infinity are not JSON"
    if isinstance(value, Mapping | list | tuple):
        if id(value) in active:
            return path, value, "it contains itself (a circular reference)"
        active = active | {id(value)}
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path}[{key!r}]", key, "object keys must be strings"
            found = _first_bad(item, f"{path}[{key!r}]", active)
            if found:
                return found
        return None
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _first_bad(item, f"{path}[{index}]", active)
            if found:
                return found
        return None
    return path, value, "not a JSON type"


def check_arguments(function_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    """Raise :class:`ArgumentNotSerializable` naming the first argument that is not JSON."""
    named = [(f"args[{index}]", arg) for index, arg in enumerate(args)]
    named += [(f"kwargs[{key!r}]", arg) for key, arg in kwargs.items()]
    for path, arg in named:
        try:
            found = _first_bad(arg, path)
        except RecursionError:
            found = (path, arg, "it is nested too deeply")
        if found:
            raise ArgumentNotSerializable(function_name, *found)


def dumps(value: Any) -> str:
    """Compact, strict JSON (no NaN)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
