"""A destination's Retry-After, however absurd, never costs the dispatcher a batch of outcomes.

The dispatcher records every outcome that finished meanwhile in one transaction: a wait too long
for a ``timedelta`` (``Retry-After: 1000000000000``, an HTTP date in year 9999) once raised there,
losing the whole batch (a delivered message with it, delivered again after its lease). A peer is
believed about when to come back, but only up to an hour (engine/flow/deliver.py).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from engine.adapters.destination import DeliveryResult, Payload
from engine.adapters.memory import MemoryDestination
from engine.adapters.registry import load_routes
from engine.mappings import Mappings, load_mappings
from engine.routes.loader import RouteSet
from engine.store import SqlMessageStore
from engine.store.tables import deliveries
from tests.flow.test_queue import ROUTES, msg, run_all


@pytest.fixture(scope="module")
def mappings() -> Mappings:
    return load_mappings()


def routes_file(tmp_path: Path, retry: str | None = None) -> RouteSet:
    """tests/flow/test_queue.py's routes, the fhir destination's retry policy ``retry``."""
    folder = tmp_path / "routes"
    folder.mkdir()
    text = ROUTES.format(tmp=tmp_path)
    if retry is not None:
        fhir_retry = "{max_attempts: 3, base_delay_s: 0, max_delay_s: 0}"
        assert text.count(fhir_retry) == 1
        text = text.replace(fhir_retry, retry)
    (folder / "test.yaml").write_text(text)
    return load_routes(defaults=folder)


def _states(store: SqlMessageStore, message_id: int) -> dict[str, tuple[str, int]]:
    view = store.get(message_id)
    assert view is not None
    return {d.destination: (d.state, d.attempts) for d in view.deliveries}


def _next_attempt(store: SqlMessageStore, message_id: int, destination: str) -> datetime:
    with store.db_engine.connect() as conn:
        at: datetime = conn.execute(
            sa.select(deliveries.c.next_attempt_at).where(
                deliveries.c.message_id == message_id, deliveries.c.destination == destination
            )
        ).scalar_one()
    return at if at.tzinfo else at.replace(tzinfo=UTC)


class _AbsurdWait(MemoryDestination):
    """Answers every attempt "retry after ``wait`` seconds"."""

    def __init__(self, name: str, wait: float) -> None:
        super().__init__(name)
        self.wait = wait

    async def deliver(self, payload: Payload) -> DeliveryResult:
        self.attempts.append(payload)
        return DeliveryResult.retry(f"{self.name}: 429", after_s=self.wait)


@pytest.mark.parametrize("wait", [1e12, math.inf])
def test_an_absurd_retry_after_is_capped_and_the_batch_is_kept(
    store: SqlMessageStore, tmp_path: Path, mappings: Mappings, wait: float
) -> None:
    routes = routes_file(tmp_path)
    fhir, raw = _AbsurdWait("fhir", wait), MemoryDestination("raw")
    before = datetime.now(UTC)
    run_all(store, routes, mappings, {"fhir": fhir, "raw": raw}, [msg(1)], settle=0.5)
    [rec] = store.list()
    states = _states(store, rec.id)
    # both outcomes recorded: the delivered one is not lost with the absurd one
    assert states == {"fhir": ("pending", 1), "raw": ("delivered", 1)}
    at = _next_attempt(store, rec.id, "fhir")
    assert before + timedelta(minutes=59) <= at <= datetime.now(UTC) + timedelta(hours=1)


def test_a_policy_delay_no_datetime_holds_waits_an_hour(
    store: SqlMessageStore, tmp_path: Path, mappings: Mappings
) -> None:
    routes = routes_file(
        tmp_path, "{max_attempts: 3, base_delay_s: 1.0e+300, max_delay_s: 1.0e+300}"
    )
    fhir, raw = MemoryDestination("fhir"), MemoryDestination("raw")
    fhir.fail_next(1, retryable=True, detail="503")
    before = datetime.now(UTC)
    run_all(store, routes, mappings, {"fhir": fhir, "raw": raw}, [msg(2)], settle=0.5)
    [rec] = store.list()
    states = _states(store, rec.id)
    assert states == {"fhir": ("pending", 1), "raw": ("delivered", 1)}
    at = _next_attempt(store, rec.id, "fhir")
    assert before + timedelta(minutes=59) <= at <= datetime.now(UTC) + timedelta(hours=1)
