"""The takeover limit is a setting (``ENGINE_NODE_DEAD_AFTER_S``, default 10 s): a host that
stands still for seconds (a paused VM) can be given longer before its node counts as dead. The
store's takeover, the resumption of job runs, the console's view of the nodes and a worker's own
``Liveness`` all read it. On SQLite and PostgreSQL."""

from __future__ import annotations

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


def test_a_node_with_a_longer_limit_is_judged_by_its_own(store: SqlMessageStore) -> None:
    """Nodes given different limits (a rolling change): a node trusts its claims for half its
    own limit after a heartbeat, so a taker with a shorter limit waits for the longer one; the
    console shows it alive as long."""
    set_dead_after(30)
    patient = store.register_node("worker")  # its row says 30 s
    [stored] = store.save_batch([Incoming(raw=b"MSH|", channel="test", patient_key="P")])
    assert [m for m, _, _ in store.claim_received(patient, limit=1)] == [stored.id]
    set_dead_after(10)  # this process, the taker, says 10 s
    _stop_heart(store, patient, ago_s=15)
    assert store.take_over().nodes == ()
    assert [n.alive for n in store.cluster_state().nodes if n.id == patient] == [True]
    _stop_heart(store, patient, ago_s=31)
    assert store.take_over().nodes == (patient,)


def test_an_interrupted_run_waits_for_the_limit(store: SqlMessageStore) -> None:
    leader = store.register_node("worker")
    run_at = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)
    assert store.start_job_run("eligibility:nightly", run_at, leader)
    _stop_heart(store, leader, ago_s=15)
    set_dead_after(30)
    assert store.interrupted_runs("eligibility:") == []
    set_dead_after(10)
    [run] = store.interrupted_runs("eligibility:")
    assert (run.job_id, run.node) == ("eligibility:nightly", leader)


def test_a_node_trusts_its_claims_for_half_its_own_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``sure``: with no heartbeat since, 8 s is past half of 10 s and within half of 30 s; a
    gap between two heartbeats that breaks the trust is logged."""
    now = [0.0]
    set_dead_after(30)
    alive = Liveness(since=0.0, clock=lambda: now[0])
    now[0] = 8.0
    assert alive.sure(alive.epoch)
    set_dead_after(10)
    assert not alive.sure(alive.epoch)
    with caplog.at_level("WARNING", logger="engine.store.nodes"):
        alive.beaten(8.0, written=True)
    assert alive.epoch == 1
    assert "heartbeats stood still" in caplog.text


def test_a_long_dead_nodes_limit_no_longer_holds_the_others_up(store: SqlMessageStore) -> None:
    """A node's row stays a day after it died: once it has been silent past the longest limit
    a node may have (120 s), its own limit no longer counts (a limit lowered everywhere takes
    effect)."""
    set_dead_after(60)
    gone = store.register_node("worker")
    set_dead_after(10)
    paused = store.register_node("worker")
    [stored] = store.save_batch([Incoming(raw=b"MSH|", channel="test", patient_key="P")])
    assert [m for m, _, _ in store.claim_received(paused, limit=1)] == [stored.id]
    _stop_heart(store, gone, ago_s=200)
    _stop_heart(store, paused, ago_s=15)
    assert [n.alive for n in store.cluster_state().nodes if n.id == paused] == [False]
    assert store.take_over().nodes == (paused,)


def test_the_limit_is_refused_above_its_bound() -> None:
    with pytest.raises(ValueError, match="120 s at most"):
        set_dead_after(121)
    assert dead_after() == DEAD_AFTER
