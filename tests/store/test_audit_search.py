"""A search of the audit trail (review13 M6, L5): read outside the writers' lock, bounded in
time, and recorded in its own short transaction with the searched patient as its key. On
SQLite and PostgreSQL."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import OperationalError

from engine.store import SqlMessageStore, Who
from engine.store.audit import AuditQuery, AuditSearchTimeout, _bounded, _timed_out, audit
from tests.store.test_audit_chain import _append

ADMIN = Who("alice", "console", "127.0.0.1")


def _many(store: SqlMessageStore, n: int) -> None:
    with store._tx() as conn:
        for i in range(n):
            audit(
                conn,
                action="view-payload",
                actor="bob",
                source="api",
                message_id=None,
                outcome="ok",
                patient_key=f"CLINIC|M{i}",
            )


def test_a_writer_commits_while_a_search_reads(store: SqlMessageStore) -> None:
    """The search's read is no write transaction: a writer started while the search's SELECT
    runs commits without waiting for the search (before the fix it waited for its end)."""
    _append(store, 5)
    finished: list[bool] = []

    def write() -> None:
        store.record_audit(
            action="view-payload", actor="mllp", source="engine", message_id=None, outcome="ok"
        )
        finished.append(True)

    def during(conn, cursor, statement, params, context, many):  # type: ignore[no-untyped-def]
        if "ORDER BY audit_log.seq DESC" in statement and not finished:
            writer = threading.Thread(target=write)
            writer.start()
            writer.join(timeout=5)
            assert finished, "a writer waited for the audit search"

    event.listen(store.db_engine, "before_cursor_execute", during)
    try:
        records = store.audit_page(AuditQuery(mrn="MRN1"), ADMIN)
    finally:
        event.remove(store.db_engine, "before_cursor_execute", during)
    assert finished and len(records) == 2
    assert store.verify_audit().ok


def test_a_search_by_mrn_names_the_patient(store: SqlMessageStore) -> None:
    _append(store, 3)
    store.audit_page(AuditQuery(mrn="CLINIC|MRN2"), ADMIN)
    store.audit_page(AuditQuery(actor="alice"), ADMIN)
    newest = store.audit_entries(limit=2)
    assert [e.action for e in newest] == ["view-audit", "view-audit"]
    assert newest[1].patient_key == "CLINIC|MRN2" and "one patient" in (newest[1].detail or "")
    assert "MRN2" not in (newest[1].detail or "")
    assert newest[0].patient_key is None


def test_bounded_stops_a_long_statement(store: SqlMessageStore) -> None:
    slow = (
        "SELECT pg_sleep(2)"
        if store.db_engine.dialect.name == "postgresql"
        else "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000000)"
        " SELECT count(*) FROM n"
    )
    with store.db_engine.connect() as conn, conn.begin():
        with pytest.raises(OperationalError) as caught, _bounded(conn, 0.2):
            conn.execute(text(slow))
    assert _timed_out(caught.value)


def test_a_search_past_its_time_is_stopped_and_recorded(
    store: SqlMessageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    if store.db_engine.dialect.name == "postgresql":
        pytest.skip("a short trail reads in under PostgreSQL's 1 ms timeout floor")
    _many(store, 3000)
    monkeypatch.setattr(store, "search_timeout_s", -1.0)
    with pytest.raises(AuditSearchTimeout, match="took longer"):
        store.audit_page(AuditQuery(mrn="NOPE"), ADMIN)
    last = store.audit_entries(limit=1)[0]
    assert (last.action, last.outcome, last.patient_key) == ("view-audit", "error", "NOPE")
    monkeypatch.setattr(store, "search_timeout_s", 15.0)
    assert store.audit_page(AuditQuery(mrn="CLINIC|M7"), ADMIN)[0].patient_key == "CLINIC|M7"
