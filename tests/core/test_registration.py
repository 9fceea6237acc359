"""Registering task functions: what is accepted, what is refused and how it is reported."""

from __future__ import annotations

import functools
import gc
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from boilermaker import Boilermaker
from boilermaker.exceptions import (
    BoilermakerAppException,
    RegistrationError,
    UnknownTaskError,
)
from boilermaker.memory import InMemoryBroker
from boilermaker.retries import RetryMode, RetryPolicy
from boilermaker.task import Task


async def process_data(state: Any, data_id: str, priority: str = "normal") -> str:
    return f"{data_id}:{priority}"


async def other(state: Any) -> None:
    return None


@pytest.fixture
def app() -> Boilermaker:
    return Boilermaker({}, InMemoryBroker())


def test_register_async_returns_the_function_and_uses_its_name(app: Boilermaker) -> None:
    assert app.register_async(process_data) is process_data
    assert "process_data" in app.registry
    assert app.registry.names() == ["process_data"]
    entry = app.registry.lookup(process_data)
    assert entry is app.registry.lookup("process_data")
    assert entry.policy == RetryPolicy.default()
    assert (entry.should_dead_letter, entry.acks_late) == (True, True)


def test_registration_logs_the_published_line(
    app: Boilermaker, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="boilermaker.app"):
        app.register_async(process_data, policy=RetryPolicy.default())
    records = [r for r in caplog.records if r.name == "boilermaker.app"]
    assert [r.getMessage() for r in records] == ["Registered background function fn=process_data"]
    assert records[0].levelno == logging.INFO


def test_options_become_task_defaults(app: Boilermaker) -> None:
    policy = RetryPolicy(max_tries=3, delay=5, retry_mode=RetryMode.Linear)
    app.register_async(process_data, policy=policy, should_dead_letter=False, acks_late=False)
    task = app.create_task(process_data, "d1")
    assert task.policy == policy
    assert (task.should_dead_letter, task.acks_late) == (False, False)
    override = RetryPolicy.no_retry()
    assert app.create_task(process_data, "d1", policy=override).policy == override


def test_non_async_functions_are_refused(app: Boilermaker) -> None:
    def sync_task(state: Any) -> None:
        return None

    async def generator_task(state: Any) -> Any:
        yield 1

    for fn in (sync_task, generator_task, lambda state: None, print):
        with pytest.raises(RegistrationError, match="not an async function"):
            app.register_async(fn)  # type: ignore[arg-type]
    with pytest.raises(RegistrationError, match="async def"):
        app.register_async(sync_task)  # type: ignore[arg-type]
    assert len(app.registry) == 0


def test_not_callable_is_refused(app: Boilermaker) -> None:
    with pytest.raises(RegistrationError):
        app.register_async("process_data")  # type: ignore[arg-type]


def test_a_function_without_a_state_parameter_is_refused(app: Boilermaker) -> None:
    async def no_state() -> None:
        return None

    async def keyword_only(*, state: Any) -> None:
        return None

    async def star_args(*args: Any) -> None:
        return None

    for fn in (no_state, keyword_only):
        with pytest.raises(RegistrationError, match="application state as its first parameter"):
            app.register_async(fn)
    app.register_async(star_args)


def test_unknown_options_are_refused_clearly(app: Boilermaker) -> None:
    with pytest.raises(RegistrationError) as info:
        app.register_async(process_data, retries=3, polcy=RetryPolicy())
    message = str(info.value)
    assert "unknown registration option(s) ['polcy', 'retries']" in message
    assert "'process_data'" in message
    assert "accepted: ['acks_late', 'name', 'policy', 'should_dead_letter', 'timeout']" in message
    assert "process_data" not in app.registry


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"policy": {"max_tries": 3}}, "must be a RetryPolicy"),
        ({"should_dead_letter": "yes"}, "should_dead_letter"),
        ({"acks_late": 1}, "acks_late"),
    ],
)
def test_badly_typed_options_are_refused(
    app: Boilermaker, options: dict[str, Any], match: str
) -> None:
    with pytest.raises(RegistrationError, match=match):
        app.register_async(process_data, **options)


def test_registration_errors_are_app_exceptions_and_type_errors(app: Boilermaker) -> None:
    with pytest.raises(BoilermakerAppException):
        app.register_async(process_data, bogus=True)
    with pytest.raises(TypeError):
        app.register_async(process_data, bogus=True)


