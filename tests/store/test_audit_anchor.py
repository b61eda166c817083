"""The chain's anchor is tied to the trail (review13 M4): the oldest records deleted by hand with
the anchor moved to match are found, since the anchor must be the one the newest prune-audit
record names (seq 0 and GENESIS when there is none). On SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, select, update

from engine.audit.chain import GENESIS
from engine.store import SqlMessageStore
from engine.store.db import utcnow
from engine.store.tables import audit_chain, audit_log
from tests.store.test_audit_chain import _append


def _move_anchor(store: SqlMessageStore, upto: int) -> None:
    """The reviewer's reproduction: delete seq <= upto, anchor the chain at the last deleted."""
    with store.db_engine.begin() as conn:
        last = conn.execute(select(audit_log.c.hash).where(audit_log.c.seq == upto)).scalar_one()
        conn.execute(delete(audit_log).where(audit_log.c.seq <= upto))
        conn.execute(
            update(audit_chain)
            .where(audit_chain.c.id == 1)
            .values(anchor_seq=upto, anchor_hash=last)
        )


def test_the_oldest_deleted_and_the_anchor_moved_is_found(store: SqlMessageStore) -> None:
    _append(store, 30)
    _move_anchor(store, 20)
    done = store.verify_audit()
    assert not done.ok
    assert "anchor" in done.problem and "seq 20" in done.problem
    assert "GENESIS" in done.problem or "seq 0" in done.problem
    assert "broken" in done.describe()


def test_a_real_prune_verifies_and_names_its_anchor(store: SqlMessageStore) -> None:
    _append(store, 7)
    store.prune_audit(timedelta(days=1), batch=3, now=utcnow() + timedelta(days=2))
    head = store.audit_head()
    assert head is not None and head.anchor_seq > 0
    done = store.verify_audit()
    assert done.ok, done.describe()
    assert (done.anchor_seq, done.anchor_hash) == (head.anchor_seq, head.anchor_hash)
    assert f"anchored at seq {head.anchor_seq}" in done.describe()
    _append(store, 2)
    assert store.verify_audit().ok


def test_after_a_prune_deleting_more_and_moving_the_anchor_is_found(
    store: SqlMessageStore,
) -> None:
    _append(store, 4)
    store.prune_audit(timedelta(days=1), batch=2, now=utcnow() + timedelta(days=2))
    _append(store, 10)
    head = store.audit_head()
    assert head is not None
    # keep the newest prune-audit record, delete records after the real anchor
    with store.db_engine.connect() as conn:
        seqs = [
            r.seq
            for r in conn.execute(
                select(audit_log.c.seq, audit_log.c.action).order_by(audit_log.c.seq)
            )
        ]
    _move_anchor(store, seqs[-3])
    done = store.verify_audit()
    assert not done.ok and "anchor" in done.problem


def test_a_fresh_trail_is_anchored_at_genesis(store: SqlMessageStore) -> None:
    _append(store, 2)
    done = store.verify_audit()
    assert done.ok and (done.anchor_seq, done.anchor_hash) == (0, GENESIS)
    assert "anchored at seq 0" in done.describe()
