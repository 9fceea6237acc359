"""The unit of work: a registered function's name, its arguments and how to retry it."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from weakref import WeakKeyDictionary

from pydantic import BaseModel, ConfigDict, Field, field_validator

from boilermaker.ids import GraphId, TaskId, check_id, new_task_id
from boilermaker.retries import RetryAttempts, RetryPolicy
from boilermaker.task.serialize import check_arguments, first_problem


class FunctionOptions(BaseModel):
    """What a registration says about a function's tasks (the single source for them)."""

    model_config = ConfigDict(frozen=True)

    policy: RetryPolicy
    should_dead_letter: bool
    acks_late: bool


#: Registration options of every registered function object, so that ``Task.si(fn)``
#: (which has no application at hand) creates tasks as registered. Weak keys: a
#: registration does not keep a function alive.
_REGISTERED: WeakKeyDictionary[Any, FunctionOptions] = WeakKeyDictionary()


def remember_registration(fn: Callable[..., Any], options: FunctionOptions) -> None:
    """Record ``fn``'s registration options (called by the registry)."""
    try:
        _REGISTERED[fn] = options
    except TypeError:
        pass  # an object that cannot be weakly referenced: Task.si uses the defaults


def registered_options(fn: Callable[..., Any] | str) -> FunctionOptions | None:
    """The options ``fn`` was registered with, if it was (by object, not by name)."""
    if isinstance(fn, str):
        return None
    try:
        return _REGISTERED.get(fn)
    except TypeError:
        return None


def function_name_of(fn: Callable[..., Any] | str) -> str:
    """The name a function is registered and published under."""
    if isinstance(fn, str):
        return fn
    name = getattr(fn, "__name__", None)
    if not isinstance(name, str):
        raise TypeError(f"{fn!r} is not a function or a registered function name")
    return name