def test_same_name_from_a_different_function_is_refused(app: Boilermaker) -> None:
    app.register_async(process_data)

    async def impostor(state: Any) -> None:
        return None

    impostor.__name__ = "process_data"  # e.g. the same name in another module
    with pytest.raises(RegistrationError, match="different function is already registered"):
        app.register_async(impostor)
    assert app.registry.lookup("process_data").fn is process_data
    # Registering it under another name works, and both stay distinct.
    app.register_async(impostor, name="process_data_v2")
    assert app.registry.lookup("process_data_v2").fn is impostor
    assert app.registry.lookup("process_data").fn is process_data


def test_registering_the_same_function_again_is_refused(app: Boilermaker) -> None:
    # As in 1.x (a ValueError): registering twice is how a policy silently changes.
    app.register_async(process_data)
    with pytest.raises(ValueError, match="already registered as 'process_data'"):
        app.register_async(process_data, policy=RetryPolicy.no_retry())
    assert app.registry.lookup(process_data).policy == RetryPolicy.default()
    assert len(app.registry) == 1


def test_a_sync_function_is_a_value_error_too(app: Boilermaker) -> None:
    def not_async(state: Any) -> None:
        return None

    with pytest.raises(ValueError, match="not an async function"):
        app.register_async(not_async)  # type: ignore[arg-type]


def test_task_si_takes_the_registered_options(app: Boilermaker) -> None:
    from boilermaker import NoRetry, Task

    async def careful(state: Any, n: int) -> int:
        return n

    app.register_async(careful, policy=NoRetry(), acks_late=False, should_dead_letter=False)
    task = Task.si(careful, 1)
    assert task.policy == NoRetry() == RetryPolicy.no_retry()
    assert task.policy.max_tries == 1
    assert (task.acks_late, task.acks_early, task.should_dead_letter) == (False, True, False)
    # Given explicitly, an option wins; unregistered functions get the defaults.
    assert Task.si(careful, 1, acks_late=True).acks_late is True
    assert Task.si("careful", 1).policy == RetryPolicy.default()
    assert app.create_task(careful, 2).policy == NoRetry()


def test_name_override_is_what_tasks_are_published_under(app: Boilermaker) -> None:
    app.register_async(other, name="tasks.other")
    assert app.create_task(other).function_name == "tasks.other"
    assert app.create_task("tasks.other").function_name == "tasks.other"
    assert "other" not in app.registry


def test_task_decorator_registers_with_options(app: Boilermaker) -> None:
    @app.task(policy=RetryPolicy.no_retry(), acks_late=False)
    async def decorated(state: Any, x: int) -> int:
        return x

    assert callable(decorated)
    entry = app.registry.lookup("decorated")
    assert entry.fn is decorated
    assert entry.policy == RetryPolicy.no_retry()
    assert entry.acks_late is False
    with pytest.raises(RegistrationError, match="unknown registration option"):
        app.task(retry=True)(other)


def test_register_many_async_applies_the_same_options(app: Boilermaker) -> None:
    app.register_many_async([process_data, other], should_dead_letter=False)
    assert app.registry.names() == ["other", "process_data"]
    assert not app.registry.lookup("other").should_dead_letter
    assert not app.registry.lookup("process_data").should_dead_letter


