"""The wire contract: the JSON body of a task message, which both 1.x and 2.x read.

A task travels as its fields at the top level, as the published 1.x library
wrote them, plus a format version where 1.x ignores it::

    {"boilermaker": "2.0", "task_id": "...", "function_name": "...", ...}

so workers still on 1.x run what this version publishes (upgrade publishers
first or workers first, in any order). Nodes of graphs published by this
version travel wrapped instead::

    {"boilermaker": "2.0", "task": {...Task fields...}}

which 1.x refuses (dead-letters as ``InvalidTaskFormat``) rather than run:
their dispatch records would be overwritten by a 1.x worker. Readers take
either form, any minor version of a major they know (new fields are
ignored), and refuse other majors; a bare task without a version is 1.x's.
Anything else raises :class:`InvalidTaskFormat`.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from boilermaker.exceptions import InvalidTaskFormat
from boilermaker.task.task import Task, known_task_fields

ENVELOPE_KEY = "boilermaker"
ENVELOPE_VERSION = "2.0"
SUPPORTED_MAJORS = frozenset({1, 2})
CONTENT_TYPE = "application/json"


#: No envelope key in a document (its value may be anything, null included).
_ABSENT: Any = object()
#: Fields every 1.x release wrote (early ones had no ``task_id``; one is then assigned).
_LEGACY_KEYS = frozenset({"function_name", "attempts", "policy", "payload"})


def encode_task(task: Task, *, wrapped: bool = False) -> bytes:
    """The message body of ``task``: flat (1.x reads it), or wrapped (1.x refuses it)."""
    inner = task.model_dump_json(exclude={"sequence_number"})
    head = '{"' + ENVELOPE_KEY + '":"' + ENVELOPE_VERSION + '",'
    if wrapped:
        return (head + '"task":' + inner + "}").encode()
    return (head + inner[1:]).encode()


def is_wrapped(body: bytes) -> bool:
    """Whether a body is in the wrapped form (a 2.x graph node's), which 1.x refuses."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return False
    return (
        isinstance(doc, dict) and "function_name" not in doc and isinstance(doc.get("task"), dict)
    )


def _major(version: Any) -> int:
    if isinstance(version, int) and not isinstance(version, bool):
        return version
    if isinstance(version, str):
        head = version.split(".", 1)[0]
        if head.isdigit():
            return int(head)
    raise InvalidTaskFormat(f"envelope version {version!r} is not a version number")


def decode_task(body: bytes | bytearray | memoryview | str) -> Task:
    """Read a task from a message body, or raise :class:`InvalidTaskFormat` saying why."""
    try:
        text = body if isinstance(body, str) else bytes(body).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidTaskFormat(f"message body is not UTF-8 text: {exc}") from None
    try:
        doc = _DECODER.decode(text)
    except InvalidTaskFormat:
        raise
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and integers past the digit limit.
        raise InvalidTaskFormat(f"message body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidTaskFormat(f"message body is JSON {type(doc).__name__}, not an envelope")
    version = doc.pop(ENVELOPE_KEY, _ABSENT)  # the document is ours: parsed just now
    if version is not _ABSENT:
        major = 2 if version == ENVELOPE_VERSION else _major(version)
        if major not in SUPPORTED_MAJORS:
            raise InvalidTaskFormat(
                f"envelope version {version!r} is not supported "
                f"(this worker reads majors {sorted(SUPPORTED_MAJORS)})"
            )
    if "function_name" in doc:
        task_doc: Any = doc
        if version is _ABSENT and not doc.keys() >= _LEGACY_KEYS:
            missing = ", ".join(sorted(_LEGACY_KEYS - doc.keys()))
            raise InvalidTaskFormat(f"message body is a task without {missing}")
    elif version is not _ABSENT:
        task_doc = doc.get("task")
        if not isinstance(task_doc, dict):
            raise InvalidTaskFormat("envelope has neither task fields nor a 'task' object")
    else:
        raise InvalidTaskFormat("message body is JSON but not a Boilermaker task")
    try:
        return Task.model_validate(known_task_fields(task_doc))
    except RecursionError:
        raise InvalidTaskFormat("task in envelope is nested too deeply") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()[:5]
        )
        raise InvalidTaskFormat(f"task in envelope is invalid: {problems}") from None


def _refuse_constant(name: str) -> Any:
    """``NaN`` and ``Infinity`` are not JSON, and would not survive re-publishing."""
    raise InvalidTaskFormat(f"message body is not strict JSON: it contains {name}")


#: One decoder for every message (``json.loads`` with an option builds one per call).
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
