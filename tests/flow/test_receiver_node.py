"""A real ``engine serve`` (SQLite, no worker process) is a receiver node (issue 14): registered
with its heartbeat while it runs, gone with its configuration row when it stops cleanly, left
behind when it is killed (shown dead once its heartbeat is older than 10 s: moved back in the
database here rather than waited for)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select, update

from engine.store import SqlMessageStore, create_db_engine
from engine.store.tables import config_applied, nodes
from tests.serve_support import Engine, wait_for


def _serve(tmp_path: Path, name: str) -> Engine:
    var = tmp_path / name
    var.mkdir()
    routes = tmp_path / "routes"
    routes.mkdir(exist_ok=True)
    return Engine(var, routes, env={"ENGINE_WORKERS": "false"})


def _receivers(store: SqlMessageStore) -> list[tuple[str, int]]:
    with store.db_engine.connect() as conn:
        rows = conn.execute(select(nodes.c.id, nodes.c.pid).where(nodes.c.role == "receiver"))
        return [(r.id, r.pid) for r in rows]


def test_engine_serve_beats_as_a_receiver_and_a_clean_stop_removes_it(tmp_path: Path) -> None:
    serve = _serve(tmp_path, "clean")
    serve.start()
    db_engine = create_db_engine(f"sqlite:///{serve.var / 'engine.db'}")
    store = SqlMessageStore(db_engine)
    try:
        assert serve.proc is not None
        assert wait_for(lambda: bool(_receivers(store)), 15), serve.log.read_text()[-2000:]
        [(node, pid)] = _receivers(store)
        assert pid == serve.proc.pid
        [state] = store.cluster_state().nodes
        assert (state.id, state.role, state.alive) == (node, "receiver", True)
        store.record_config(node, 1, "d1", "applied")  # as its reloader records a generation
    finally:
        serve.stop()
    assert serve.proc.returncode == 0
    assert _receivers(store) == []
    with db_engine.connect() as conn:
        assert conn.execute(select(config_applied.c.node)).all() == []
    db_engine.dispose()


def test_a_killed_engine_serve_is_left_and_shown_dead(tmp_path: Path) -> None:
    serve = _serve(tmp_path, "killed")
    serve.start()
    db_engine = create_db_engine(f"sqlite:///{serve.var / 'engine.db'}")
    store = SqlMessageStore(db_engine)
    try:
        assert wait_for(lambda: bool(_receivers(store)), 15), serve.log.read_text()[-2000:]
    finally:
        serve.kill9()
    [(node, _pid)] = _receivers(store)
    with db_engine.begin() as conn:
        conn.execute(update(nodes).values(heartbeat_at=datetime.now(UTC) - timedelta(seconds=30)))
    [state] = store.cluster_state().nodes
    assert (state.id, state.role, state.alive) == (node, "receiver", False)
    db_engine.dispose()