class Task(BaseModel):
    """One invocation of a registered async function, as it travels on the queue.

    ``on_success`` / ``on_failure`` hold the next task of a chain; ``a >> b``
    sets ``a.on_success = b`` (and returns ``b`` so chains read left to right).
    """

    model_config = ConfigDict(extra="forbid")

    task_id: TaskId = Field(default_factory=new_task_id, min_length=1)
    should_dead_letter: bool = True
    acks_late: bool = True
    function_name: str = Field(min_length=1)
    attempts: RetryAttempts = Field(default_factory=RetryAttempts)
    policy: RetryPolicy = Field(default_factory=RetryPolicy.default)
    payload: dict[str, Any] = Field(default_factory=lambda: {"args": [], "kwargs": {}})
    diagnostic_id: str | None = None
    graph_id: GraphId | None = None
    on_success: Task | None = None
    on_failure: Task | None = None
    sequence_number: int | None = Field(default=None, exclude=True)

    @field_validator("task_id")
    @classmethod
    def _task_id_is_safe(cls, value: str) -> str:
        return check_id(value, "task_id")

    @field_validator("graph_id")
    @classmethod
    def _graph_id_is_safe(cls, value: str | None) -> str | None:
        return None if value is None else check_id(value, "graph_id")

    @field_validator("payload")
    @classmethod
    def _payload_shape(cls, payload: dict[str, Any]) -> dict[str, Any]:
        """``{"args": [...], "kwargs": {...}}``; 1.x could write ``{}``, so both may be absent."""
        args = payload.get("args", [])
        if isinstance(args, tuple):
            payload = {**payload, "args": list(args)}
        elif not isinstance(args, list):
            raise ValueError(f"payload 'args' must be a list, not {type(args).__name__}")
        kwargs = payload.get("kwargs", {})
        if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
            raise ValueError("payload 'kwargs' must be an object with string keys")
        found = first_problem(payload.get("args", []), kwargs)
        if found is not None:
            path, _value, why = found
            raise ValueError(f"argument {path} cannot travel as JSON: {why}")
        return payload

    @classmethod
    def from_checked(
        cls,
        function_name: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        *,
        should_dead_letter: bool,
        acks_late: bool,
        policy: RetryPolicy | Any,
    ) -> Task:
        """A new task from arguments the caller has checked already (``check_arguments``).

        Skips the model's validation, which would walk the arguments again; a
        ``policy`` that is not a :class:`RetryPolicy` (a mapping) is validated
        as usual. Every field is given, since pydantic's default lookup costs
        more than building the rest.
        """
        payload = {"args": list(args), "kwargs": dict(kwargs)}
        if not isinstance(policy, RetryPolicy):
            return cls(
                function_name=function_name,
                should_dead_letter=should_dead_letter,
                acks_late=acks_late,
                policy=policy,
                payload=payload,
            )
        return cls.model_construct(
            task_id=new_task_id(),
            should_dead_letter=should_dead_letter,
            acks_late=acks_late,
            function_name=function_name,
            attempts=RetryAttempts.model_construct(attempts=0, last_retry=datetime.now(UTC)),
            policy=policy,
            payload=payload,
            diagnostic_id=None,
            graph_id=None,
            on_success=None,
            on_failure=None,
            sequence_number=None,
        )

    @classmethod
    def si(
        cls,
        fn: Callable[..., Any] | str,
        *fn_args: Any,
        should_dead_letter: bool | None = None,
        acks_late: bool | None = None,
        policy: RetryPolicy | None = None,
        **fn_kwargs: Any,
    ) -> Task:
        """An immutable signature: ``fn`` with these arguments, checked to be JSON.

        Options left out come from ``fn``'s registration (``register_async(fn,
        policy=..., acks_late=..., should_dead_letter=...)``), else the defaults
        (``RetryPolicy.default()``, dead-lettering on, acks late). A function
        registered with several applications uses its latest registration.
        """
        name = function_name_of(fn)
        check_arguments(name, fn_args, fn_kwargs)
        registered = registered_options(fn)
        if policy is None:
            policy = registered.policy if registered else RetryPolicy.default()
        if should_dead_letter is None:
            should_dead_letter = registered.should_dead_letter if registered else True
        if acks_late is None:
            acks_late = registered.acks_late if registered else True
        return cls.from_checked(
            name,
            fn_args,
            fn_kwargs,
            should_dead_letter=should_dead_letter,
            acks_late=acks_late,
            policy=policy,
        )

    @classmethod
    def default(cls, function_name: str, **fields: Any) -> Task:
        """A task for ``function_name`` with the default policy; ``fields`` set any
        other field (``payload`` may omit ``args`` or ``kwargs``)."""
        payload = dict(fields.pop("payload", None) or {})
        payload.setdefault("args", [])
        payload.setdefault("kwargs", {})
        fields.setdefault("policy", RetryPolicy.default())
        return cls(function_name=function_name, payload=payload, **fields)

    @property
    def args(self) -> list[Any]:
        """Positional arguments (after ``state``)."""
        return list(self.payload.get("args", []))

    @property
    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments."""
        return dict(self.payload.get("kwargs", {}))

    @property
    def msg(self) -> None:
        """Deprecated: tasks no longer carry their Service Bus message (always None).

        Inside a task, ``await app.renew_message_lock()`` reaches its own message.
        """
        import warnings

        warnings.warn(
            "Task.msg is gone: tasks do not carry their Service Bus message; use "
            "app.renew_message_lock() inside a task, or middleware (ctx.message) to see it",
            DeprecationWarning,
            stacklevel=2,
        )
        return None

    @property
    def acks_early(self) -> bool:
        """True when the message is settled before the task runs (at most once)."""
        return not self.acks_late

    @property
    def can_retry(self) -> bool:
        """Whether the task may run again after its attempts so far."""
        return self.policy.can_retry(self.attempts.attempts)

    @property
    def retry_task_id(self) -> str:
        """The message id of the retry that follows the runs so far:
        ``<task_id>:<runs so far>`` (``T:1`` after the first run), as in 1.4.1."""
        return f"{self.task_id}:{self.attempts.attempts}"

    def get_next_delay(self) -> int:
        """Seconds to wait before the retry that follows the runs so far:
        ``policy.get_delay_interval(runs so far)``, as in 1.4.1 (the one formula the
        worker uses; a linear policy of 30 s waits 60 s after the first run)."""
        return self.policy.get_delay_interval(self.attempts.attempts)

    def mark_published(self, sequence_number: int | None) -> None:
        """Record the sequence number the broker gave the published message."""
        self.sequence_number = sequence_number

    def record_attempt(self) -> RetryAttempts:
        """Count one more run, now; returns the attempts."""
        return self.attempts.inc(datetime.now(UTC))

    def __rshift__(self, other: Task) -> Task:
        """``a >> b``: ``b`` runs after ``a`` succeeds; returns ``b``."""
        self.on_success = other
        return other

    def __lshift__(self, other: Task) -> Task:
        """``a << b``: ``a`` runs after ``b`` succeeds; returns ``a`` (as 1.4.1 does)."""
        other.on_success = self
        return self

    def __hash__(self) -> int:
        return hash(self.task_id)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Task):
            return NotImplemented
        return self.model_dump() == other.model_dump()


class TaskChain:
    """Tasks that run one after another, as one unit for ``TaskGraphBuilder.add_chain``.

    ``on_any_failure`` is one handler for the whole chain: it runs once, when
    the first task of the chain fails.
    """

    def __init__(self, *tasks: Task, on_any_failure: Task | None = None) -> None:
        if not tasks:
            raise ValueError("a TaskChain needs at least one task")
        for task in tasks:
            if not isinstance(task, Task):
                raise TypeError(f"a TaskChain holds Tasks, not {type(task).__name__}")
        self.tasks: list[Task] = list(tasks)
        self.on_any_failure = on_any_failure

    @property
    def head(self) -> Task:
        """The first task of the chain."""
        return self.tasks[0]

    @property
    def last(self) -> Task:
        """The last task of the chain (depend on it to wait for the whole chain)."""
        return self.tasks[-1]

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)


_TASK_FIELDS = frozenset(Task.model_fields)
#: Fields read from a message (the sequence number is the broker's, never the body's).
_READ_FIELDS = _TASK_FIELDS - {"sequence_number"}
_NESTED_FIELDS = {
    "policy": frozenset(RetryPolicy.model_fields),
    "attempts": frozenset(RetryAttempts.model_fields),
}


def known_task_fields(doc: dict[str, Any]) -> dict[str, Any]:
    """A task document without the fields this version does not know (written by a
    newer minor version, or by 1.x), recursively through chained tasks."""
    if doc.keys() <= _READ_FIELDS:
        out = doc.copy()  # the usual case: written by this version
    else:
        out = {k: v for k, v in doc.items() if k in _READ_FIELDS}
    for key, known in _NESTED_FIELDS.items():
        nested = out.get(key)
        if isinstance(nested, dict) and not nested.keys() <= known:
            out[key] = {k: v for k, v in nested.items() if k in known}
    for key in ("on_success", "on_failure"):
        if isinstance(out.get(key), dict):
            out[key] = known_task_fields(out[key])
    return out
