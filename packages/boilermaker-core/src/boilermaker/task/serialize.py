"""Checking that task arguments are JSON values, naming the offending one."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from boilermaker.exceptions import ArgumentNotSerializable

#: Deepest nesting of lists and objects an argument may have (each level costs stack
#: when the task is copied or encoded; JSON from elsewhere is checked too).
MAX_NESTING = 64


def _surrogate(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate, which UTF-8 cannot encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _first_bad(
    value: Any, path: str, active: frozenset[int] = frozenset(), depth: int = 0
) -> tuple[str, Any, str] | None:
    """Depth-first search for the first part of ``value`` that is not JSON.

    ``active`` holds the ids of the containers being walked, to catch cycles.
    """
    if isinstance(value, str):
        if _surrogate(value):
            return path, value, "it contains a lone surrogate, which UTF-8 cannot encode"
        return None
    if value is None or isinstance(value, bool | int):
        return None
    if isinstance(value, float):
        if math.isfinite(value):
            return None
        return path, value, "NaN and infinity are not JSON"
    if isinstance(value, Mapping | list | tuple):
        if id(value) in active:
            return path, value, "it contains itself (a circular reference)"
        if depth >= MAX_NESTING:
            return path, value, f"it is nested more than {MAX_NESTING} levels deep"
        active = active | {id(value)}
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path}[{key!r}]", key, "object keys must be strings"
            if _surrogate(key):
                return f"{path}[{key!r}]", key, "the key contains a lone surrogate"
            found = _first_bad(item, f"{path}[{key!r}]", active, depth + 1)
            if found:
                return found
        return None
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _first_bad(item, f"{path}[{index}]", active, depth + 1)
            if found:
                return found
        return None
    return path, value, "not a JSON type"


def first_problem(args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[str, Any, str] | None:
    """``(argument path, value, why)`` of the first argument that cannot travel as JSON."""
    named = [(f"args[{index}]", arg) for index, arg in enumerate(args)]
    named += [(f"kwargs[{key!r}]", arg) for key, arg in kwargs.items()]
    for key in kwargs:
        if _surrogate(key):
            return f"kwargs[{key!r}]", key, "the keyword contains a lone surrogate"
    for path, arg in named:
        try:
            found = _first_bad(arg, path)
        except RecursionError:
            found = (path, arg, "it is nested too deeply")
        if found:
            return found
    return None


def check_arguments(function_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    """Raise :class:`ArgumentNotSerializable` naming the first argument that is not JSON."""
    found = first_problem(args, kwargs)
    if found:
        raise ArgumentNotSerializable(function_name, *found)
