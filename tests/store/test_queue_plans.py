"""PostgreSQL: the queue statements stay cheap when the statistics are stale.

A queue's statistics are taken while a state holds a few rows; then a backlog arrives and
nobody analyzes (autovacuum waits for 10 % of the table to change). With the planner believing
there is no pending delivery, asking "is a delivery of this patient pending?" as a plain
predicate made it read every pending delivery of the destination through an index that leads
with the state (pg-cost run of 4 December 2026: 2,500 rows read per queue, 1 ms a message).
These tests make exactly that situation (ANALYZE while nothing is pending, then 2,500 pending
deliveries of one destination) and read how many rows each statement's plan touches."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, text

from engine.store import SqlMessageStore, create_db_engine
from engine.store.deliveries import _PROMOTE_ALL, _QUEUED_PATIENTS_PG, Deliveries
from engine.store.messages import MessageStore

pytestmark = pytest.mark.postgres

BACKLOG = 2500


@pytest.fixture
def stale(postgres_schema_url: str) -> Iterator[Engine]:
    """A store whose statistics saw 500 delivered and nothing pending or received; then a
    backlog of pending deliveries and received messages nobody analyzed."""
    db = create_db_engine(postgres_schema_url)
    store = SqlMessageStore(db)
    store.migrate()
    payload = "convert_to(repeat('x', 2000), 'UTF8')"
    columns = (
        "message_id, destination, route, kind, content_type, payload, patient_key, state, "
        "attempts, next_attempt_at, created_at"
    )
    try:
        with db.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO messages (received_at, channel, peer, kind, size, raw, state,"
                    " patient_key, updated_at) SELECT now(), 'mllp', '', 'hl7v2', 3, 'abc',"
                    " 'delivered', 'MRN' || g, now() FROM generate_series(1, 500) g"
                )
            )
            conn.execute(
                text(
                    f"INSERT INTO deliveries ({columns}) SELECT g, 'drop', 'r', 'fhir-bundle',"
                    f" 'application/json', {payload}, 'MRN' || g, 'delivered', 0, now(), now()"
                    " FROM generate_series(1, 500) g"
                )
            )
            conn.execute(text("ANALYZE messages, deliveries"))
            conn.execute(
                text(
                    "INSERT INTO messages (received_at, channel, peer, kind, size, raw, state,"
                    " patient_key, updated_at) SELECT now(), 'mllp', '', 'hl7v2', 3, 'abc',"
                    f" 'received', 'NEW' || g, now() FROM generate_series(1, {BACKLOG}) g"
                )
            )
            conn.execute(
                text(
                    f"INSERT INTO deliveries ({columns}) SELECT g, 'drop', 'r', 'fhir-bundle',"
                    f" 'application/json', {payload}, 'MRN' || g, 'pending', 0,"
                    " now() - g * interval '1 ms', now()"
                    f" FROM generate_series(501, {500 + BACKLOG}) g"
                )
            )
        yield db
    finally:
        from engine.store.tables import metadata

        metadata.drop_all(db)
        with db.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
        db.dispose()


def _rows_read(conn: Connection, statement: Any, params: dict[str, Any]) -> int:
    """Rows the plan's scans produced or filtered out, over all their loops: ``statement`` a
    ``text()`` or a Core statement (compiled for PostgreSQL, its literal binds kept)."""
    if hasattr(statement, "text"):
        result = conn.execute(text(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement.text}"), params)
    else:
        compiled = statement.compile(dialect=conn.dialect)
        bound = {**compiled.params, **params}
        result = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {compiled.string}", bound)
    [[plan]] = result.all()
    return _plan_rows(plan)


def _plan_rows(plan: Any) -> int:
    """Rows an EXPLAIN (ANALYZE, FORMAT JSON) plan's scans produced or filtered out, over all
    their loops."""
    total = 0

    def walk(node: dict[str, Any]) -> None:
        nonlocal total
        if "Scan" in node["Node Type"]:
            loops = node.get("Actual Loops", 1)
            total += loops * (node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0))
        for child in node.get("Plans", []):
            walk(child)

    walk((plan if isinstance(plan, list) else json.loads(plan))[0]["Plan"])
    return total


def test_promoting_queues_reads_each_queue_not_the_backlog(stale: Engine) -> None:
    params = {"now": datetime.now(UTC), "dests": ["drop"] * 3, "patients": ["MRN1", "MRN2", "X"]}
    with stale.begin() as conn:
        for _ in range(7):  # past psycopg's prepare threshold and the plan cache's custom plans
            read = _rows_read(conn, _PROMOTE_ALL, params)
            assert read < 20, f"{read} rows read to promote 3 queues"
        conn.rollback()


def test_asking_which_patients_are_queued_reads_each_patient_not_the_backlog(
    stale: Engine,
) -> None:
    params = {"dest": "drop", "patients": ["MRN1", "MRN700", "NOBODY"]}
    with stale.connect() as conn:
        for _ in range(7):
            read = _rows_read(conn, _QUEUED_PATIENTS_PG, params)
            assert read < 20, f"{read} rows read for 3 patients"
        queued = set(conn.execute(_QUEUED_PATIENTS_PG, params).scalars())
        assert queued == {"MRN700"}  # MRN1's delivery is delivered, NOBODY has none


def test_claims_walk_their_queue_in_order_and_stop_at_the_limit(stale: Engine) -> None:
    """The processor's and the dispatcher's claims, after :func:`in_index_order`, read about
    their limit's worth of rows, not the whole backlog (2,500 of each)."""
    from engine.store.db import in_index_order

    now = datetime.now(UTC)
    claims = [
        (MessageStore._CLAIMABLE, {"limit": 50}),
        (Deliveries._DUE.with_for_update(skip_locked=True), {"now": now, "limit": 50}),
    ]
    for statement, params in claims:
        with stale.begin() as conn:
            in_index_order(conn)
            for _ in range(7):
                read = _rows_read(conn, statement, params)
                # the dispatcher's: its 50 and their ties; the processor's: its 50, and for each
                # the received ones before it of the same patient, looked for through
                # ix_messages_state (50 × 49 / 2 here): never the whole backlog
                assert read < BACKLOG, f"{read} rows read to claim 50: {str(statement)[:40]}"
            conn.rollback()


def test_asking_whether_a_message_waits_reads_one_row_in_a_generic_plan(stale: Engine) -> None:
    """MessageStore.any_received, as psycopg prepares it, in a generic plan (made without the
    parameters' values; forced here, PostgreSQL chooses one when it reckons it no dearer): one
    index probe, not the 500 delivered messages stored before the received ones."""
    with stale.connect() as conn:
        conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        for _ in range(6):  # psycopg prepares it at the fifth
            assert conn.execute(MessageStore._ANY_RECEIVED).first() is not None
        [(name, generic, types)] = conn.exec_driver_sql(
            "SELECT name, generic_plans, parameter_types::text[] FROM pg_prepared_statements"
            " WHERE statement LIKE '%%FROM messages%%'"
        ).all()
        assert generic > 0, "no generic plan: the test proves nothing"
        args = f"({', '.join(['%s'] * len(types))})" if types else ""
        [[plan]] = conn.exec_driver_sql(
            f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE {name}{args}", ("received",) * len(types)
        ).all()
        assert _plan_rows(plan) < 10, json.dumps(plan, indent=1)[:3000]
