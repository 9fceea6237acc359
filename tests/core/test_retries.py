"""Retry policies: delay arithmetic for every mode, caps, jitter, validation, exceptions."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from boilermaker import retries
from boilermaker.retries import (
    NoRetry,
    RetryAttempts,
    RetryException,
    RetryExceptionDefault,
    RetryExceptionDefaultExponential,
    RetryExceptionDefaultLinear,
    RetryMode,
    RetryPolicy,
)
from boilermaker.task import Task


def test_fixed_delay_is_constant_and_capped() -> None:
    policy = RetryPolicy(delay=30, delay_max=3600, retry_mode=RetryMode.Fixed)
    assert [policy.get_delay_interval(n) for n in range(5)] == [30] * 5
    capped = RetryPolicy(delay=300, delay_max=60, retry_mode=RetryMode.Fixed)
    assert [capped.get_delay_interval(n) for n in range(3)] == [60, 60, 60]


def test_linear_delay_grows_by_delay_and_is_capped() -> None:
    policy = RetryPolicy(delay=10, delay_max=45, retry_mode=RetryMode.Linear)
    assert [policy.get_delay_interval(n) for n in range(6)] == [10, 20, 30, 40, 45, 45]


def test_exponential_delay_ceiling_doubles_then_caps() -> None:
    policy = RetryPolicy(delay=10, delay_max=100, retry_mode=RetryMode.Exponential)
    ceilings = [10, 20, 40, 80, 100, 100]
    for n, ceiling in enumerate(ceilings):
        samples = {policy.get_delay_interval(n) for _ in range(500)}
        assert min(samples) >= ceiling // 2
        assert max(samples) <= ceiling


@pytest.mark.parametrize(("delay", "delay_max"), [(1, 3600), (7, 50), (30, 600), (3, 3)])
def test_exponential_jitter_stays_within_half_to_full_ceiling(delay: int, delay_max: int) -> None:
    policy = RetryPolicy(delay=delay, delay_max=delay_max, retry_mode=RetryMode.Exponential)
    for n in range(12):
        ceiling = min(2**n * delay, delay_max)
        samples = [policy.get_delay_interval(n) for _ in range(2000)]
        assert all(ceiling // 2 <= s <= ceiling for s in samples), (n, ceiling, set(samples))
        if ceiling >= 4:
            # Jitter really varies: both ends of the range show up over many samples.
            assert len(set(samples)) > 1
            assert min(samples) < ceiling * 3 / 4 < max(samples)


def test_exponential_handles_huge_retry_numbers_without_overflow() -> None:
    policy = RetryPolicy(delay=5, delay_max=3600, retry_mode=RetryMode.Exponential)
    for n in (63, 100, 10_000):
        assert 1800 <= policy.get_delay_interval(n) <= 3600


def test_zero_delay_gives_zero_in_every_mode() -> None:
    for mode in RetryMode:
        policy = RetryPolicy(delay=0, retry_mode=mode)
        assert {policy.get_delay_interval(n) for n in range(10)} == {0}


def test_negative_retry_numbers_count_as_the_first_retry() -> None:
    policy = RetryPolicy(delay=10, delay_max=100, retry_mode=RetryMode.Linear)
    assert policy.get_delay_interval(-1) == policy.get_delay_interval(0) == 10


@pytest.mark.parametrize(
    "fields",
    [
        {"delay": -1},
        {"delay_max": -1},
        {"max_tries": -1},
        {"max_tries": 101},
        {"retry_mode": 7},
        {"unknown": 1},
    ],
)
def test_validation_rejects_bad_settings(fields: dict[str, int]) -> None:
    with pytest.raises(ValidationError):
        RetryPolicy(**fields)  # type: ignore[arg-type]


def test_validation_accepts_the_limits() -> None:
    assert RetryPolicy(max_tries=100).max_tries == retries.MAX_TRIES_LIMIT
    assert RetryPolicy(max_tries=0, delay=0, delay_max=0).max_tries == 0


def test_policies_are_immutable() -> None:
    policy = RetryPolicy()
    with pytest.raises(ValidationError):
        policy.max_tries = 3


def test_constructor_defaults() -> None:
    policy = RetryPolicy()
    assert (policy.max_tries, policy.delay, policy.delay_max, policy.retry_mode) == (
        5,
        0,
        3600,
        RetryMode.Fixed,
    )


def test_default_is_five_tries_two_minutes_apart() -> None:
    policy = RetryPolicy.default()
    assert policy.max_tries == 5
    assert policy.retry_mode is RetryMode.Fixed
    assert [policy.get_delay_interval(n) for n in range(4)] == [120] * 4


def test_no_retry_and_noretry_allow_a_single_try() -> None:
    for policy in (RetryPolicy.no_retry(), NoRetry()):
        assert isinstance(policy, RetryPolicy)
        assert policy.max_tries == 1
        assert policy.can_retry(0)
        assert not policy.can_retry(1)
    assert NoRetry() == RetryPolicy.no_retry()


def test_can_retry_counts_tries_not_retries() -> None:
    policy = RetryPolicy(max_tries=3)
    assert [policy.can_retry(n) for n in range(5)] == [True, True, True, False, False]


def test_policy_round_trips_through_json() -> None:
    policy = RetryPolicy(max_tries=7, delay=3, delay_max=90, retry_mode=RetryMode.Linear)
    assert RetryPolicy.model_validate_json(policy.model_dump_json()) == policy


def test_task_next_delay_follows_its_attempts() -> None:
    policy = RetryPolicy(max_tries=5, delay=10, delay_max=1000, retry_mode=RetryMode.Linear)
    task = Task(function_name="f", policy=policy)
    assert task.can_retry
    task.attempts.inc()  # one run so far: get_delay_interval(1), as 1.4.1
    assert task.get_next_delay() == 20
    task.attempts.inc()
    assert task.get_next_delay() == 30
    for _ in range(3):
        task.attempts.inc()
    assert task.attempts.attempts == 5
    assert not task.can_retry


def test_retry_attempts_inc_counts_and_stamps() -> None:
    attempts = RetryAttempts()
    before = attempts.last_retry
    assert attempts.inc() is attempts
    assert attempts.attempts == 1
    assert attempts.last_retry >= before
    with pytest.raises(ValidationError):
        RetryAttempts(attempts=-1)


# -- the RetryException family --------------------------------------------------------------


def test_retry_exception_carries_an_optional_policy() -> None:
    plain = RetryException("try later")
    assert plain.msg == "try later"
    assert str(plain) == "try later"
    assert plain.policy is None
    policy = RetryPolicy(max_tries=2, delay=1)
    assert RetryException("again", policy=policy).policy is policy


def test_retry_exception_default_uses_the_default_policy() -> None:
    exc = RetryExceptionDefault("busy")
    assert isinstance(exc, RetryException)
    assert exc.policy == RetryPolicy.default()
    assert exc.msg == "busy"


def test_retry_exception_default_refuses_settings_it_would_ignore() -> None:
    with pytest.raises(TypeError):
        RetryExceptionDefault("busy", max_tries=9)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("cls", "mode"),
    [
        (RetryExceptionDefaultExponential, RetryMode.Exponential),
        (RetryExceptionDefaultLinear, RetryMode.Linear),
    ],
)
def test_backoff_retry_exceptions_carry_their_policy(
    cls: type[RetryException], mode: RetryMode
) -> None:
    exc = cls("rate limited")
    assert isinstance(exc, RetryException)
    assert exc.policy == RetryPolicy(max_tries=5, delay=30, delay_max=600, retry_mode=mode)
    tuned = cls("rate limited", max_tries=9, delay=2)
    assert tuned.policy == RetryPolicy(max_tries=9, delay=2, delay_max=600, retry_mode=mode)
    with pytest.raises(ValidationError):
        cls("bad", max_tries=1000)
    with pytest.raises(ValidationError):
        cls("bad", not_a_field=1)


def test_retry_exceptions_are_exported_at_top_level() -> None:
    import boilermaker

    for name in (
        "NoRetry",
        "RetryException",
        "RetryExceptionDefault",
        "RetryExceptionDefaultExponential",
        "RetryExceptionDefaultLinear",
        "RetryPolicy",
    ):
        assert getattr(boilermaker, name) is getattr(retries, name)
