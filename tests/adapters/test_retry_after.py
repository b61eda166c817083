"""Retry-After (RFC 9110 section 10.2.3) as the adapters read it: believed, but never past an hour.

A peer that answers ``Retry-After: 1000000000000`` or a date in year 9999 once parked a delivery
for decades (or overflowed the dispatcher's retry time); every adapter reads the header through
:func:`engine.adapters.oauth2.retry_after` (athena, Epic/FHIR REST, the FHIR and athena pulls, the
x12-http payer), so the cap there holds for all of them.
"""

from __future__ import annotations

import time
from email.utils import formatdate
from pathlib import Path

import httpx
import pytest

from engine.adapters.oauth2 import retry_after
from engine.sim.athena import StubAthenaServer
from tests.adapters.test_athena import athena, deliver_all, destination, home, payload, server

__all__ = ["athena", "home", "server"]  # the fixtures, for pytest

HOUR = 3600.0


def answer(value: str) -> httpx.Response:
    """A 429 with this Retry-After, as bytes on the wire (UTF-8 when not ASCII)."""
    return httpx.Response(429, headers=[(b"Retry-After", value.encode())])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        ("0", 0.0),
        ("3600", 3600.0),
        ("3601", HOUR),
        ("1000000000000", HOUR),
        ("9" * 400, HOUR),  # float() of it is inf
        ("Fri, 31 Dec 9999 23:59:59 GMT", HOUR),
        ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),  # already past: no wait
        ("", None),
        ("soon", None),
        ("-5", None),
        ("1.5", None),  # delay-seconds is 1*DIGIT
        ("\u00b2", None),  # a digit to str.isdigit, no number to float()
        ("\u0661\u0662", None),  # Arabic-Indic digits: not ASCII DIGIT
    ],
)
def test_delay_seconds_and_dates_are_read_and_capped(value: str, expected: float | None) -> None:
    assert retry_after(answer(value)) == expected


def test_a_date_within_the_hour_is_seconds_from_now() -> None:
    wait = retry_after(answer(formatdate(time.time() + 600, usegmt=True)))
    assert wait is not None and 595 <= wait <= 600


def test_an_athena_429_with_an_absurd_retry_after_waits_an_hour(
    athena: StubAthenaServer, home: Path
) -> None:
    athena.state.fail_next(429, retry_after=10**12)
    (result,) = deliver_all(destination(athena, home), payload(1))
    assert not result.ok and result.retryable
    assert result.retry_after_s == HOUR
