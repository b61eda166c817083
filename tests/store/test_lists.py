"""``in_list`` / ``not_in_list`` (engine/store/lists.py): the same rows as ``IN (...)`` on both
databases, for every length of list; on SQLite one statement text whatever the length, and the
values still looked up by primary key."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, event, insert, select

from engine.store.lists import in_list, not_in_list
from engine.store.tables import nodes

IDS = [f"node-{i:03d}" for i in range(60)]
AT = datetime(2026, 12, 5, tzinfo=UTC)


@pytest.fixture
def filled(db_engine: Engine) -> Engine:
    with db_engine.begin() as conn:
        conn.execute(
            insert(nodes),
            [
                {
                    "id": n,
                    "role": "worker",
                    "host": "h",
                    "pid": i,
                    "started_at": AT,
                    "heartbeat_at": AT,
                }
                for i, n in enumerate(IDS)
            ],
        )
    return db_engine


@pytest.mark.parametrize("size", [0, 1, 7, 50])
def test_the_rows_of_in_and_not_in_for_every_length(filled: Engine, size: int) -> None:
    chosen = IDS[::3][:size] + ["no-such-node"]
    inside = select(nodes.c.id).where(in_list(nodes.c.id, "picked")).order_by(nodes.c.id)
    outside = select(nodes.c.id).where(not_in_list(nodes.c.id, "picked")).order_by(nodes.c.id)
    with filled.connect() as conn:
        got_in = list(conn.execute(inside, {"picked": chosen}).scalars())
        got_out = list(conn.execute(outside, {"picked": chosen}).scalars())
    assert got_in == sorted(IDS[::3][:size])
    assert got_out == sorted(set(IDS) - set(got_in))


def test_one_statement_text_whatever_the_length_on_sqlite(filled: Engine) -> None:
    if filled.dialect.name != "sqlite":
        pytest.skip("PostgreSQL keeps SQLAlchemy's expanding lists")
    sent: list[str] = []

    def seen(_c: object, _cur: object, statement: str, *_: object) -> None:
        if statement.startswith("SELECT nodes"):  # not the pragmas, not the EXPLAIN
            sent.append(statement)

    event.listen(filled, "before_cursor_execute", seen)
    try:
        query = select(nodes.c.id).where(in_list(nodes.c.id))
        with filled.connect() as conn:
            for size in (1, 2, 30):
                conn.execute(query, {"ids": IDS[:size]}).all()
            plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sent[0]}", ('["node-001"]',)).all()
    finally:
        event.remove(filled, "before_cursor_execute", seen)
    assert len(sent) == 3
    assert len(set(sent)) == 1
    assert "json_each" in sent[0]
    details = " ".join(str(row[-1]) for row in plan)
    assert "SEARCH nodes USING COVERING INDEX sqlite_autoindex_nodes_1 (id=?)" in details, details
