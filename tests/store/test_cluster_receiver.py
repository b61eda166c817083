"""An ``engine serve``'s receiver is a node of its own (issue 14): while it runs its heartbeat is
recent and the dashboard shows it alive with its configuration; killed, its heartbeat grows old
and it is shown dead, then pruned a day later with its configuration row; stopped cleanly, it is
gone. Times are moved in the database, not waited for. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from engine.api.auth import Role
from engine.service import keep_receiver
from engine.store import SqlMessageStore
from engine.store.nodes import DEAD_AFTER, FORGET_AFTER
from engine.store.tables import config_applied, nodes
from tests.console.test_messages_page_support import cells, client_for

RECEIVER = "hostR:10:aa"


def _beat_ago(store: SqlMessageStore, node: str, ago: timedelta) -> None:
    """The node's last heartbeat ``ago`` (it was killed then)."""
    with store.db_engine.begin() as conn:
        conn.execute(
            update(nodes).where(nodes.c.id == node).values(heartbeat_at=datetime.now(UTC) - ago)
        )


def _rows(store: SqlMessageStore) -> tuple[list[str], list[str]]:
    """The ids of the ``nodes`` rows and of the ``config_applied`` rows."""
    with store.db_engine.connect() as conn:
        return (
            sorted(conn.execute(select(nodes.c.id)).scalars()),
            sorted(conn.execute(select(config_applied.c.node)).scalars()),
        )


def test_a_running_receiver_has_a_recent_heartbeat_and_its_configuration(
    store: SqlMessageStore,
) -> None:
    worker = store.register_node("worker")  # its engine serve's worker process
    assert store.register_node("receiver", RECEIVER) == RECEIVER
    store.publish_config("d1", RECEIVER)
    store.record_config(RECEIVER, 1, "d1", "applied")
    state = store.cluster_state()
    by_id = {n.id: n for n in state.nodes}
    assert set(by_id) == {worker, RECEIVER}
    receiver = by_id[RECEIVER]
    assert receiver.role == "receiver" and receiver.alive is True
    assert receiver.heartbeat_age_s is not None
    assert receiver.heartbeat_age_s < DEAD_AFTER.total_seconds()
    assert receiver.started_at is not None and not receiver.leader
    assert (receiver.generation, receiver.config_state) == (1, "current")
    assert by_id[worker].config_state == ""  # the worker process follows nothing itself
    assert state.same_generation


def test_a_killed_receiver_is_shown_dead_then_pruned_with_its_configuration(
    store: SqlMessageStore,
) -> None:
    store.register_node("receiver", RECEIVER)
    store.publish_config("d1", RECEIVER)
    store.record_config(RECEIVER, 1, "d1", "applied")
    _beat_ago(store, RECEIVER, DEAD_AFTER + timedelta(seconds=50))
    [receiver] = store.cluster_state().nodes
    assert receiver.role == "receiver" and receiver.alive is False
    assert receiver.heartbeat_age_s is not None and receiver.heartbeat_age_s >= 60
    # a node taking over claims finds it dead but keeps its row for a day
    store.take_over()
    assert _rows(store) == ([RECEIVER], [RECEIVER])
    _beat_ago(store, RECEIVER, FORGET_AFTER + timedelta(minutes=1))
    store.take_over()
    assert _rows(store) == ([], [])
    assert store.cluster_state().nodes == ()


def test_a_receiver_whose_row_was_gone_is_registered_again_as_a_receiver(
    store: SqlMessageStore,
) -> None:
    store.register_node("receiver", RECEIVER)
    assert store.heartbeat(RECEIVER, "receiver")
    with store.db_engine.begin() as conn:
        conn.execute(nodes.delete())
    assert not store.heartbeat(RECEIVER, "receiver")  # told, and recorded again
    [receiver] = store.cluster_state().nodes
    assert (receiver.id, receiver.role, receiver.alive) == (RECEIVER, "receiver", True)


def test_keep_receiver_beats_while_it_runs_and_a_clean_stop_removes_it(
    store: SqlMessageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.store import nodes as nodes_module

    monkeypatch.setattr(nodes_module, "HEARTBEAT_S", 0.05)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(keep_receiver(store, RECEIVER, stop))
        # registered at once; its row's heartbeat moved back a minute is beaten again
        await _until(lambda: _rows(store)[0] == [RECEIVER])
        store.record_config(RECEIVER, 1, "d1", "applied")
        _beat_ago(store, RECEIVER, timedelta(minutes=1))
        await _until(lambda: bool(store.cluster_state().nodes[0].alive))
        stop.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(main())
    assert _rows(store) == ([], [])  # its node and its configuration row
    assert store.cluster_state().nodes == ()


async def _until(check: object, timeout_s: float = 10.0) -> None:
    """Poll ``check`` (a callable, run in a thread) until it is true."""
    assert callable(check)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await asyncio.to_thread(check):
        assert loop.time() < deadline, "not reached in time"
        await asyncio.sleep(0.02)


def test_the_dashboard_shows_a_receivers_heartbeat_age(
    store: SqlMessageStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.console import pages_dashboard

    monkeypatch.setattr(pages_dashboard, "CACHE_S", 0.0)
    store.register_node("receiver", RECEIVER)
    store.register_node("receiver", "hostS:11:bb")
    _beat_ago(store, "hostS:11:bb", timedelta(minutes=3))
    store.record_config("hostT:12:cc", 1, "d1", "applied")  # an older engine's: no node
    client = client_for(store, tmp_path, Role.VIEWER)
    rows = {row[0]: row for row in cells(client.get("/console/").text, "nodes")}
    assert rows[RECEIVER][1] == "receiver"
    assert rows[RECEIVER][4].endswith(" s ago") and "dead" not in rows[RECEIVER][4]
    assert rows["hostS:11:bb"][1] == "receiver" and rows["hostS:11:bb"][4].endswith("ago: dead")
    assert rows["hostT:12:cc"][1] == "receiver"
    assert rows["hostT:12:cc"][4] == "— (not known: an older engine)"


def test_on_sqlite_the_first_worker_process_is_named_leader_and_nobody_while_it_is_dead(
    tmp_path: Path,
) -> None:
    """An ``engine serve`` with two worker processes: ``worker 1`` leads (engine/flow/worker.py
    campaigns only there on SQLite), whichever started first; while it is dead, nobody does
    (the dashboard's "No node leads now"), not ``worker 2``."""
    from engine.store import create_db_engine
    from engine.store.nodes import worker_role

    store = SqlMessageStore(create_db_engine(f"sqlite:///{tmp_path / 'engine.db'}"))
    store.migrate()
    second = store.register_node(worker_role(1, 2))  # started first: the other was restarted
    first = store.register_node(worker_role(0, 2))
    state = store.cluster_state()
    assert {n.id: n.role for n in state.nodes} == {first: "worker 1", second: "worker 2"}
    assert [n.id for n in state.nodes if n.leader] == [first] and state.leader == first
    _beat_ago(store, first, DEAD_AFTER + timedelta(seconds=5))  # killed
    state = store.cluster_state()
    assert not any(n.leader for n in state.nodes) and state.leader is None
    # one process alone, or an engine worker: plain "worker", and it leads
    alone = store.register_node(worker_role())
    assert store.cluster_state().leader == alone
