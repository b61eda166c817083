"""The audit trail keyed (issue 13): records hashed with HMAC-SHA256 and the audit key, so a
record changed and rehashed with plain SHA-256 (what whoever can write the database could do)
is found; the unkeyed records of before the key still verify; a node with another key names
both key ids; the key file is refused when it is open to others or of the wrong length. On
SQLite and PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert, select, update

from engine.audit.chain import GENESIS, ChainRecord, record_hash
from engine.audit.export import audit_event
from engine.audit.key import KEY_BYTES, AuditKey, audit_key_for, key_id_of, load_audit_key
from engine.errors import ConfigError
from engine.settings import Settings
from engine.store import SqlMessageStore
from engine.store.audit import FIELDS, bind_audit_key
from engine.store.db import utcnow
from engine.store.tables import audit_chain, audit_log
from tests.store.audit_support import append_views


@pytest.fixture
def key(tmp_path: Path) -> AuditKey:
    return load_audit_key(tmp_path / "audit-key")


@pytest.fixture
def keyed(store: SqlMessageStore, key: AuditKey) -> SqlMessageStore:
    store.use_audit_key(key)
    return store


def _append(store: SqlMessageStore, n: int) -> None:
    append_views(store, n, patient_key="CLINIC|MRN1")


def _rows(db: Engine) -> list[ChainRecord]:
    columns = (*FIELDS, "prev_hash", "hash", "key_id")
    with db.connect() as conn:
        rows = conn.execute(select(*(audit_log.c[c] for c in columns)).order_by(audit_log.c.seq))
        return [ChainRecord(**r._asdict()) for r in rows]


def _rehash_plain(db: Engine, from_seq: int, *, unkeyed: bool) -> None:
    """What whoever can write the database but not read the key does: change a record, and
    recompute its hash and every later one's (and the head) with plain SHA-256."""
    prev = GENESIS
    with db.begin() as conn:
        for r in _rows(db):
            if r.seq < from_seq:
                prev = r.hash
                continue
            detail = "read nothing" if r.seq == from_seq else r.detail
            fields = {name: getattr(r, name) for name in FIELDS} | {"detail": detail}
            own = record_hash(prev, fields)
            conn.execute(
                update(audit_log)
                .where(audit_log.c.id == r.id)
                .values(
                    detail=detail,
                    prev_hash=prev,
                    hash=own,
                    key_id=None if unkeyed else r.key_id,
                )
            )
            prev = own
            last = r.seq
        conn.execute(update(audit_chain).values(head_seq=last, head_hash=prev))


def test_records_are_keyed_and_verify(keyed: SqlMessageStore, key: AuditKey) -> None:
    _append(keyed, 3)
    rows = _rows(keyed.db_engine)
    assert {r.key_id for r in rows} == {key.key_id}
    done = keyed.verify_audit()
    assert done.ok and done.count == 3 and done.keyed_from == 1, done.describe()
    assert f"HMAC-SHA256 with key id {key.key_id}" in done.describe()


def test_a_record_changed_and_rehashed_without_the_key_is_found(keyed: SqlMessageStore) -> None:
    _append(keyed, 4)
    _rehash_plain(keyed.db_engine, 2, unkeyed=False)
    done = keyed.verify_audit()
    assert not done.ok and done.problem_seq == 2
    assert "hash mismatch: the record was changed" in done.problem


def test_records_rewritten_as_unkeyed_ones_are_found(keyed: SqlMessageStore) -> None:
    _append(keyed, 4)
    _rehash_plain(keyed.db_engine, 3, unkeyed=True)  # a downgrade after keyed records
    done = keyed.verify_audit()
    assert not done.ok and done.problem_seq == 3
    assert "unkeyed record after keyed ones (keyed from seq 1)" in done.problem
    _rehash_plain(keyed.db_engine, 1, unkeyed=True)  # the whole chain, as if never keyed
    done = keyed.verify_audit()
    assert not done.ok and done.problem.startswith("unkeyed head")
    assert "the chain head" in done.describe()


def _unkeyed_chain(db: Engine, n: int) -> None:
    """Records as an engine before the key wrote them (version 1, no key id)."""
    prev = GENESIS
    with db.begin() as conn:
        for seq in range(1, n + 1):
            fields = {
                "seq": seq,
                "at": utcnow(),
                "actor": "alice",
                "source": "cli",
                "action": "replay",
                "message_id": None,
                "patient_key": "C|M",
                "detail": None,
                "outcome": "ok",
                "peer": None,
            }
            rid = conn.execute(
                insert(audit_log)
                .values(**fields, prev_hash=prev, hash="")
                .returning(audit_log.c.id)
            ).scalar_one()
            prev = record_hash(prev, {**fields, "id": rid})
            conn.execute(update(audit_log).where(audit_log.c.id == rid).values(hash=prev))
        conn.execute(update(audit_chain).values(head_seq=n, head_hash=prev))


