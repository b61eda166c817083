"""``/api/audit`` on the real store (SQLite and PostgreSQL): admins read and verify the trail, the
reading is itself recorded, others are refused (and recorded); the API's searches of messages
and the eligibility worklist are recorded with the patient asked for."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select

from engine.jobs.eligibility import EligibilityService
from engine.settings import Settings
from engine.store import SqlMessageStore
from engine.store.tables import audit_log
from tests.api.conftest import TestClient, bearer
from tests.api.test_messages_store import _dead


@pytest.fixture
def messages(store: SqlMessageStore) -> SqlMessageStore:  # the API's port: the real store
    return store


def _trail(store: SqlMessageStore) -> list[tuple[str, str, str | None, str]]:
    with store.db_engine.connect() as conn:
        return [
            (r.action, r.actor, r.patient_key, r.outcome)
            for r in conn.execute(
                select(
                    audit_log.c.action,
                    audit_log.c.actor,
                    audit_log.c.patient_key,
                    audit_log.c.outcome,
                ).order_by(audit_log.c.seq)
            )
        ]


def test_a_message_search_is_recorded_with_the_mrn_asked_for(
    client: TestClient, store: SqlMessageStore, token: Callable[[str], str]
) -> None:
    viewer = bearer(token("viewer"))
    _dead(store, 1)
    assert client.get("/api/messages?mrn=CLINIC|MRN1&state=dead", headers=viewer).status_code == 200
    assert client.get("/api/messages", headers=viewer).status_code == 200
    _dead(store, 2)
    dead = client.get("/api/messages?state=dead", headers=viewer)
    assert [m["id"] for m in dead.json()] == [2, 1]
    assert client.get("/api/messages?since=2999-01-01", headers=viewer).status_code == 200
    # by MRN: the MRN asked for; otherwise once per patient of the messages shown (IHE BALP:
    # one AuditEvent per patient), at one time; none shown: once, without a patient
    assert _trail(store) == [
        ("search-messages", "test-viewer", "CLINIC|MRN1", "ok"),
        ("search-messages", "test-viewer", "CLINIC|MRN1", "ok"),
        ("search-messages", "test-viewer", "CLINIC|MRN2", "ok"),
        ("search-messages", "test-viewer", "CLINIC|MRN1", "ok"),
        ("search-messages", "test-viewer", None, "ok"),
    ]
    with store.db_engine.connect() as conn:
        rows = conn.execute(select(audit_log.c.at, audit_log.c.detail).order_by(audit_log.c.seq))
        details = [(r.at, r.detail) for r in rows]
    assert [d for _, d in details] == [
        "1 shown; state dead, one patient",
        "1 shown; no filter",
        "2 shown; state dead",
        "2 shown; state dead",
        "0 shown; since 2999-01-01T00:00:00-05:00",
    ]
    assert details[2][0] == details[3][0]  # one search, one time


def test_admins_read_the_trail_newest_first_and_the_reading_is_recorded(
    client: TestClient, store: SqlMessageStore, token: Callable[[str], str]
) -> None:
    viewer, admin = bearer(token("viewer")), bearer(token("admin"))
    _dead(store, 1)
    _dead(store, 2)
    client.get("/api/messages?mrn=MRN1", headers=viewer)
    client.get("/api/messages?mrn=OTHER|MRN2", headers=viewer)
    client.get("/api/messages/1/raw", headers=viewer)
    rows = client.get("/api/audit", headers=admin).json()
    assert [r["seq"] for r in rows] == [3, 2, 1]
    assert rows[0]["action"] == "view-payload" and rows[0]["patient_key"] == "CLINIC|MRN1"
    assert rows[0]["peer"] == "testclient:50000" and len(rows[0]["hash"]) == 64
    assert rows[0]["prev_hash"] == rows[1]["hash"]
    by_mrn = client.get("/api/audit?mrn=MRN1", headers=admin).json()
    assert [r["seq"] for r in by_mrn] == [3, 1]
    page = client.get("/api/audit?limit=2&action=search-messages", headers=admin).json()
    assert [r["seq"] for r in page] == [2, 1]
    rest = client.get("/api/audit?before=2&action=search-messages", headers=admin).json()
    assert [r["seq"] for r in rest] == [1]
    assert client.get("/api/audit?actor=test-viewer&since=2999-01-01", headers=admin).json() == []
    bad = client.get("/api/audit?action=peek", headers=admin)
    assert bad.status_code == 422 and "unknown action 'peek'" in bad.json()["detail"]
    views = [t for t in _trail(store) if t[0] == "view-audit"]
    assert len(views) == 5 and views[0] == ("view-audit", "test-admin", None, "ok")


@pytest.mark.parametrize("role", ["viewer", "integration", "front-desk"])
def test_only_admins_read_the_trail_and_a_refusal_is_recorded(
    client: TestClient, store: SqlMessageStore, token: Callable[[str], str], role: str
) -> None:
    for path in ("/api/audit", "/api/audit/verify"):
        answer = client.get(path, headers=bearer(token(role)))
        assert answer.status_code == 403 and "admin role" in answer.json()["detail"]
        assert client.get(path).status_code == 401
    assert _trail(store) == [("view-audit", f"test-{role}", None, "refused")] * 2


def test_verify_reports_intact_then_the_deleted_record(
    client: TestClient, store: SqlMessageStore, token: Callable[[str], str]
) -> None:
    admin = bearer(token("admin"))
    _dead(store, 1)
    for _ in range(3):
        client.get("/api/messages", headers=admin)
    done = client.get("/api/audit/verify", headers=admin).json()
    assert done["ok"] and done["count"] == 3 and done["head_seq"] == 3
    with store.db_engine.begin() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.seq == 2))
    broken = client.get("/api/audit/verify", headers=admin).json()
    assert not broken["ok"] and broken["problem_seq"] == 3
    assert "seq 2..2 missing" in broken["problem"] and "seq 3" in broken["summary"]


def test_on_a_port_without_the_trail_the_answer_says_so(
    settings: Settings, ingest: Any, health: Any, metrics: Any, auth: Any, token: Callable
) -> None:
    """On a messages port that is not the store (the fakes) a 503 names it: no server error."""
    from engine.api.app import create_app
    from tests.api.fakes import FakeMessages

    app = create_app(
        settings, ingest=ingest, messages=FakeMessages(), health=health, metrics=metrics, auth=auth
    )
    answer = TestClient(app).get("/api/audit", headers=bearer(token("admin")))
    assert answer.status_code == 503 and "audit trail is not available" in answer.json()["detail"]


def test_the_worklist_is_recorded(
    store: SqlMessageStore, tmp_path: Path, token: Callable[[str], str], make_app: Callable
) -> None:
    from engine.adapters.payer.config import load_payers

    app = make_app()
    app.state.eligibility = EligibilityService(store, load_payers(), Settings(var_dir=tmp_path))
    client = TestClient(app)
    answer = client.get("/api/eligibility?date=2026-11-30", headers=bearer(token("viewer")))
    assert answer.status_code == 200 and answer.json() == []
    assert _trail(store) == [("view-worklist", "test-viewer", None, "ok")]
    with store.db_engine.connect() as conn:
        assert conn.execute(select(audit_log.c.detail)).scalar_one() == "2026-11-30: 0 appointments"


def test_the_worklist_is_recorded_once_per_patient_listed(
    store: SqlMessageStore, tmp_path: Path, token: Callable[[str], str], make_app: Callable
) -> None:
    """IHE BALP: one AuditEvent per patient. The demo's three patients checked for Monday: the
    list is recorded for each (by MRN), as one view (actor, time, outcome, detail)."""
    import asyncio

    from tests.console.frontdesk_support import index_demo
    from tests.jobs.conftest import MONDAY

    service = index_demo(store, tmp_path)
    asyncio.run(service.check_upcoming(start=MONDAY, days=1))
    app = make_app()
    app.state.eligibility = service
    answer = TestClient(app).get(f"/api/eligibility?date={MONDAY}", headers=bearer(token("viewer")))
    assert [r["mrn"] for r in answer.json()] == ["DEMO1001", "DEMO1002", "DEMO1003"]
    assert _trail(store) == [
        ("view-worklist", "test-viewer", f"DEMO100{n}", "ok") for n in (1, 2, 3)
    ]
    with store.db_engine.connect() as conn:
        views = {(r.at, r.detail) for r in conn.execute(select(audit_log.c.at, audit_log.c.detail))}
    assert [detail for _, detail in views] == ["2026-11-30: 3 appointments"]
    assert store.verify_audit().ok


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("until=9999-12-31T23:59:00", "until"),
        ("since=0001-01-01T00:00:00%2B14:00", "since"),
        ("since=9999-12-31T23:59:00-14:00", "since"),
    ],
)
def test_dates_at_the_ends_of_the_calendar_answer_422(
    client: TestClient, token: Callable[[str], str], query: str, field: str
) -> None:
    """review13 L3: never a 500 (OverflowError); the field is named."""
    answer = client.get(f"/api/audit?{query}", headers=bearer(token("admin")))
    assert answer.status_code == 422
    assert answer.json()["detail"].startswith(f"{field}: ")


def test_a_search_by_mrn_is_recorded_with_that_patient(
    client: TestClient, store: SqlMessageStore, token: Callable[[str], str]
) -> None:
    """review13 L5: the view-audit record names the patient searched."""
    assert client.get("/api/audit?mrn=CLINIC|MRN9", headers=bearer(token("admin"))).json() == []
    assert _trail(store)[-1] == ("view-audit", "test-admin", "CLINIC|MRN9", "ok")


def test_a_search_past_its_time_answers_503(
    client: TestClient,
    store: SqlMessageStore,
    token: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from engine.store.audit import AuditSearchTimeout

    def slow(*_: Any, **__: Any) -> None:
        raise AuditSearchTimeout("the audit search took longer than 15 s and was stopped")

    monkeypatch.setattr(store, "audit_page", slow)
    answer = client.get("/api/audit?mrn=X", headers=bearer(token("admin")))
    assert answer.status_code == 503 and "took longer" in answer.json()["detail"]
