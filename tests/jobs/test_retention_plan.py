"""How a retention batch reads its candidates (engine/store/messages.py, ``purge_range``):
the question whether a replayed original still has an unfinished copy is answered from the
index on ``replay_of`` (migration 0024), not by reading every message; and on PostgreSQL the
batch's statements are never JIT-compiled (a 200,000-message bench spent up to 1.3 s a batch
compiling them, against a 100 ms budget). The statements are the ones the purge really ran,
caught on their way to the database and explained afterwards."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event, insert, select

from engine.store import SqlMessageStore
from engine.store.tables import document_blobs, messages
from tests.conftest import a_newer_message

ORIGINALS = 4000
REPLAYED = 200


def _seed(store: SqlMessageStore, tag: str = "P") -> None:
    """Old delivered messages; REPLAYED of them replayed, each with a copy: half the copies
    delivered (their originals go), half still received (theirs stay)."""
    old = datetime.now(UTC) - timedelta(days=60)

    def row(n: int, state: str, replay_of: int | None = None) -> dict[str, object]:
        return {
            "received_at": old,
            "channel": "mllp",
            "peer": "",
            "kind": "hl7v2",
            "size": 10,
            "raw": b"MSH|^~\\&|X",
            "control_id": f"{tag}{n}",
            "dedupe_key": None if replay_of else f"seed|{tag}{n}",
            "replay_of": replay_of,
            "patient_key": f"CLINIC|MRN{n % 300}",
            "state": state,
            "updated_at": old,
        }

    with store.db_engine.begin() as conn:
        conn.execute(
            insert(messages),
            [row(n, "replayed" if n < REPLAYED else "delivered") for n in range(ORIGINALS)],
        )
        firsts = list(
            conn.execute(
                select(messages.c.id)
                .where(messages.c.control_id.like(f"{tag}%"))
                .order_by(messages.c.id)
                .limit(REPLAYED)
            ).scalars()
        )
        conn.execute(
            insert(messages),
            [
                row(ORIGINALS + i, "delivered" if i % 2 else "received", replay_of=mid)
                for i, mid in enumerate(firsts)
            ],
        )
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("ANALYZE messages")


@contextmanager
def _statements(store: SqlMessageStore) -> Iterator[list[tuple[str, Any]]]:
    """Every statement the store sends while the block runs, with its parameters."""
    seen: list[tuple[str, Any]] = []

    def record(
        conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        seen.append((statement, params))

    event.listen(store.db_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(store.db_engine, "before_cursor_execute", record)


def _candidates(seen: list[tuple[str, Any]]) -> tuple[int, str, Any]:
    """The purge's candidate query: its place among the statements, its text and parameters."""
    for i, (statement, params) in enumerate(seen):
        if statement.lstrip().upper().startswith("SELECT") and "replay_of" in statement:
            return i, statement, params
    raise AssertionError(f"no candidate query among {[s[:40] for s, _ in seen]}")


def test_a_batch_asks_after_copies_through_the_index_and_is_never_jit_compiled(
    store: SqlMessageStore,
) -> None:
    _seed(store)
    a_newer_message(store)
    with _statements(store) as seen:
        purged = store.purge_range(timedelta(days=30), id_range=(0, 10**9)).rows
    # everything old and delivered, and the originals whose copies are delivered; the originals
    # of the copies still received stay, and so do those copies
    assert purged == ORIGINALS - REPLAYED + REPLAYED // 2 + REPLAYED // 2
    at, statement, params = _candidates(seen)
    _seed(store, tag="Q")  # a full table again to explain the batch's statement against

    with store.db_engine.connect() as conn, conn.begin():
        raw = conn.connection.dbapi_connection
        assert raw is not None
        cursor = raw.cursor()
        if conn.dialect.name == "postgresql":
            before = [s for s, _ in seen[:at]]
            assert "SET LOCAL jit = off" in before, before
            # what the batch would cost if PostgreSQL compiled every plan it could: with the
            # purge's own settings, no JIT; the copies read through their index
            cursor.execute("SET LOCAL jit_above_cost = 0")
            for earlier in before:
                if earlier.startswith("SET LOCAL"):
                    cursor.execute(earlier)
            cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, params)
            plan = json.dumps(cursor.fetchone()[0])
            assert '"JIT"' not in plan, plan
            assert "ix_messages_replay_of" in plan, plan
        else:
            cursor.execute("EXPLAIN QUERY PLAN " + statement, params)
            plan = " | ".join(str(r[-1]) for r in cursor.fetchall())
            assert "ix_messages_replay_of" in plan, plan


def _refusals(store: SqlMessageStore, tag: str) -> None:
    """Many messages in error (not documents), and a few old refused uploads that kept their
    bytes: purging one asks which refusals still keep its bytes."""
    old = datetime.now(UTC) - timedelta(days=60)

    def row(n: int, kind: str, raw: bytes) -> dict[str, object]:
        return {
            "received_at": old,
            "channel": "http" if kind == "document" else "mllp",
            "peer": "",
            "kind": kind,
            "size": len(raw),
            "raw": raw,
            "control_id": None if kind == "document" else f"{tag}{n}",
            "patient_key": None,
            "state": "error",
            "updated_at": old,
        }

    refused = [
        row(
            n,
            "document",
            json.dumps({"refused": "no", "bytes_kept": True, "sha256": f"{n:064x}"}).encode(),
        )
        for n in range(5)
    ]
    with store.db_engine.begin() as conn:
        conn.execute(insert(messages), [row(n, "hl7v2", b"MSH|^~\\&|E") for n in range(3000)])
        conn.execute(insert(messages), refused)
        # their bytes, stored (bytes not stored free nothing, and nothing is asked about them)
        if tag == "E":
            conn.execute(
                insert(document_blobs),
                [
                    {"sha256": f"{n:064x}", "size": 1, "chunks": 0, "created_at": old}
                    for n in range(5)
                ],
            )
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("ANALYZE messages")


def test_a_batch_finds_the_refusals_that_keep_bytes_without_reading_every_error(
    store: SqlMessageStore,
) -> None:
    _refusals(store, "E")
    a_newer_message(store)
    with _statements(store) as seen:
        assert store.purge_range(timedelta(days=30), id_range=(0, 10**9)).rows == 5
    asked = [(s, p) for s, p in seen if "kind = 'document'" in s]
    assert len(asked) == 1, [s for s, _ in seen]  # the refusals that stay, asked once
    statement, params = asked[0]
    _refusals(store, "F")  # the table as full again to explain the statement against

    with store.db_engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        cursor = raw.cursor()
        if conn.dialect.name == "postgresql":
            cursor.execute("EXPLAIN (FORMAT JSON) " + statement, params)
            plan = json.dumps(cursor.fetchone()[0])
        else:
            cursor.execute("EXPLAIN QUERY PLAN " + statement, params)
            plan = " | ".join(str(r[-1]) for r in cursor.fetchall())
        assert "ix_messages_refusals" in plan, plan
