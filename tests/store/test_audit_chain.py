"""The audit trail's hash chain: appends in order, and every kind of tampering found by verify —
a field changed with raw SQL, a middle record deleted, the newest deleted. On SQLite and
PostgreSQL, with concurrent writers that must never fork the chain."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, delete, func, select, text, update

from engine.audit.chain import GENESIS
from engine.audit.key import load_audit_key
from engine.store import SqlMessageStore, Who, create_db_engine
from engine.store.audit import AuditChainMissing, audit
from engine.store.db import utcnow
from engine.store.tables import audit_chain, audit_log
from tests.conftest import a_newer_message

ADMIN = Who("alice", "cli")


def _append(store: SqlMessageStore, n: int, *, actor: str = "alice") -> None:
    for i in range(n):
        store.record_audit(
            action="view-payload",
            actor=actor,
            source="api",
            message_id=None,
            outcome="ok",
            detail=f"read {i}",
            peer="127.0.0.1:5000",
            patient_key=f"CLINIC|MRN{i % 3}",
        )


def _seqs(db: Engine) -> list[tuple[int, int]]:
    with db.connect() as conn:
        return [
            (r.id, r.seq)
            for r in conn.execute(select(audit_log.c.id, audit_log.c.seq).order_by(audit_log.c.seq))
        ]


def test_records_chain_one_to_the_next_and_verify(store: SqlMessageStore) -> None:
    _append(store, 6)
    done = store.verify_audit()
    assert done.ok, done.describe()
    assert done.count == 6
    with store.db_engine.connect() as conn:
        rows = conn.execute(select(audit_log).order_by(audit_log.c.seq)).all()
        head = conn.execute(select(audit_chain)).one()
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[0].prev_hash == GENESIS
    for before, after in zip(rows, rows[1:], strict=False):
        assert after.prev_hash == before.hash
    assert (head.head_seq, head.head_hash) == (6, rows[-1].hash)
    assert "6 records verified" in done.describe()


def test_a_field_changed_with_raw_sql_is_found(store: SqlMessageStore) -> None:
    _append(store, 5)
    rid, seq = _seqs(store.db_engine)[2]
    with store.db_engine.begin() as conn:
        conn.execute(update(audit_log).where(audit_log.c.id == rid).values(actor="mallory"))
    done = store.verify_audit()
    assert not done.ok
    assert (done.problem_id, done.problem_seq) == (rid, seq)
    assert "hash mismatch" in done.problem
    assert f"record id {rid} (seq {seq})" in done.describe()


@pytest.mark.parametrize("column", ["outcome", "patient_key", "at", "detail"])
def test_any_field_changed_breaks_the_record(store: SqlMessageStore, column: str) -> None:
    _append(store, 3)
    rid, _ = _seqs(store.db_engine)[1]
    value = "2020-01-01 00:00:00" if column == "at" else "x"
    with store.db_engine.begin() as conn:
        conn.execute(
            text(f"UPDATE audit_log SET {column} = :v WHERE id = :id"), {"v": value, "id": rid}
        )
    done = store.verify_audit()
    assert not done.ok and done.problem_id == rid and "hash mismatch" in done.problem


def test_a_deleted_middle_record_is_found(store: SqlMessageStore) -> None:
    _append(store, 5)
    rid, seq = _seqs(store.db_engine)[2]
    with store.db_engine.begin() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.id == rid))
    done = store.verify_audit()
    assert not done.ok
    assert done.problem_seq == seq + 1  # the record after the gap names it
    assert f"seq {seq}..{seq} missing" in done.problem
    assert done.count == 2


def test_a_deleted_record_with_seqs_renumbered_is_found_by_its_link(
    store: SqlMessageStore,
) -> None:
    _append(store, 4)
    rows = _seqs(store.db_engine)
    with store.db_engine.begin() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.id == rows[1][0]))
        for rid, seq in rows[2:]:  # close the gap as a careful forger would
            conn.execute(update(audit_log).where(audit_log.c.id == rid).values(seq=seq - 1))
    done = store.verify_audit()
    assert not done.ok and done.problem_id == rows[2][0]
    assert "previous-hash mismatch" in done.problem


def test_the_deleted_last_record_is_found_against_the_head(store: SqlMessageStore) -> None:
    _append(store, 4)
    rid, seq = _seqs(store.db_engine)[-1]
    with store.db_engine.begin() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.id == rid))
    done = store.verify_audit()
    assert not done.ok
    assert "truncated" in done.problem and f"head is seq {seq}" in done.problem
    assert done.count == 3
    assert "the chain head" in done.describe()


def test_a_missing_head_is_found_and_refuses_appends(store: SqlMessageStore) -> None:
    _append(store, 2)
    with store.db_engine.begin() as conn:
        conn.execute(delete(audit_chain))
    done = store.verify_audit()
    assert not done.ok and "no chain head" in done.problem
    with pytest.raises(AuditChainMissing):
        _append(store, 1)


def test_an_empty_trail_verifies(store: SqlMessageStore) -> None:
    done = store.verify_audit()
    assert done.ok and done.count == 0


def test_a_record_rolled_back_with_its_action_leaves_the_chain_whole(
    store: SqlMessageStore,
) -> None:
    _append(store, 2)
    with pytest.raises(RuntimeError), store._tx() as conn:
        audit(conn, action="replay", actor="bob", source="cli", message_id=None, outcome="ok")
        raise RuntimeError("the action failed")
    _append(store, 1)
    assert [s for _, s in _seqs(store.db_engine)] == [1, 2, 3]
    assert store.verify_audit().ok


def test_two_records_in_one_transaction_chain_in_order(store: SqlMessageStore) -> None:
    with store._tx() as conn:
        for action in ("replay", "resend"):
            audit(conn, action=action, actor="bob", source="cli", message_id=None, outcome="ok")
    assert store.verify_audit().ok
    assert [e.action for e in store.audit_entries()] == ["resend", "replay"]


def test_concurrent_writers_never_fork_the_chain(store: SqlMessageStore) -> None:
    """Eight threads, each with its own engine (as separate nodes would), append at once."""
    url = store.db_engine.url.render_as_string(hide_password=False)
    errors: list[BaseException] = []

    def node(n: int) -> None:
        db = create_db_engine(url)
        try:
            _append(SqlMessageStore(db), 15, actor=f"node{n}")
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            db.dispose()

    threads = [threading.Thread(target=node, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert [s for _, s in _seqs(store.db_engine)] == list(range(1, 121))
    done = store.verify_audit()
    assert done.ok and done.count == 120, done.describe()


# -- retention --------------------------------------------------------------------------------


def test_pruning_the_oldest_keeps_verify_working(store: SqlMessageStore) -> None:
    _append(store, 7)
    later = store.audit_head()
    assert later is not None
    # everything is "older than a day" as seen from two days on
    pruned = store.prune_audit(timedelta(days=1), batch=3, now=_now() + timedelta(days=2))
    # the seven, and (seen from two days on) the prunes' own records of the earlier batches
    assert pruned >= 7
    head = store.audit_head()
    assert head is not None and head.anchor_seq > 0
    done = store.verify_audit()
    assert done.ok, done.describe()
    entries = store.audit_entries(limit=5)
    assert entries[0].action == "prune-audit" and "anchored at seq" in (entries[0].detail or "")


def test_pruning_keeps_what_is_newer_than_the_cutoff(store: SqlMessageStore) -> None:
    _append(store, 4)
    assert store.prune_audit(timedelta(days=2190)) == 0
    assert store.verify_audit().count == 4
    assert store.audit_head().anchor_seq == 0  # type: ignore[union-attr]


def test_pruning_then_deleting_the_first_kept_record_is_found(store: SqlMessageStore) -> None:
    _append(store, 4)
    store.prune_audit(timedelta(days=1), batch=2, now=_now() + timedelta(days=2))
    _append(store, 3)
    first = _seqs(store.db_engine)[0]
    with store.db_engine.begin() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.id == first[0]))
    done = store.verify_audit()
    assert not done.ok and "missing" in done.problem


def test_a_tampered_old_record_is_kept_not_pruned(store: SqlMessageStore) -> None:
    _append(store, 4)
    rid, _ = _seqs(store.db_engine)[1]
    with store.db_engine.begin() as conn:
        conn.execute(update(audit_log).where(audit_log.c.id == rid).values(detail="forged"))
    assert store.prune_audit(timedelta(days=1), now=_now() + timedelta(days=2)) == 0
    with store.db_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(audit_log)).scalar_one() == 4
    assert store.verify_audit().problem_id == rid


def test_message_retention_never_deletes_audit_rows(store: SqlMessageStore) -> None:
    from tests.store.test_operator import _routed, _run

    mid = _routed(store, "a")
    _run(store)
    assert store.read_payload(mid, ADMIN) is not None  # audited, names the message
    before = store.verify_audit()
    a_newer_message(store)
    assert store.purge_range(timedelta(seconds=-60)).rows == 1  # everything delivered is old
    assert store.get(mid) is None
    after = store.verify_audit()
    assert after.ok and after.count == before.count == 1
    assert store.audit_entries()[0].message_id == mid


def _now() -> datetime:
    return utcnow()


# -- the migration ----------------------------------------------------------------------------


def test_the_migration_chains_the_records_already_there(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config

    import engine.store

    db = create_db_engine(f"sqlite:///{tmp_path / 'old.db'}")
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(engine.store.__file__).parent / "migrations"))
    with db.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0011")
        for i in range(3):
            conn.execute(
                text(
                    "INSERT INTO audit_log (at, actor, source, action, message_id, patient_key,"
                    " detail, outcome, peer) VALUES ('2026-01-0' || :d || ' 10:00:00.000000',"
                    " 'alice', 'cli', 'replay', :i, 'C|M', NULL, 'ok', NULL)"
                ),
                {"d": i + 1, "i": i + 10},
            )
    store = SqlMessageStore(db)
    store.migrate()
    # the engine opens the chain with its key: an audit-key record, keyed, after the 3 unkeyed
    store.use_audit_key(load_audit_key(tmp_path / "audit-key"))
    done = store.verify_audit()
    assert done.ok and done.count == 4, done.describe()
    assert done.keyed_from == 4 and "seq 1..3 unkeyed" in done.describe()
    _append(store, 1)
    assert store.verify_audit().count == 5
    with db.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0011")
        assert "seq" not in {c for c in conn.execute(text("SELECT * FROM audit_log")).keys()}
    db.dispose()