def test_unkeyed_records_then_keyed_ones_verify(store: SqlMessageStore, key: AuditKey) -> None:
    _unkeyed_chain(store.db_engine, 3)
    store.use_audit_key(key)  # what the engine does when it opens its store
    store.use_audit_key(key)  # only once
    _append(store, 2)
    rows = _rows(store.db_engine)
    assert [r.key_id for r in rows] == [None, None, None, key.key_id, key.key_id, key.key_id]
    assert rows[3].action == "audit-key" and key.key_id in (rows[3].detail or "")
    done = store.verify_audit()
    assert done.ok and done.count == 6 and done.keyed_from == 4, done.describe()
    assert "from seq 4; seq 1..3 unkeyed, written before the audit key" in done.describe()
    # an unkeyed record changed is still found by its plain SHA-256
    with store.db_engine.begin() as conn:
        conn.execute(update(audit_log).where(audit_log.c.seq == 2).values(actor="mallory"))
    done = store.verify_audit()
    assert not done.ok and done.problem_seq == 2 and "hash mismatch" in done.problem


def test_verify_with_another_key_names_both_key_ids(
    keyed: SqlMessageStore, key: AuditKey, tmp_path: Path
) -> None:
    _append(keyed, 2)
    other = load_audit_key(tmp_path / "other-key")
    assert other.key_id != key.key_id
    bind_audit_key(keyed.db_engine, other)
    done = keyed.verify_audit()
    assert not done.ok and done.problem_seq == 1
    assert (
        f"records from seq 1 were made with key id {key.key_id}, this node's key is "
        f"{other.key_id}" in done.describe()
    )
    assert "hash mismatch" not in done.problem


def test_the_export_names_the_algorithm_and_key_id(keyed: SqlMessageStore, key: AuditKey) -> None:
    _append(keyed, 1)
    [record] = _rows(keyed.db_engine)
    entity = audit_event(record, server="hub")["entity"][-1]
    details = {d["type"]: d["valueString"] for d in entity["detail"]}
    assert details["algorithm"] == "HMAC-SHA256" and details["key_id"] == key.key_id
    unkeyed = audit_event(record.__class__(**{**vars(record), "key_id": None}), server="hub")
    details = {d["type"]: d["valueString"] for d in unkeyed["entity"][-1]["detail"]}
    assert details["algorithm"] == "SHA-256" and "key_id" not in details


# -- the key file ----------------------------------------------------------------------------


def test_the_key_file_is_made_once_private_and_the_key_stays_out_of_repr(tmp_path: Path) -> None:
    path = tmp_path / "var" / "audit-key"
    key = audit_key_for(Settings(home=tmp_path))
    assert key.path == path
    assert path.stat().st_mode & 0o777 == 0o600 and len(path.read_bytes()) == KEY_BYTES
    assert key.secret == path.read_bytes() and key.key_id == key_id_of(key.secret)
    assert load_audit_key(path).secret == key.secret  # read again, not made again
    assert key.secret.hex() not in repr(key) and repr(key.secret) not in repr(key)
    named = Settings(home=tmp_path, audit_key_file=Path("keys/node-key"))
    assert audit_key_for(named).path == tmp_path / "keys" / "node-key"


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_a_key_file_open_to_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit-key"
    path.write_bytes(os.urandom(KEY_BYTES))
    for mode in (0o640, 0o604, 0o620):
        path.chmod(mode)
        with pytest.raises(ConfigError) as caught:
            load_audit_key(path)
        assert f"ENGINE_AUDIT_KEY_FILE: {path} is open to group or others" in str(caught.value)
        assert f"chmod 600 {path}" in str(caught.value)


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_a_key_file_of_the_wrong_length_is_refused(tmp_path: Path, size: int) -> None:
    path = tmp_path / "audit-key"
    path.write_bytes(b"k" * size)
    path.chmod(0o600)
    with pytest.raises(ConfigError) as caught:
        load_audit_key(path)
    assert f"{path} holds {size} bytes; an audit key is exactly 32 bytes" in str(caught.value)


def test_a_key_file_that_is_a_folder_or_missing_is_refused(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="is not a file"):
        load_audit_key(tmp_path / "folder")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_audit_key(tmp_path / "none", create=False)
