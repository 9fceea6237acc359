"""Connection limits, accept back-off and the SASL layer's defences, piece by piece.

The end-to-end behaviour under hostile clients is in ``test_emulator_abuse.py``;
these tests pin down the rules themselves, without sockets or time.
"""

from __future__ import annotations

import errno
import logging
import struct
import subprocess
import sys

import pytest

from boilermaker.emulator import ConfigError, ConnectionLimits, ServiceBusEmulator
from boilermaker.emulator.accept_backoff import AcceptBackoff, ThrottledLog
from boilermaker.emulator.config import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
)
from boilermaker.emulator.sasl import MAX_SASL_FRAME_SIZE, SASL_HEADER, SaslHandshake

EMPTY_FRAME = struct.pack(">IBBH", 8, 2, 0, 0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_connection_limits_defaults_are_the_documented_ones() -> None:
    limits = ConnectionLimits()
    assert (limits.handshake_timeout, limits.idle_timeout, limits.max_connections) == (
        DEFAULT_HANDSHAKE_TIMEOUT,
        DEFAULT_IDLE_TIMEOUT,
        DEFAULT_MAX_CONNECTIONS,
    )
    assert (DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS) == (
        10.0,
        240.0,
        1000,
    )
    assert ServiceBusEmulator().limits == limits
    assert ConnectionLimits(idle_timeout=None).idle_timeout is None


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"handshake_timeout": 0}, "handshake_timeout"),
        ({"handshake_timeout": float("inf")}, "handshake_timeout"),
        ({"idle_timeout": 0}, "idle_timeout"),
        ({"idle_timeout": -1.0}, "idle_timeout"),
        ({"max_connections": 0}, "max_connections"),
        ({"max_connections": 2.5}, "max_connections"),
    ],
)
def test_unusable_limits_are_refused_where_they_enter(
    settings: dict[str, float], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        ConnectionLimits(**settings)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        ServiceBusEmulator(**settings)  # type: ignore[arg-type]


def test_cli_refuses_unusable_limits() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "boilermaker.emulator", "--port", "0", "--max-connections", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "max_connections must be at least 1" in result.stderr


def test_cli_documents_the_limit_options() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "boilermaker.emulator", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    for option in ("--handshake-timeout", "--idle-timeout", "--max-connections"):
        assert option in result.stdout
    assert "default 1000" in result.stdout


def test_accept_backoff_doubles_up_to_its_ceiling_and_resets_on_success() -> None:
    backoff = AcceptBackoff(first=0.01, longest=1.0, clock=FakeClock())
    exhausted = OSError(errno.EMFILE, "Too many open files")
    pauses = [backoff.failed(exhausted) for _ in range(10)]
    assert pauses[:4] == [0.01, 0.02, 0.04, 0.08]
    assert pauses[-1] == 1.0
    assert max(pauses) == 1.0
    assert backoff.failures == 10
    backoff.succeeded()
    assert (backoff.delay, backoff.failures) == (0.0, 0)
    assert backoff.failed(exhausted) == 0.01


def test_throttled_log_writes_one_line_per_interval_with_the_count_it_stands_for(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    log = ThrottledLog(logging.getLogger("boilermaker.emulator"), interval=5.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="boilermaker.emulator"):
        written = [log.warning("accept failed: %s", "EMFILE")]
        for _ in range(999):
            clock.now += 0.001
            written.append(log.warning("accept failed: %s", "EMFILE"))
        clock.now += 5.0
        written.append(log.warning("accept failed: %s", "EMFILE"))
    assert written.count(True) == 2
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "accept failed: EMFILE"
    assert lines[1].startswith("accept failed: EMFILE (999 more like this in the last ")


def test_sasl_frame_declared_beyond_the_limit_fails_without_buffering() -> None:
    handshake = SaslHandshake(lambda user, password: False)
    reply, rest = handshake.feed(SASL_HEADER + struct.pack(">IBBH", 0xFFFFFF00, 2, 1, 0))
    assert handshake.failed
    assert rest == b""
    assert reply.startswith(SASL_HEADER)  # the mechanisms, then the failed outcome
    just_too_big = SaslHandshake(lambda user, password: False)
    just_too_big.feed(SASL_HEADER + struct.pack(">IBBH", MAX_SASL_FRAME_SIZE + 1, 2, 1, 0))
    assert just_too_big.failed


def test_sasl_layer_skips_a_flood_of_empty_frames_then_authenticates() -> None:
    handshake = SaslHandshake(lambda user, password: False)
    handshake.feed(SASL_HEADER)
    # 32,000 heartbeats in one read: parsed in place, none of them an error.
    reply, rest = handshake.feed(EMPTY_FRAME * 32_000)
    assert (reply, rest) == (b"", b"")
    assert not handshake.done
    anonymous_init = b"\x00\x53\x41\xc0\x0c\x01\xa3\x09ANONYMOUS"
    frame = struct.pack(">IBBH", 8 + len(anonymous_init), 2, 1, 0) + anonymous_init
    reply, rest = handshake.feed(frame + b"AMQP\x00\x01\x00\x00")
    assert handshake.done
    assert not handshake.failed
    assert handshake.mechanism == "ANONYMOUS"
    assert rest == b"AMQP\x00\x01\x00\x00"
