"""The console's dashboard on the real app and store (SQLite and PostgreSQL): figures per route
and destination by window, the queue and its oldest, dead letters, breakers, last errors, the
messages received, the SVG sparkline, the next business day's eligibility, alerts, and the
fragment the page refreshes itself with, and the nodes: who leads, heartbeats, configuration
generations."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from engine.api.auth import Role
from engine.console import days
from engine.console.days import next_business_day
from engine.jobs.leader import Leadership
from engine.store import Incoming, SqlMessageStore
from engine.store.tables import config_generation, deliveries, eligibility_checks, nodes
from tests.console.test_messages_page_support import ZONE, cells, client_for, dead_message, text_of


def _by_destination(html: str) -> dict[str, list[str]]:
    return {row[1]: row for row in cells(html, "routes-figures")}


@pytest.mark.parametrize(
    "now", [datetime(2026, 11, 27, 17, tzinfo=UTC), datetime(2026, 11, 29, 17, tzinfo=UTC)]
)
def test_on_a_friday_or_a_sunday_the_eligibility_shown_is_mondays(
    store: SqlMessageStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, now: datetime
) -> None:
    """The day the eligibility job checks first (and the worklist opens on), not the weekend
    day after today, which has no appointment."""
    monkeypatch.setattr(days, "_now", lambda: now)
    _checks(store, date(2026, 11, 28), ("inactive",))  # a Saturday: nobody comes
    _checks(store, date(2026, 11, 30), ("eligible", "needs_action"))
    page = text_of(client_for(store, tmp_path, Role.VIEWER).get("/console/").text)
    assert "Eligibility for 2026-11-30" in page
    assert "eligible: 1" in page and "needs action: 1" in page and "not active" not in page


def test_figures_per_route_and_destination(store: SqlMessageStore, tmp_path: Path) -> None:
    dead_message(store, 1)  # fhir dead, folder delivered
    dead_message(store, 2, ok=("fhir", "folder"))
    queued = dead_message(store, 3, destinations=("epic",), ok=())
    # epic's: back to the queue, made two hours ago (its oldest waiting)
    with store.db_engine.begin() as conn:
        conn.execute(
            update(deliveries)
            .where(deliveries.c.message_id == queued)
            .values(state="pending", created_at=datetime.now(UTC) - timedelta(hours=2))
        )
    live = store.register_node("worker")
    store.record_breaker("epic", live, is_open=True, failures=7, last_error="connect refused")
    client = client_for(store, tmp_path, Role.VIEWER)
    answer = client.get("/console/")
    assert answer.status_code == 200, answer.text
    rows = _by_destination(answer.text)
    # route, destination, hour made/delivered/errors, day made/delivered/errors, queued, oldest,
    # dead letters, breaker, last error
    assert rows["fhir"][:9] == ["adt", "fhir", "2", "1", "1", "2", "1", "1", "0"]
    assert rows["fhir"][10] == "1" and rows["fhir"][12] == "HTTP 422 bad bundle"
    assert rows["folder"][2:8] == ["2", "2", "0", "2", "2", "0"]
    assert rows["epic"][2:5] == ["0", "0", "0"]  # made two hours ago: the day only
    assert rows["epic"][5] == "1" and rows["epic"][8] == "1"
    assert rows["epic"][9].startswith("2 h")
    assert rows["epic"][11] == "open after 7 failures"
    assert cells(answer.text, "received")[0][:1] == ["3"]
    assert 'data-refresh="/console/dashboard/live?span=day"' in answer.text
    assert "<script>" not in answer.text.replace('<script src="/console/static/console.js"', "")


def test_sparkline_by_hour_and_by_minute(store: SqlMessageStore, tmp_path: Path) -> None:
    store.save_batch([Incoming(raw=b"MSH|", channel="mllp") for _ in range(4)])
    client = client_for(store, tmp_path, Role.INTEGRATION)
    day = client.get("/console/").text
    svg = re.search(r'<svg class="spark".*?</svg>', day, re.S)
    assert svg is not None
    assert len(re.findall(r"<circle ", svg.group(0))) == 24
    assert 'aria-label="4 messages, at most 4 in one bucket"' in svg.group(0)
    hour = client.get("/console/?span=hour").text
    svg = re.search(r'<svg class="spark".*?</svg>', hour, re.S)
    assert svg is not None and len(re.findall(r"<circle ", svg.group(0))) == 60
    assert client.get("/console/?span=week").status_code == 422


def _checks(store: SqlMessageStore, day: date, statuses: tuple[str, ...]) -> None:
    with store.db_engine.begin() as conn:
        for n, status in enumerate(statuses):
            conn.execute(
                eligibility_checks.insert().values(
                    appointment_url=f"Appointment/{day.isoformat()}-{n}",
                    patient_url="Patient/1",
                    payer_id="P",
                    service_date=day,
                    checked_at=datetime.now(UTC),
                    status=status,
                    attempts=1,
                )
            )


def test_the_next_business_days_eligibility_and_the_live_fragment(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    tomorrow = next_business_day(ZONE)
    _checks(store, tomorrow, ("eligible", "eligible", "inactive"))
    client = client_for(store, tmp_path, Role.VIEWER)
    page = text_of(client.get("/console/").text)
    assert f"Eligibility for {tomorrow.isoformat()}" in page
    assert "eligible: 2" in page and "not active: 1" in page
    live = client.get("/console/dashboard/live?span=hour")
    assert live.status_code == 200 and live.headers["cache-control"] == "no-store"
    assert "<html" not in live.text and "<nav" not in live.text  # the figures alone
    assert "eligible: 2" in text_of(live.text)
    assert 'class="routes-figures"' in live.text


def test_the_dashboard_needs_a_viewer_or_integration_role(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    """Others are refused (a JSON client), or sent to the first page of their menu (a browser:
    where a login lands)."""
    front_desk = client_for(store, tmp_path, Role.FRONT_DESK)
    json = {"Accept": "application/json"}
    assert front_desk.get("/console/", headers=json).status_code == 403
    landing = front_desk.get("/console/", follow_redirects=False)
    assert landing.status_code == 303 and landing.headers["location"] == "/console/documents"
    assert client_for(store, tmp_path, Role.ADMIN).get("/console/").status_code == 200


def test_figures_are_read_once_every_few_seconds(
    store: SqlMessageStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.console import pages_dashboard

    client = client_for(store, tmp_path, Role.VIEWER)
    assert cells(client.get("/console/").text, "received")[0][0] == "0"
    store.save_batch([Incoming(raw=b"MSH|", channel="mllp")])
    assert cells(client.get("/console/").text, "received")[0][0] == "0"  # read 0 s ago
    monkeypatch.setattr(pages_dashboard, "CACHE_S", 0.0)
    monkeypatch.setattr(pages_dashboard, "READ_SHARE", 0.0)
    page = client.get("/console/").text
    # the queue and the rest are read again, the traffic's counts only once a minute
    assert cells(page, "received")[0][0] == "0"
    assert "the hour's and the day's counts" in page
    monkeypatch.setattr(pages_dashboard, "TRAFFIC_S", 0.0)
    assert cells(client.get("/console/").text, "received")[0][0] == "1"


def test_a_slow_read_is_made_less_often(monkeypatch: pytest.MonkeyPatch) -> None:
    """A part that took T s to read is not read again for READ_SHARE * T s, even when its own
    period has passed (a queue grown to a hundred thousand deliveries costs ~1 % at most)."""
    from types import SimpleNamespace

    from engine.console import pages_dashboard

    request: Any = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace()))
    reads: list[int] = []

    def slow_read() -> int:
        time.sleep(0.02)
        reads.append(1)
        return len(reads)

    assert pages_dashboard._cached(request, "queue", 0.0, slow_read) == 1
    # its period (0 s) is over, but 100 x 0.02 s is not
    assert pages_dashboard._cached(request, "queue", 0.0, slow_read) == 1
    monkeypatch.setattr(pages_dashboard, "READ_SHARE", 0.0)
    assert pages_dashboard._cached(request, "queue", 0.0, slow_read) == 2


def _nodes(html: str) -> dict[str, list[str]]:
    return {row[0]: row for row in cells(html, "nodes")}


def _two_generations_later(store: SqlMessageStore) -> tuple[str, str]:
    """Two worker nodes (one dead for 3 minutes) and generation 2, published a minute ago: taken
    by a receiver, refused by the live worker's own reloader (an ``engine worker``: same
    process), not answered by a receiver that stopped at generation 1. (live, dead)"""
    live, dead = store.register_node("worker"), store.register_node("worker")
    store.publish_config("d1", "hostR:10:aa")
    assert store.publish_config("d2", "hostR:10:aa") == 2
    store.record_config("hostR:10:aa", 2, "d2", "applied")
    store.record_config(f"{live.rsplit(':', 1)[0]}:bb", 2, "d2", "refused", "files differ")
    store.record_config("hostS:11:cc", 1, "d1", "applied")
    ago = datetime.now(UTC) - timedelta(minutes=3)
    with store.db_engine.begin() as conn:
        conn.execute(update(nodes).where(nodes.c.id == dead).values(heartbeat_at=ago))
        conn.execute(update(config_generation).values(at=ago + timedelta(minutes=2)))
    return live, dead


def test_nodes_the_leader_and_each_nodes_configuration(
    store: SqlMessageStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.console import pages_dashboard

    monkeypatch.setattr(pages_dashboard, "CACHE_S", 0.0)
    monkeypatch.setattr(pages_dashboard, "READ_SHARE", 0.0)
    client = client_for(store, tmp_path, Role.VIEWER)
    empty = text_of(client.get("/console/").text)
    assert "No node leads now" in empty and "no reload published yet" in empty
    assert "No worker node is running" in empty
    live, dead = _two_generations_later(store)
    pages: list[str] = []
    stop = asyncio.Event()

    async def lead(term: asyncio.Event) -> None:  # while the live node leads: the page
        pages.append((await asyncio.to_thread(client.get, "/console/dashboard/live")).text)
        stop.set()

    async def main() -> None:
        # on PostgreSQL the real election: the lock's session carries the node's id
        leadership = Leadership(store.db_engine, live, poll_s=0.1)
        await asyncio.wait_for(leadership.run(stop, lead), 30)

    if store.db_engine.dialect.name == "postgresql":  # no node campaigns: none leads
        assert "No node leads now" in text_of(client.get("/console/").text)
    asyncio.run(main())
    [page] = pages
    rows = _nodes(page)
    assert list(rows) == [live, dead, "hostR:10:aa", "hostS:11:cc"]
    assert rows[live][1:3] == ["worker", rows[live][2]] and rows[live][5] == "leader"
    assert rows[live][4].endswith(" s ago") and "dead" not in rows[live][4]
    assert rows[live][6] == "behind: refused generation 2: files differ"
    assert rows[dead][4].endswith("ago: dead") and rows[dead][5] == "" and rows[dead][6] == ""
    assert rows["hostR:10:aa"][1:3] == ["receiver", "hostR"]
    assert rows["hostR:10:aa"][6] == "generation 2"
    assert rows["hostS:11:cc"][6].startswith("generation 1: behind, no answer to 2")
    text = text_of(page)
    assert f"runs the scheduled jobs: eligibility, pulls, retention, alerts): {live}" in text
    assert "Configuration generation 2" in text and "published by hostR:10:aa at" in text
    assert "2 nodes behind" in text


def test_a_generation_just_published_is_being_taken_not_behind(store: SqlMessageStore) -> None:
    store.publish_config("d1", "hostR:10:aa")
    store.record_config("hostR:10:aa", 1, "d1", "applied")
    store.publish_config("d2", "hostS:11:bb")
    store.record_config("hostS:11:bb", 2, "d2", "applied")
    state = store.cluster_state()
    assert [(n.id, n.role, n.config_state) for n in state.nodes] == [
        ("hostR:10:aa", "receiver", "taking"),
        ("hostS:11:bb", "receiver", "current"),
    ]
    assert state.same_generation and state.generation == 2 and state.leader is None
