"""The dispatcher keeps each attempt (issue 13): a destination that fails twice then takes the
message shows three attempts with their errors and times; one dead-lettered after its retries
shows each; a first-time success writes no attempt row. In process, on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import func, select

from engine.adapters.memory import MemoryDestination
from engine.mappings import Mappings
from engine.routes.loader import RouteSet
from engine.store import SqlMessageStore
from engine.store.tables import delivery_attempts
from tests.flow import test_queue
from tests.flow.test_queue import msg, run_all

# the queue tests' routes and mappings (their fixtures, shared rather than copied)
routes = test_queue.routes
mappings = test_queue.mappings


def test_two_failures_then_a_success_are_three_attempts(
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings
) -> None:
    fhir, raw = MemoryDestination("fhir"), MemoryDestination("raw")
    fhir.fail_next(1, retryable=True, detail="fhir: transaction -> 503")
    fhir.fail_next(1, retryable=True, detail="fhir: timeout (ReadTimeout)")
    raw.fail_next(5, retryable=True, detail="file: disk full (OSError)")  # 2 allowed: dead
    run_all(store, routes, mappings, {"fhir": fhir, "raw": raw}, [msg(40)])
    [rec] = store.list()
    views = {d.destination: d for d in store.get(rec.id).deliveries}  # type: ignore[union-attr]

    fhir_view = views["fhir"]
    assert (fhir_view.state, fhir_view.attempts) == ("delivered", 3)
    history = fhir_view.history
    assert [(a.attempt, a.outcome) for a in history] == [
        (1, "retry"),
        (2, "retry"),
        (3, "delivered"),
    ]
    assert [(a.status, a.error_class, a.error) for a in history[:2]] == [
        (503, None, "fhir: transaction -> 503"),
        (None, "ReadTimeout", "fhir: timeout (ReadTimeout)"),
    ]
    assert all(a.duration_ms is not None and a.duration_ms >= 0 for a in history)
    assert history[0].at <= history[1].at <= history[2].at

    raw_view = views["raw"]
    assert [(a.attempt, a.outcome, a.error_class) for a in raw_view.history] == [
        (1, "retry", "OSError"),
        (2, "dead", "OSError"),
    ]


def test_a_first_time_success_writes_no_attempt(
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings
) -> None:
    dests = {"fhir": MemoryDestination("fhir"), "raw": MemoryDestination("raw")}
    run_all(store, routes, mappings, dests, [msg(41), msg(42, "MRN2")])
    with store.db_engine.connect() as conn:
        rows = conn.execute(select(func.count()).select_from(delivery_attempts)).scalar_one()
    assert rows == 0
    for rec in store.list():
        for d in store.get(rec.id).deliveries:  # type: ignore[union-attr]
            assert [(a.attempt, a.outcome) for a in d.history] == [(1, "delivered")]
