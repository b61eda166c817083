"""The takeover limit is a setting (``ENGINE_NODE_DEAD_AFTER_S``, default 10 s): a host that
stands still for seconds (a paused VM) can be given longer before its node counts as dead. The
store's takeover, the resumption of job runs, the console's view of the nodes and a worker's own
``Liveness`` all read it. On SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import update

from engine.settings import Settings
from engine.store import Incoming, SqlMessageStore
from engine.store import nodes as nodes_module
from engine.store.nodes import DEAD_AFTER, Liveness, dead_after, set_dead_after
from engine.store.tables import nodes


@pytest.fixture(autouse=True)
def _default_limit() -> Iterator[None]:
    yield
    set_dead_after(DEAD_AFTER.total_seconds())


def _stop_heart(store: SqlMessageStore, node: str, ago_s: float) -> None:
    with store.db_engine.begin() as conn:
        conn.execute(
            update(nodes)
            .where(nodes.c.id == node)
            .values(heartbeat_at=datetime.now(UTC) - timedelta(seconds=ago_s))
        )


def test_a_node_silent_for_15_s_is_dead_at_10_and_alive_at_30(store: SqlMessageStore) -> None:
    paused = store.register_node("worker")
    [stored] = store.save_batch([Incoming(raw=b"MSH|", channel="test", patient_key="P")])
    assert [m for m, _, _ in store.claim_received(paused, limit=1)] == [stored.id]
    _stop_heart(store, paused, ago_s=15)

    set_dead_after(30)
    assert dead_after() == timedelta(seconds=30)
    assert store.take_over().nodes == ()  # a VM paused 15 s keeps its claims
    assert [n.id for n in store.cluster_state().nodes if n.alive] == [paused]

    set_dead_after(10)
    taken = store.take_over()
    assert taken.nodes == (paused,) and taken.messages == 1
    assert [n.alive for n in store.cluster_state().nodes if n.id == paused] == [False]


def test_a_nodes_own_liveness_follows_the_limit() -> None:
    """Claims made before a gap of half the limit between two heartbeats are checked before
    they are sent: 8 s is such a gap at 10 s, not at 30 s."""
    now = [100.0]
    for limit, gap_breaks_trust in ((10, True), (30, False)):
        set_dead_after(limit)
        alive = Liveness(since=now[0], clock=lambda: now[0])
        epoch = alive.epoch
        now[0] += 8
        alive.beaten(now[0], written=True)
        assert alive.sure(epoch) is not gap_breaks_trust


def test_the_limit_is_refused_below_three_heartbeats(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="6 s at the least"):
        set_dead_after(5)
    assert dead_after() == DEAD_AFTER
    with pytest.raises(ValidationError, match="node_dead_after_s"):
        Settings(var_dir=tmp_path, node_dead_after_s=5)
    with pytest.raises(ValidationError, match="node_dead_after_s"):
        Settings(var_dir=tmp_path, node_dead_after_s=121)


def test_opening_the_database_applies_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.startup import open_database

    monkeypatch.setenv("ENGINE_NODE_DEAD_AFTER_S", "45")
    from engine.settings import load_settings

    settings = load_settings(database_url=f"sqlite:///{tmp_path / 'engine.db'}")
    db_engine, _ = open_database(settings)
    db_engine.dispose()
    assert nodes_module.dead_after() == timedelta(seconds=45)
