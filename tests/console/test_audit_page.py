"""/console/audit on the real app and store (SQLite and PostgreSQL), the console's user given by
the test: admins only (a refusal recorded), filters, keyset paging, each reading recorded, and
"verify chain" (CSRF) showing an intact chain and then the record someone changed."""

from __future__ import annotations

import html as html_text
import re
from pathlib import Path

import pytest
from fastapi import FastAPI
from sqlalchemy import select, update

from engine.api.app import create_app
from engine.api.auth import Role
from engine.api.auth_settings import AuthSettings
from engine.console.auth import ConsoleUser, current_console_user
from engine.metrics import EngineMetrics
from engine.settings import Settings
from engine.store import SqlMessageStore
from engine.store.tables import audit_log
from tests.api.conftest import TestClient
from tests.api.fakes import FakeHealth, FakeIngest

TOKEN = "csrf-of-the-audit-session"


def _app(store: SqlMessageStore, tmp_path: Path, *roles: Role, name: str = "ada") -> FastAPI:
    metrics = EngineMetrics()
    app = create_app(
        Settings(var_dir=tmp_path, timezone="America/New_York"),
        ingest=FakeIngest(metrics),
        messages=store,
        health=FakeHealth(),
        metrics=metrics,
        auth=AuthSettings(environment="development", dev_secret_file=tmp_path / "secret"),
    )
    who = ConsoleUser(name, frozenset(roles), "session-audit", TOKEN, "192.0.2.7:4000")
    app.dependency_overrides[current_console_user] = lambda: who
    return app


def _fill(store: SqlMessageStore, n: int) -> None:
    for i in range(n):
        store.record_audit(
            action="view-payload" if i % 2 else "search-messages",
            actor="bob" if i % 3 else "carol",
            source="api",
            message_id=None,
            outcome="ok",
            patient_key=f"CLINIC|MRN{i % 4}",
            detail=f"n{i}",
        )


def _seqs(page: str) -> list[int]:
    body = page.split('<table class="audit">', 1)[1].split("</table>", 1)[0]
    return [int(s) for s in re.findall(r"<tr>\s*<td>(\d+)</td>", body)]


def _text(page: str) -> str:
    return html_text.unescape(re.sub(r"<[^>]+>", " ", page))


