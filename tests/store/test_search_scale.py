"""Migration 0015 (search at scale): a bare MRN's search stands on ``ix_messages_mrn``, the MRN
part of the patient key, on SQLite and PostgreSQL — not on a walk of every patient key."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import select, text

import engine.store.repository as repository
from engine.store import Incoming, MessageQuery, SqlMessageStore
from engine.store.search import _where
from engine.store.tables import messages


def _save(store: SqlMessageStore, n: int, patient_key: str | None) -> int:
    [stored] = store.save_batch(
        [
            Incoming(
                raw=b"MSH|",
                channel="mllp",
                control_id=f"C{n}",
                message_type="ADT",
                trigger="A08",
                patient_key=patient_key,
            )
        ]
    )
    return stored.id


def _plan(store: SqlMessageStore, mrn: str) -> str:
    """The database's plan for the list's query of a bare MRN (newest first, a page)."""
    query = (
        select(messages.c.id)
        .where(*_where(MessageQuery(mrn=mrn)))
        .order_by(messages.c.id.desc())
        .limit(50)
    )
    dialect = store.db_engine.dialect
    sql = str(query.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    with store.db_engine.begin() as conn:
        if dialect.name == "sqlite":
            return " ".join(str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
        conn.execute(text("SET LOCAL enable_seqscan = off"))  # a few rows: make it choose
        return " ".join(str(r[0]) for r in conn.exec_driver_sql(f"EXPLAIN {sql}"))


def test_a_bare_mrn_finds_every_authoritys_patient_and_only_theirs(store: SqlMessageStore) -> None:
    a = _save(store, 1, "CLINIC|MRN7")
    b = _save(store, 2, "LAB|MRN7")
    _save(store, 3, "CLINIC|MRN77")
    _save(store, 4, "CLINIC|XMRN7")
    _save(store, 5, "MRN7")  # no authority at all: not "|MRN7"
    _save(store, 6, None)
    assert [m.id for m in store.search(MessageQuery(mrn="MRN7"))] == [b, a]
    assert [m.id for m in store.search(MessageQuery(mrn="CLINIC|MRN7"))] == [a]
    assert store.search(MessageQuery(mrn="MRN_")) == []  # a LIKE wildcard is a character


def test_a_bare_mrn_search_reads_the_mrn_index(store: SqlMessageStore) -> None:
    for n in range(1, 30):
        _save(store, n, f"CLINIC|MRN{n}")
    with store.db_engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE messages")
    assert "ix_messages_mrn" in _plan(store, "MRN7")


def test_migration_0015_goes_down_and_up_again(store: SqlMessageStore) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(repository.__file__).parent / "migrations"))

    def indexes() -> set[str]:
        # by the catalogs: SQLAlchemy's reflection skips an expression index (with a warning)
        sql = (
            "SELECT name FROM sqlite_master WHERE type = 'index'"
            if store.db_engine.dialect.name == "sqlite"
            else "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
        )
        with store.db_engine.connect() as conn:
            return {str(r[0]) for r in conn.exec_driver_sql(sql)}

    ours = {"ix_messages_mrn", "ix_deliveries_state_dest"}
    assert ours <= indexes()
    with store.db_engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0014")
    assert not ours & indexes()
    store.migrate()
    assert ours <= indexes()


def test_the_dashboards_queue_and_dead_letters_read_one_index(store: SqlMessageStore) -> None:
    """The queue and dead-letter counts per destination need no delivery's row."""
    from engine.store.console_stats import _DEAD, _QUEUE

    dialect = store.db_engine.dialect
    with store.db_engine.begin() as conn:
        for query in (_QUEUE, _DEAD):
            sql = str(query.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
            if dialect.name == "sqlite":
                plan = " ".join(
                    str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")
                )
                assert "COVERING INDEX ix_deliveries_state_dest" in plan, plan
            else:
                conn.execute(text("SET LOCAL enable_seqscan = off"))
                plan = " ".join(str(r[0]) for r in conn.exec_driver_sql(f"EXPLAIN {sql}"))
                assert "ix_deliveries_state_dest" in plan, plan


def test_documents_in_a_rare_state_start_from_their_messages(store: SqlMessageStore) -> None:
    """The documents waiting for a patient are found from the few needs-patient messages, not
    by walking every document newest first."""
    from engine.store.search import _DOCUMENT_LINE, DocumentQuery, _document_where
    from engine.store.tables import documents

    def plan(state: str) -> str:
        query = (
            _DOCUMENT_LINE.where(*_document_where(DocumentQuery(state=state)))
            .order_by(documents.c.id.desc())
            .limit(50)
        )
        sql = str(
            query.compile(dialect=store.db_engine.dialect, compile_kwargs={"literal_binds": True})
        )
        with store.db_engine.connect() as conn:
            if store.db_engine.dialect.name == "sqlite":
                rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")
                return " ".join(str(r[-1]) for r in rows)
            return " ".join(str(r[0]) for r in conn.exec_driver_sql(f"EXPLAIN {sql}"))

    waiting = plan("needs-patient")
    if store.db_engine.dialect.name == "sqlite":
        assert "ix_messages_state" in waiting and "SCAN documents" not in waiting, waiting
    else:
        assert "messages" in waiting, waiting
