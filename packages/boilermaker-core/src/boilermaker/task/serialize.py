"""Checking that task arguments are JSON values, naming the offending one."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from boilermaker.exceptions import ArgumentNotSerializable


def _first_bad(value: Any, path: str) -> tuple[str, Any, str] | None:
    """Depth-first search for the first part of ``value`` that is not JSON."""
    if value is None or isinstance(value, bool | int | str):
        return None
    if isinstance(value, float):
        if math.isfinite(value):
            return None
        return path, value, "NaN and infinity are not JSON"
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path}[{key!r}]", key, "object keys must be strings"
            found = _first_bad(item, f"{path}[{key!r}]")
            if found:
                return found
        return None
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _first_bad(item, f"{path}[{index}]")
            if found:
                return found
        return None
    return path, value, "not a JSON type"


def check_arguments(function_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    """Raise :class:`ArgumentNotSerializable` naming the first argument that is not JSON."""
    for index, arg in enumerate(args):
        found = _first_bad(arg, f"args[{index}]")
        if found:
            raise ArgumentNotSerializable(function_name, *found)
    for key, arg in kwargs.items():
        found = _first_bad(arg, f"kwargs[{key!r}]")
        if found:
            raise ArgumentNotSerializable(function_name, *found)


def dumps(value: Any) -> str:
    """Compact, strict JSON (no NaN)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
