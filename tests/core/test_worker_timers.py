"""A running worker's event loop waits for its timers to the microsecond."""

from __future__ import annotations

import asyncio
import select
import selectors
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from boilermaker import Boilermaker
from boilermaker.memory import InMemoryBroker
from boilermaker.worker.timers import precise_timers


@pytest.fixture
def epoll_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.SelectorEventLoop(selectors.EpollSelector())
    try:
        yield loop
    finally:
        loop.close()


def _precise(loop: Any) -> bool:
    """Whether the loop's selector has the precise wait installed on it."""
    return "select" in vars(loop._selector)


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float | None]:
    """The timeouts passed to ``select.select`` (which still waits for real)."""
    seen: list[float | None] = []
    real = select.select

    def recording(r: Any, w: Any, x: Any, timeout: float | None = None) -> Any:
        seen.append(timeout)
        return real(r, w, x, timeout)

    monkeypatch.setattr(select, "select", recording)
    return seen


def test_a_timer_shorter_than_a_millisecond_is_waited_for_exactly(
    epoll_loop: asyncio.AbstractEventLoop, waits: list[float | None]
) -> None:
    with precise_timers(epoll_loop) as changed:
        assert changed
        fired = epoll_loop.create_future()
        epoll_loop.call_later(0.0004, fired.set_result, True)
        assert epoll_loop.run_until_complete(fired) is True
    # After the probe (timeout 0), the loop waited for the timer's own timeout,
    # which epoll would have rounded up to a whole millisecond.
    timed = [t for t in waits[1:] if t]
    assert timed, waits
    assert all(0 < t <= 0.0004 for t in timed), timed


def test_io_still_wakes_the_loop_during_a_long_precise_wait(
    epoll_loop: asyncio.AbstractEventLoop, waits: list[float | None]
) -> None:
    a, b = socket.socketpair()
    try:
        with precise_timers(epoll_loop):
            got = epoll_loop.create_future()
            epoll_loop.add_reader(a, lambda: got.set_result(a.recv(16)))
            threading.Timer(0.05, b.send, (b"ping",)).start()
            # The loop's wait is for wait_for's 10 s timer: the socket cuts it short.
            assert epoll_loop.run_until_complete(asyncio.wait_for(got, 10)) == b"ping"
            epoll_loop.remove_reader(a)
        assert any(t is not None and t > 5 for t in waits), waits
    finally:
        a.close()
        b.close()


def test_the_loop_is_restored_when_the_last_user_ends(
    epoll_loop: asyncio.AbstractEventLoop,
) -> None:
    with precise_timers(epoll_loop):
        with precise_timers(epoll_loop) as inner:
            assert inner
            assert _precise(epoll_loop)
        assert _precise(epoll_loop), "restored while another worker still runs"
    assert not _precise(epoll_loop)
    assert epoll_loop._selector.select(0) == []  # type: ignore[attr-defined]


def test_nothing_changes_when_disabled_or_on_another_selector(
    epoll_loop: asyncio.AbstractEventLoop,
) -> None:
    with precise_timers(epoll_loop, enabled=False) as changed:
        assert not changed
        assert not _precise(epoll_loop)
    other = asyncio.SelectorEventLoop(selectors.SelectSelector())
    try:
        with precise_timers(other) as changed:
            assert not changed
            assert not _precise(other)
    finally:
        other.close()
    with precise_timers(object()) as changed:  # a loop without a selector (uvloop, Windows)
        assert not changed


def test_a_descriptor_select_cannot_wait_on_leaves_the_loop_as_it_was(
    epoll_loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    def out_of_range(*args: Any) -> Any:
        raise ValueError("filedescriptor out of range in select()")

    monkeypatch.setattr(select, "select", out_of_range)
    with precise_timers(epoll_loop) as changed:
        assert not changed
        assert not _precise(epoll_loop)


async def test_a_running_worker_waits_precisely_and_restores_the_loop_after() -> None:
    seen: list[bool] = []
    app = Boilermaker({}, InMemoryBroker())

    async def look(state: Any, i: int) -> None:
        seen.append(_precise(asyncio.get_running_loop()))

    app.register_async(look)
    await app.apply_async(look, 1)
    await app.run_until_idle(timeout=10)
    await app.apply_async(look, 2)
    await app.run_until_idle(timeout=10, precise_timers=False)

    assert seen == [True, False]
    assert not _precise(asyncio.get_running_loop())
