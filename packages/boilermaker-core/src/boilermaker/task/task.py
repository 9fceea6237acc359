"""The unit of work: a registered function's name, its arguments and how to retry it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from boilermaker.ids import GraphId, TaskId, new_task_id
from boilermaker.retries import RetryAttempts, RetryPolicy
from boilermaker.task.serialize import check_arguments


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
        return payload

    @classmethod
    def si(
        cls,
        fn: Callable[..., Any] | str,
        *fn_args: Any,
        should_dead_letter: bool = True,
        acks_late: bool = True,
        policy: RetryPolicy | None = None,
        **fn_kwargs: Any,
    ) -> Task:
        """An immutable signature: ``fn`` with these arguments, checked to be JSON."""
        name = function_name_of(fn)
        check_arguments(name, fn_args, fn_kwargs)
        return cls(
            function_name=name,
            should_dead_letter=should_dead_letter,
            acks_late=acks_late,
            policy=policy if policy is not None else RetryPolicy.default(),
            payload={"args": list(fn_args), "kwargs": dict(fn_kwargs)},
        )

    @property
    def args(self) -> list[Any]:
        """Positional arguments (after ``state``)."""
        return list(self.payload.get("args", []))

    @property
    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments."""
        return dict(self.payload.get("kwargs", {}))

    @property
    def can_retry(self) -> bool:
        """Whether the task may run again after its attempts so far."""
        return self.policy.can_retry(self.attempts.attempts)

    def get_next_delay(self) -> int:
        """Seconds to wait before the next attempt, from the policy."""
        return self.policy.get_delay_interval(max(0, self.attempts.attempts - 1))

    def __rshift__(self, other: Task) -> Task:
        self.on_success = other
        return other

    def __lshift__(self, other: Task) -> Task:
        other.on_success = self
        return other

    def __hash__(self) -> int:
        return hash(self.task_id)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Task):
            return NotImplemented
        return self.model_dump() == other.model_dump()


class TaskChain:
    """Tasks that run one after another; usable in a graph via ``add_chain``."""

    def __init__(self, *tasks: Task, on_failure: Task | None = None) -> None:
        if not tasks:
            raise ValueError("a TaskChain needs at least one task")
        self.tasks: list[Task] = list(tasks)
        self.on_failure = on_failure

    @property
    def head(self) -> Task:
        """The first task of the chain."""
        return self.tasks[0]

    @property
    def last(self) -> Task:
        """The last task of the chain."""
        return self.tasks[-1]

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)
