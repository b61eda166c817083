"""What one dashboard refresh costs the database: statements, rows read and buffers (issue 13).

Timings on a shared machine are noise; what a refresh asks of the database is not. This runs
the console as ``engine serve`` wires it (bench/console_bench.py's app) on a seeded store, logs
in through the form, and requests ``/console/dashboard/live`` with the figures' cache emptied,
recording every statement the request sends (a SQLAlchemy ``before_cursor_execute`` hook). Each
SELECT is then run again under ``EXPLAIN (ANALYZE, BUFFERS)`` with its own parameters, and the
rows its scans read (rows returned plus rows a filter removed, and heap fetches of index-only
scans) and its shared buffers (hit + read) are summed, and the connections checked out of the
pool counted (on PostgreSQL each is a ping before and a rollback after). A request served from
the cache is counted too.

    .venv/bin/python -m bench.console_refresh_cost URL [--vacuum]

URL: a seeded database (``bench.console_seed``), e.g. a PostgreSQL schema of one's own
(``...?options=-csearch_path%3Dmyschema``). ``--vacuum`` first: the visibility map set as
autovacuum keeps it on a running system (index-only scans then skip the table); without it the
store is as a fresh seed leaves it (as the console bench measures).
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import event

__all__ = ["main", "refresh_cost"]

_SCANS = ("Seq Scan", "Index Scan", "Index Only Scan", "Bitmap Heap Scan")


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from _nodes(child)


def _explain(db_engine: Any, statement: str, parameters: Any) -> dict[str, Any]:
    """Rows the statement's scans read, heap fetches, shared buffers, time (PostgreSQL)."""
    raw = db_engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement, parameters)
        [[doc]] = cur.fetchall()
        raw.rollback()
    finally:
        raw.close()
    doc = doc if isinstance(doc, list) else json.loads(doc)
    top = doc[0]["Plan"]
    rows = fetches = 0
    for node in _nodes(top):
        if node["Node Type"] in _SCANS:
            loops = node.get("Actual Loops", 1)
            rows += (node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)) * loops
            fetches += node.get("Heap Fetches", 0)
    return {
        "rows_read": int(rows),
        "heap_fetches": int(fetches),
        "buffers": int(top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0)),
        "ms": round(doc[0]["Execution Time"], 2),
        "top": top["Node Type"],
    }


def refresh_cost(url: str, *, vacuum: bool = False) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from bench.console_bench import _add_user, _app, _login

    with tempfile.TemporaryDirectory(prefix="console-cost-") as tmp:
        app, store, _auth = _app(Path(tmp), url)
        db = store.db_engine
        store.migrate()
        _add_user(store)
        if vacuum and db.dialect.name == "postgresql":
            with db.connect() as conn:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                for table in ("messages", "deliveries", "eligibility_checks", "console_sessions"):
                    conn.exec_driver_sql(f"VACUUM (ANALYZE) {table}")
        seen: list[tuple[str, Any]] = []

        checkouts: list[int] = []

        def hook(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
            seen.append((statement, parameters))

        def checkout(*_: Any) -> None:
            checkouts.append(1)

        out: dict[str, Any] = {"vacuumed": vacuum}
        with TestClient(app) as client:
            _login(client)
            client.get("/console/")
            for label in ("refresh, figures read", "refresh, figures cached"):
                if label.endswith("read"):
                    app.state.ops_dashboard_cache = {}
                seen.clear()
                checkouts.clear()
                event.listen(db, "before_cursor_execute", hook)
                event.listen(db.pool, "checkout", checkout)
                try:
                    answer = client.get("/console/dashboard/live")
                finally:
                    event.remove(db, "before_cursor_execute", hook)
                    event.remove(db.pool, "checkout", checkout)
                assert answer.status_code == 200, answer.status_code
                captured = list(seen)
                statements = []
                for statement, parameters in captured:
                    first = statement.lstrip().split(None, 1)[0].upper()
                    entry: dict[str, Any] = {"sql": " ".join(statement.split())[:160]}
                    if first in ("SELECT", "WITH") and db.dialect.name == "postgresql":
                        entry.update(_explain(db, statement, parameters))
                    statements.append(entry)
                out[label] = {
                    "statements": len(statements),
                    # each checkout: a ping first (pool_pre_ping) and a rollback at its return
                    "checkouts": len(checkouts),
                    "writes": sum(
                        1
                        for s in statements
                        if s["sql"].split(None, 1)[0].upper() in ("INSERT", "UPDATE", "DELETE")
                    ),
                    "rows_read": sum(s.get("rows_read", 0) for s in statements),
                    "heap_fetches": sum(s.get("heap_fetches", 0) for s in statements),
                    "buffers": sum(s.get("buffers", 0) for s in statements),
                    "ms": round(sum(s.get("ms", 0.0) for s in statements), 1),
                    "each": statements,
                }
        db.dispose()
    return out


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)  # noqa: T201  (a command's usage)
        return 2
    result = refresh_cost(argv[0], vacuum="--vacuum" in argv)
    for label, r in result.items():
        if not isinstance(r, dict):
            continue
        print(  # noqa: T201  (the bench's report)
            f"{label}: {r['statements']} statements ({r['writes']} writes) on "
            f"{r['checkouts']} connection checkouts, "
            f"{r['rows_read']:,} rows read, {r['heap_fetches']:,} heap fetches, "
            f"{r['buffers']:,} buffers, {r['ms']} ms in the database"
        )
        for s in r["each"]:
            print(  # noqa: T201
                f"  {s.get('rows_read', '-'):>8} rows {s.get('heap_fetches', '-'):>8} fetches "
                f"{s.get('buffers', '-'):>7} buf {s.get('ms', '-'):>8} ms  {s['sql'][:110]}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
