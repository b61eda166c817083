"""Every PostgreSQL connection of the engine is bounded on both sides (engine/store/db.py,
``CLIENT_KEEPALIVES`` and ``SESSION_BOUNDS``; review of 7 December): before, a node whose host
went away in the middle of inserting a message kept its session, and the row lock of that
insert, for the kernel's two hours, and every other node's insert of a resend of that message
waited as long with its whole group commit (every ACK of that receiver)."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from engine.store import create_db_engine
from engine.store.db import SESSION_BOUNDS
from tests.conftest import fresh_schema


def _shown(url: str, names: list[str]) -> dict[str, str]:
    db = create_db_engine(url)
    try:
        with db.connect() as conn:
            return {n: str(conn.execute(text(f"SHOW {n}")).scalar_one()) for n in names}
    finally:
        db.dispose()


@pytest.mark.postgres
def test_a_session_is_bounded_on_the_servers_side(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGOPTIONS", raising=False)
    with fresh_schema("bounds") as url:
        shown = _shown(url, list(SESSION_BOUNDS))
        assert shown == {
            "tcp_keepalives_idle": "10",
            "tcp_keepalives_interval": "3",
            "tcp_keepalives_count": "3",
            "idle_in_transaction_session_timeout": "5min",
        }
        assert _shown(url, ["search_path"])["search_path"].startswith("bounds_")  # kept


@pytest.mark.postgres
def test_the_administrators_own_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGOPTIONS", raising=False)
    with fresh_schema("bounds") as url:
        own = f"{url}%20-c%20idle_in_transaction_session_timeout%3D0"
        shown = _shown(own, ["idle_in_transaction_session_timeout", "tcp_keepalives_idle"])
        assert shown == {"idle_in_transaction_session_timeout": "0", "tcp_keepalives_idle": "10"}


@pytest.mark.postgres
def test_a_client_stopped_inside_a_transaction_loses_its_locks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the bound does, shortened to 1 s: the session idle in its transaction is ended and
    its row lock freed for the next writer."""
    monkeypatch.setitem(SESSION_BOUNDS, "idle_in_transaction_session_timeout", "1000")
    with fresh_schema("bounds") as url:
        stalled, other = create_db_engine(url), create_db_engine(url)
        held = stalled.connect()
        try:
            with other.begin() as conn:
                conn.execute(text("CREATE TABLE t (k int PRIMARY KEY)"))
            held.begin()
            held.execute(text("INSERT INTO t VALUES (1)"))  # and its process stops here
            with other.begin() as conn:
                conn.execute(text("SET LOCAL lock_timeout = '20s'"))
                done = conn.execute(text("INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING"))
                assert done.rowcount == 1  # the stalled insert was rolled back with its session
        finally:
            held.invalidate()  # (else the schema's drop waits for its lock)
            stalled.dispose()
            other.dispose()


def test_the_client_keepalives_unless_the_url_sets_them() -> None:
    with fresh_schema("bounds") as url:
        db = create_db_engine(f"{url}&keepalives_idle=30")
        try:
            with db.connect() as conn:
                given = conn.connection.dbapi_connection.info.get_parameters()  # type: ignore[union-attr]
        finally:
            db.dispose()
    assert {k: given.get(k) for k in ("keepalives", "keepalives_idle", "keepalives_count")} == {
        "keepalives": "1",
        "keepalives_idle": "30",
        "keepalives_count": "3",
    }


@pytest.mark.postgres
def test_an_audit_export_read_slowly_is_not_ended_by_the_idle_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``engine audit export | less``: the export's cursor waits on its reader, inside its
    transaction, longer than the idle bound (shortened to 1 s here); it is not cut halfway."""
    import time
    from datetime import UTC, datetime

    from sqlalchemy import insert

    from engine.store import SqlMessageStore, Who
    from engine.store.tables import audit_log

    monkeypatch.setitem(SESSION_BOUNDS, "idle_in_transaction_session_timeout", "1000")
    with fresh_schema("bounds") as url:
        db = create_db_engine(url)
        try:
            store = SqlMessageStore(db)
            store.migrate()
            now = datetime.now(UTC)
            rows = [
                {
                    "at": now,
                    "actor": "t",
                    "source": "cli",
                    "action": "view",
                    "outcome": "ok",
                    "seq": n,
                    "prev_hash": "0" * 64,
                    "hash": "0" * 64,
                }
                for n in range(10, 2610)  # past the cursor's first fetch of 2,000
            ]
            with db.begin() as conn:
                conn.execute(insert(audit_log), rows)
            records = store.export_audit(None, Who("tester", "cli"))
            seen = [next(records)]
            time.sleep(2.5)  # the reader paged slowly
            seen.extend(records)
            assert len(seen) >= 2600
        finally:
            db.dispose()
