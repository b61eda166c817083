"""The eligibility job reads the days' appointments a page at a time (engine/jobs/targets.py):
whatever the page size, the same checks in the same order; ties on the start time neither lost
nor repeated; a member booked on two pages asked once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from engine.jobs.targets import target_pages
from engine.store import SqlMessageStore
from engine.store.index import IndexedResource, upsert_resources
from tests.jobs.conftest import MONDAY, TIMEZONE, service


def _book(store: SqlMessageStore, like: dict[str, Any], url: str, **changes: Any) -> None:
    """Index an Appointment made from ``like`` (another one's participants) under ``url``."""
    body = {k: v for k, v in like.items() if k != "_full_url"} | changes
    start = datetime.fromisoformat(body["start"].replace("Z", "+00:00"))
    resource = IndexedResource(
        "Appointment", url, orjson.dumps(body), None, start.astimezone(UTC), body.get("status")
    )
    with store.db_engine.begin() as conn:
        upsert_resources(conn, [(10**9, resource)], datetime.now(UTC))


@pytest.fixture
def crowded(indexed: SqlMessageStore) -> SqlMessageStore:
    """The demo's three appointments on Monday, plus: two more at the first one's very start
    (ties), a cancelled one, and one for the first patient late in the day."""
    [first, *_] = sorted(
        (a for a in indexed.appointments_between(_day(0), _day(1))), key=lambda a: a["start"]
    )
    _book(indexed, first, "urn:test:Appointment/tie-1")
    _book(indexed, first, "urn:test:Appointment/tie-2")
    _book(indexed, first, "urn:test:Appointment/gone", status="cancelled")
    late = _day(0) + timedelta(hours=16)
    _book(indexed, first, "urn:test:Appointment/late", start=late.isoformat())
    return indexed


def _day(offset: int) -> datetime:
    from zoneinfo import ZoneInfo

    return datetime.combine(
        MONDAY + timedelta(days=offset), datetime.min.time(), ZoneInfo(TIMEZONE)
    )


def _checks(store: SqlMessageStore, page: int) -> list[list[tuple[str | None, str]]]:
    return [
        [(t.appointment_url, t.coverage["_full_url"]) for t in targets]
        for targets in target_pages(store, TIMEZONE, MONDAY, 1, page)
    ]


def test_every_page_size_gives_the_same_checks_in_the_same_order(
    crowded: SqlMessageStore,
) -> None:
    whole = [c for page in _checks(crowded, 1000) for c in page]
    booked = [url for url, _ in whole]
    assert len(whole) == 6 and len(set(booked)) == 6  # 3 demo + 2 ties + late; not the cancelled
    assert "urn:test:Appointment/gone" not in booked and booked[-1] == "urn:test:Appointment/late"
    assert {"urn:test:Appointment/tie-1", "urn:test:Appointment/tie-2"} <= set(booked[:3])
    for size in (1, 2, 3, 5):
        pages = _checks(crowded, size)
        assert [c for page in pages for c in page] == whole, size
        assert all(len(page) <= size for page in pages)  # one coverage each: a check each
    assert len(_checks(crowded, 2)) == 4  # 7 appointments: three full pages and the last one


def test_a_run_reads_a_page_at_a_time_and_asks_about_a_member_once(
    crowded: SqlMessageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = service(crowded)
    svc.page = 2
    limits: list[int] = []
    read = crowded.appointment_page

    def spy(*args: Any) -> Any:
        limits.append(args[-1])
        return read(*args)

    monkeypatch.setattr(crowded, "appointment_page", spy)
    outcomes = asyncio.run(svc.check_upcoming(start=MONDAY, days=1))
    asyncio.run(svc.close())
    assert limits == [2, 2, 2, 2]
    assert len(outcomes) == 6
    # the first patient's four appointments (the demo's, two ties, the late one: three pages)
    # share one check: one 270 asked, the other three given its answer
    first = outcomes[0].patient_url
    mine = [o for o in outcomes if o.patient_url == first]
    assert len(mine) == 4 and len({o.check_id for o in mine}) == 1
    assert [o.reused for o in mine].count(False) == 1
