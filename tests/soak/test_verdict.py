"""The soak's verdict (soak/verdict.py) on made-up samples: a flat run passes, a leak, a creeping
ACK p99, a growing backlog and a refused message each fail their own criterion."""

from __future__ import annotations

from typing import Any

from soak.load import APPOINTMENT_EVERY, message
from soak.verdict import judge, slope_per_hour, warmup_s


def _samples(n: int = 30, **grow: float) -> list[dict[str, Any]]:
    """n samples 10 s apart; each column in ``grow`` rises by that much per sample."""
    out = []
    for i in range(n):
        s: dict[str, Any] = {
            "t_s": 10.0 * (i + 1),
            "receiver_rss_mb": 130.0,
            "worker_rss_mb": 120.0,
            "receiver_fds": 33,
            "worker_fds": 40,
            "db_connections": 6,
            "wal_mb": 40.0,
            "backlog": 40,
            "acks": 2000,
            "ack_p99_ms": 5.0,
        }
        for key, step in grow.items():
            s[key] = s[key] + step * i
        out.append(s)
    return out


def _verdict(samples: list[dict[str, Any]], **kw: int) -> dict[str, bool]:
    criteria = judge(
        samples,
        warmup=50.0,
        until=300.0,
        rate=200.0,
        judged_ack_ms=[1.0] * 100,
        refused_acks=kw.get("acks", 0),
        refused_docs=kw.get("docs", 0),
    )
    return {c.name: c.ok for c in criteria}


def test_a_flat_run_passes_every_criterion() -> None:
    verdict = _verdict(_samples())
    assert verdict and all(verdict.values()), verdict


def test_a_memory_leak_fails_only_that_process() -> None:
    verdict = _verdict(_samples(worker_rss_mb=1.0))  # +25 MB over 25 judged samples: +20 %
    assert not verdict["worker RSS (MB) flat"]
    assert verdict["receiver RSS (MB) flat"]


def test_descriptors_get_two_of_slack_but_a_leak_fails() -> None:
    flapping = _samples()
    flapping[20]["receiver_fds"] = 35  # +2 over 33: within the allowance
    assert _verdict(flapping)["receiver open fds flat"]
    for i in (12, 19, 26):  # a file or connection open at the sampling instant, now and then
        flapping[i]["worker_fds"] = 45
    assert _verdict(flapping)["worker open fds flat"]
    assert not _verdict(_samples(receiver_fds=1))["receiver open fds flat"]
    assert not _verdict(_samples(db_connections=1))["database connections flat"]
    assert not _verdict(_samples(wal_mb=40))["SQLite WAL (MB) flat"]


def test_descriptors_a_batch_holds_for_a_moment_are_not_growth_but_a_leak_is() -> None:
    """The file drop's batch holds a descriptor a file until it names them: at 1,000 msg/s half
    the samples of a minute caught one (the soak of 5 December 10:20: +20 to +35). Descriptors
    are judged on each minute's floor, which a leak raises and a batch in flight does not."""
    busy = _samples()
    for i in range(11, 30, 2):  # after a quiet first minute, every other sample catches a batch
        busy[i]["worker_fds"] = 70
    assert _verdict(busy)["worker open fds flat"]
    leaking = _samples(worker_fds=0.5)  # one descriptor every 20 s, never closed
    for i in range(11, 30, 2):
        leaking[i]["worker_fds"] += 30
    assert not _verdict(leaking)["worker open fds flat"]


def test_a_creeping_p99_and_a_growing_backlog_fail() -> None:
    assert not _verdict(_samples(ack_p99_ms=0.5))["ACK p99 steady"]
    assert not _verdict(_samples(backlog=100))["backlog bounded"]
    spiky = _samples()
    spiky[10]["ack_p99_ms"] = 80.0  # one slow window in the middle is not a trend
    assert _verdict(spiky)["ACK p99 steady"]


def test_refusals_fail_and_too_short_a_run_cannot_pass() -> None:
    assert not _verdict(_samples(), acks=1)["nothing refused"]
    assert not _verdict(_samples(), docs=1)["nothing refused"]
    assert _verdict(_samples(n=6)) == {"enough samples": False}


def test_warmup_is_a_tenth_but_at_least_two_minutes() -> None:
    assert warmup_s(3600) == 360
    assert warmup_s(180) == 120


def test_slope_per_hour() -> None:
    assert abs(slope_per_hour([0, 3600], [100, 110]) - 10) < 1e-9
    assert slope_per_hour([5], [1]) == 0.0


def test_the_load_sends_appointments_with_insurance_for_eligibility() -> None:
    from datetime import date

    day = date(2026, 12, 4)
    kinds = [message(slot, slot % 8, slot // 8, day)[0] for slot in range(APPOINTMENT_EVERY)]
    assert kinds.count("ADT^A04") == 1 and kinds.count("SIU^S12") == 1
    _, a04 = message(0, 0, 0, day)
    _, siu = message(APPOINTMENT_EVERY // 2, 0, 0, day)
    assert b"\rIN1|1|" in a04 and b"DEMO100001" in a04
    assert b"SA0^^^CLINIC^MR" in a04 and b"SA0^^^CLINIC^MR" in siu
    assert b"|^^30^20261204090000^20261204093000|" in siu


def test_the_sample_after_the_load_ends_is_not_judged() -> None:
    samples = _samples()
    samples.append({**samples[-1], "t_s": 310.0, "backlog": 10**6, "receiver_fds": 99})
    assert all(_verdict(samples).values())