def test_admins_see_the_trail_newest_first_with_filters(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    _fill(store, 8)
    client = TestClient(_app(store, tmp_path, Role.ADMIN))
    answer = client.get("/console/audit")
    assert answer.status_code == 200, answer.text
    assert _seqs(answer.text) == [8, 7, 6, 5, 4, 3, 2, 1]
    assert "Verify chain" in answer.text and f'value="{TOKEN}"' in answer.text
    assert "Head: seq 9" in _text(answer.text)  # the page's own view-audit is the head
    assert _seqs(client.get("/console/audit?actor=carol").text) == [7, 4, 1]
    assert _seqs(client.get("/console/audit?action=view-payload").text) == [8, 6, 4, 2]
    assert _seqs(client.get("/console/audit?mrn=MRN1").text) == [6, 2]
    assert _seqs(client.get("/console/audit?mrn=CLINIC%7CMRN3").text) == [8, 4]
    assert _seqs(client.get("/console/audit?since=2999-01-01").text) == []
    today = client.get("/console/audit?until=2999-12-31&action=search-messages")
    assert _seqs(today.text) == [7, 5, 3, 1]
    bad = client.get("/console/audit?since=yesterday")
    assert bad.status_code == 422 and "'yesterday' is not a date" in _text(bad.text)
    bad = client.get("/console/audit?action=peek")
    assert bad.status_code == 422 and "unknown action 'peek'" in _text(bad.text)
    with store.db_engine.connect() as conn:
        views = conn.execute(
            select(audit_log.c.actor, audit_log.c.source, audit_log.c.peer, audit_log.c.detail)
            .where(audit_log.c.action == "view-audit")
            .order_by(audit_log.c.seq)
        ).all()
    assert len(views) == 7
    assert tuple(views[0]) == ("ada", "console", "192.0.2.7:4000", "8 shown; no filter")
    assert views[3].detail == "2 shown; one patient"  # never the MRN


def test_keyset_paging_by_seq(store: SqlMessageStore, tmp_path: Path) -> None:
    _fill(store, 55)
    client = TestClient(_app(store, tmp_path, Role.ADMIN))
    first = client.get("/console/audit?actor=bob").text
    seqs = _seqs(first)
    assert len(seqs) == 36 and seqs[0] == 54  # bob's: 55 less carol's 19 (seq 55 is hers)
    _fill(store, 60)
    page = client.get("/console/audit").text
    assert len(_seqs(page)) == 50
    older = re.search(r'href="/console/audit(\?[^"]+)" rel="next"', page)
    assert older is not None
    last = _seqs(page)[-1]
    assert html_text.unescape(older.group(1)) == f"?before={last}"
    second = client.get(f"/console/audit?before={last}").text
    assert _seqs(second)[0] == last - 1 and 'rel="first"' in second
    assert client.get("/console/audit?before=x").status_code == 422


@pytest.mark.parametrize("role", [Role.VIEWER, Role.INTEGRATION, Role.FRONT_DESK])
def test_others_are_refused_and_the_refusal_recorded(
    store: SqlMessageStore, tmp_path: Path, role: Role
) -> None:
    client = TestClient(_app(store, tmp_path, role, name="vic"))
    assert client.get("/console/audit").status_code == 403
    answer = client.post("/console/audit/verify", data={"csrf_token": TOKEN})
    assert answer.status_code == 403
    [first, second] = store.audit_entries()
    assert (first.action, first.actor, first.source, first.outcome) == (
        "view-audit",
        "vic",
        "console",
        "refused",
    )
    assert second.outcome == "refused"


def test_verify_shows_intact_then_the_changed_record(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    _fill(store, 4)
    client = TestClient(_app(store, tmp_path, Role.ADMIN))
    assert client.post("/console/audit/verify", data={"csrf_token": "wrong"}).status_code == 403
    assert client.post("/console/audit/verify").status_code == 403
    answer = client.post("/console/audit/verify", data={"csrf_token": TOKEN})
    assert answer.status_code == 200
    assert 'data-verify="ok"' in answer.text
    assert "Chain intact: 4 records verified" in _text(answer.text)
    with store.db_engine.begin() as conn:
        rid = conn.execute(select(audit_log.c.id).where(audit_log.c.seq == 2)).scalar_one()
        conn.execute(update(audit_log).where(audit_log.c.id == rid).values(actor="mallory"))
    answer = client.post("/console/audit/verify", data={"csrf_token": TOKEN})
    assert 'data-verify="broken"' in answer.text
    shown = _text(answer.text)
    assert f"record id {rid} (seq 2)" in shown and "hash mismatch" in shown
    details = [e.detail for e in store.audit_entries() if e.action == "view-audit"]
    assert "verify: BROKEN, 1 records" in details and "verify: intact, 4 records" in details


@pytest.mark.parametrize(
    ("query", "field"),
    [("until=9999-12-31", "to"), ("since=0001-01-01", "from"), ("since=9999-12-31", "from")],
)
def test_dates_at_the_ends_of_the_calendar_answer_422(
    store: SqlMessageStore, tmp_path: Path, query: str, field: str
) -> None:
    """review13 L3: never a 500 (OverflowError); the field is named."""
    client = TestClient(_app(store, tmp_path, Role.ADMIN), raise_server_exceptions=False)
    answer = client.get(f"/console/audit?{query}")
    assert answer.status_code == 422
    assert f"{field}: " in _text(answer.text) and "out of range" in _text(answer.text)


def test_a_search_by_mrn_is_recorded_with_that_patient(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    """review13 L5: the view-audit record of a patient's history names the patient."""
    _fill(store, 4)
    client = TestClient(_app(store, tmp_path, Role.ADMIN))
    assert client.get("/console/audit?mrn=CLINIC%7CMRN2").status_code == 200
    last = store.audit_entries(limit=1)[0]
    assert (last.action, last.patient_key) == ("view-audit", "CLINIC|MRN2")
    assert "MRN2" not in (last.detail or "")


def test_a_search_past_its_time_answers_503(
    store: SqlMessageStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.store.audit import AuditSearchTimeout

    def slow(*_: object, **__: object) -> None:
        raise AuditSearchTimeout("the audit search took longer than 15 s and was stopped")

    monkeypatch.setattr(store, "audit_page", slow)
    answer = TestClient(_app(store, tmp_path, Role.ADMIN)).get("/console/audit?mrn=X")
    assert answer.status_code == 503 and "took longer" in _text(answer.text)
