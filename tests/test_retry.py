"""The one retry policy and circuit breaker (engine/retry.py): the numbers the dispatcher, the
processor's loop and the eligibility job live by."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from engine.retry import CircuitBreaker, RetryPolicy, backoff_s


def test_the_delay_doubles_from_the_base_up_to_the_cap() -> None:
    policy = RetryPolicy(max_attempts=10, base_delay_s=2.0, max_delay_s=30.0)
    assert [policy.delay_for(n) for n in range(0, 7)] == [0.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert policy.delay_for(10_000) == 30.0  # no overflow however many attempts


def test_the_policy_gives_up_after_its_last_attempt() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert [policy.gives_up_after(n) for n in (1, 2, 3, 4)] == [False, False, True, True]


def test_a_policy_is_checked_like_the_files_it_comes_from() -> None:
    with pytest.raises(ValidationError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValidationError):
        RetryPolicy.model_validate({"max_attempts": 3, "tries": 2})  # an unknown key


def test_a_polling_loop_backs_off_from_half_a_second_to_thirty() -> None:
    assert [backoff_s(n) for n in range(0, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_the_breaker_opens_after_the_threshold_and_doubles_its_pause() -> None:
    breaker = CircuitBreaker(threshold=3, base_s=1.0, cap_s=4.0)
    for _ in range(2):
        breaker.record("lab", ok=False, retryable=True, now=0.0)
    assert not breaker.is_open("lab", 0.0)
    breaker.record("lab", ok=False, retryable=True, now=0.0)  # the third in a row
    assert breaker.is_open("lab", 0.5) and not breaker.is_open("lab", 1.0)
    assert breaker.open_keys(0.5) == ["lab"]
    breaker.record("lab", ok=False, retryable=True, now=10.0)
    assert breaker.is_open("lab", 11.9) and not breaker.is_open("lab", 12.0)  # 2 s
    for _ in range(5):
        breaker.record("lab", ok=False, retryable=True, now=20.0)
    assert breaker.is_open("lab", 23.9) and not breaker.is_open("lab", 24.0)  # capped at 4 s
    assert breaker.failures("lab") == 9


def test_a_success_or_an_answer_closes_the_breaker_for_that_key_only() -> None:
    breaker = CircuitBreaker(threshold=1, base_s=5.0)
    breaker.record("lab", ok=False, retryable=True, now=0.0)
    breaker.record("pharmacy", ok=False, retryable=True, now=0.0)
    breaker.record("lab", ok=False, retryable=False, now=1.0)  # the peer answered: it is up
    breaker.record("pharmacy", ok=True, retryable=False, now=1.0)
    assert breaker.open_keys(1.0) == []
    assert breaker.failures("lab") == 0
    breaker.record("lab", ok=False, retryable=True, now=2.0)
    assert breaker.open_keys(2.0) == ["lab"]