def test_wrapped_async_functions_are_accepted(app: Boilermaker) -> None:
    def logged(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            return await fn(*args, **kwargs)

        return wrapper

    wrapped = logged(process_data)
    app.register_async(wrapped)
    assert app.create_task(wrapped, "d").function_name == "process_data"
    # The signature seen through the wrapper is still checked.
    with pytest.raises(TypeError, match="cannot be called"):
        app.create_task(wrapped)


# -- creating tasks -------------------------------------------------------------------------


def test_create_task_checks_the_signature(app: Boilermaker) -> None:
    app.register_async(process_data)
    task = app.create_task(process_data, "d1", priority="high")
    assert (task.args, task.kwargs) == (["d1"], {"priority": "high"})
    for args, kwargs in [((), {}), (("a", "b", "c"), {}), (("d",), {"urgent": True})]:
        with pytest.raises(TypeError, match="task 'process_data' cannot be called"):
            app.create_task(process_data, *args, **kwargs)


def test_create_task_of_an_unregistered_function(app: Boilermaker) -> None:
    with pytest.raises(UnknownTaskError, match="not registered"):
        app.create_task(other)
    with pytest.raises(UnknownTaskError):
        app.create_task("nobody")
    with pytest.raises(LookupError):
        app.create_task("nobody")


def test_created_tasks_get_fresh_ids(app: Boilermaker) -> None:
    app.register_async(other)
    ids = {app.create_task(other).task_id for _ in range(50)}
    assert len(ids) == 50


def test_chain_links_tasks_and_shares_the_failure_handler(app: Boilermaker) -> None:
    app.register_many_async([process_data, other])
    a, b, c = (app.create_task(process_data, str(i)) for i in range(3))
    handler = app.create_task(other)
    head = app.chain(a, b, c, on_failure=handler)
    assert head is a
    assert a.on_success is b
    assert b.on_success is c
    assert c.on_success is None
    assert a.on_failure is handler
    assert b.on_failure is handler
    assert c.on_failure is handler
    assert app.chain(a) is a
    with pytest.raises(BoilermakerAppException, match="at least one task"):
        app.chain()
    with pytest.raises(BoilermakerAppException, match="takes tasks"):
        app.chain(a, "b")  # type: ignore[arg-type]


def test_shift_operators_link_tasks() -> None:
    a, b, c = Task.si("a"), Task.si("b"), Task.si("c")
    assert (a >> b) is b
    assert a.on_success is b
    b >> c
    assert b.on_success is c

    x, y, z = Task.si("x"), Task.si("y"), Task.si("z")
    # x << y: x runs after y, and the expression is x (as in 1.4.1).
    assert (x << y) is x
    assert y.on_success is x
    # So x << y << z is (x << y) << z: x runs after y, and after z (1.4.1's result).
    x2, y2, z2 = Task.si("x"), Task.si("y"), Task.si("z")
    x2 << y2 << z2
    assert y2.on_success is x2
    assert z2.on_success is x2
    assert x2.on_success is None
    assert z.on_success is None


def test_task_si_uses_the_function_name_and_defaults() -> None:
    task = Task.si(process_data, "d", priority="low")
    assert task.function_name == "process_data"
    assert task.policy == RetryPolicy.default()
    assert (task.should_dead_letter, task.acks_late) == (True, True)
    assert task.payload == {"args": ["d"], "kwargs": {"priority": "low"}}
    assert Task.si("by_name").function_name == "by_name"
    with pytest.raises(TypeError):
        Task.si(42)  # type: ignore[arg-type]


def test_task_payload_tuples_become_lists() -> None:
    task = Task(function_name="f", payload={"args": (1, 2), "kwargs": {}})
    assert task.payload["args"] == [1, 2]
    assert task.args == [1, 2]


# -- state ----------------------------------------------------------------------------------


class AppState:
    def __init__(self) -> None:
        self.data = {"processed_count": 0}


def test_state_is_held_by_a_normal_reference() -> None:
    broker = InMemoryBroker()
    plain = Boilermaker({"a": 1}, broker)
    assert plain.state == {"a": 1}
    assert type(plain.state) is dict
    readme = Boilermaker(AppState(), broker)
    gc.collect()
    assert readme.state.data["processed_count"] == 0
    assert isinstance(readme.state, AppState)


async def test_tasks_receive_the_state_object() -> None:
    broker = InMemoryBroker()
    state = {"seen": []}
    app = Boilermaker(state, broker)

    async def record(state: dict[str, list[str]], value: str) -> None:
        state["seen"].append(value)

    app.register_async(record)
    await app.apply_async(record, "one")
    await app.run_until_idle(timeout=10)
    assert state["seen"] == ["one"]


async def _two(state: Any, x: Any, y: Any = 1) -> None: ...
async def _rest(state: Any, *rest: Any) -> None: ...
async def _keyword_only(state: Any, x: Any, *, k: Any) -> None: ...
async def _mixed(state: Any, /, x: Any, y: Any = 2, *args: Any, z: Any = 3, **kw: Any) -> None: ...
async def _defaults(state: Any, x: Any = 1, /, y: Any = 2) -> None: ...


@pytest.mark.parametrize("fn", [_two, _rest, _keyword_only, _mixed, _defaults])
@pytest.mark.parametrize("count", range(5))
def test_a_positional_call_is_accepted_exactly_when_it_binds(
    fn: Callable[..., Awaitable[None]], count: int
) -> None:
    # Calls without keywords are checked by counting, not binding: the same verdict.
    import inspect

    app = Boilermaker(None, InMemoryBroker())
    app.register_async(fn)
    args = tuple(range(count))
    try:
        inspect.signature(fn).bind(None, *args)
        binds = True
    except TypeError:
        binds = False
    if binds:
        app.create_task(fn, *args)
    else:
        with pytest.raises(TypeError, match="cannot be called"):
            app.create_task(fn, *args)
