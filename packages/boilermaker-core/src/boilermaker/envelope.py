"""The wire contract: one versioned JSON envelope per task message.

    {"boilermaker": "2.0", "task": {...Task fields...}}

Readers accept any minor version of a major they know (new optional fields
may appear) and refuse other majors. A bare task object, as the published
1.x library wrote it, is read as version 1 so queues can be switched over
with messages still in them. Anything else raises :class:`InvalidTaskFormat`.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from boilermaker.exceptions import InvalidTaskFormat, MessageTooLarge
from boilermaker.retries import RetryAttempts, RetryPolicy
from boilermaker.task.task import Task

ENVELOPE_KEY = "boilermaker"
ENVELOPE_VERSION = "2.0"
SUPPORTED_MAJORS = frozenset({1, 2})
CONTENT_TYPE = "application/json"

#: Bytes reserved for the broker's own headers and properties when checking sizes.
MESSAGE_OVERHEAD = 1024

#: Fields every 1.x release wrote (early ones had no ``task_id``; one is then assigned).
_LEGACY_KEYS = frozenset({"function_name", "attempts", "policy", "payload"})


def encode_task(task: Task) -> bytes:
    """Serialise ``task`` into the current envelope version."""
    inner = task.model_dump_json(exclude={"sequence_number"})
    return ('{"' + ENVELOPE_KEY + '":"' + ENVELOPE_VERSION + '","task":' + inner + "}").encode()


def check_size(body: bytes, limit: int, what: str = "task message") -> None:
    """Refuse a body that, with the broker's own overhead, exceeds ``limit`` bytes."""
    size = len(body) + MESSAGE_OVERHEAD
    if size > limit:
        raise MessageTooLarge(size, limit, what)


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
        doc = json.loads(text, parse_constant=_refuse_constant)
    except InvalidTaskFormat:
        raise
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and integers past the digit limit.
        raise InvalidTaskFormat(f"message body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidTaskFormat(f"message body is JSON {type(doc).__name__}, not an envelope")
    if ENVELOPE_KEY in doc:
        major = _major(doc[ENVELOPE_KEY])
        if major not in SUPPORTED_MAJORS:
            raise InvalidTaskFormat(
                f"envelope version {doc[ENVELOPE_KEY]!r} is not supported "
                f"(this worker reads majors {sorted(SUPPORTED_MAJORS)})"
            )
        task_doc = doc.get("task")
        if not isinstance(task_doc, dict):
            raise InvalidTaskFormat("envelope has no 'task' object")
    elif doc.keys() >= _LEGACY_KEYS:
        task_doc = doc
    else:
        raise InvalidTaskFormat("message body is JSON but not a Boilermaker task envelope")
    try:
        return Task.model_validate(_drop_unknown(task_doc))
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


_TASK_FIELDS = frozenset(Task.model_fields)
_NESTED_FIELDS = {
    "policy": frozenset(RetryPolicy.model_fields),
    "attempts": frozenset(RetryAttempts.model_fields),
}


def _drop_unknown(doc: dict[str, Any]) -> dict[str, Any]:
    """Ignore fields from newer minor versions, recursively through chained tasks."""
    out = {k: v for k, v in doc.items() if k in _TASK_FIELDS}
    for key, known in _NESTED_FIELDS.items():
        if isinstance(out.get(key), dict):
            out[key] = {k: v for k, v in out[key].items() if k in known}
    for key in ("on_success", "on_failure"):
        if isinstance(out.get(key), dict):
            out[key] = _drop_unknown(out[key])
    return out
