"""``save_batch``, the receiver's group commit, on both databases: each message's id is its own
row's (checked by its control id and bytes), duplicates point at their original, and on
PostgreSQL (one INSERT ... ON CONFLICT DO NOTHING of JSON rows, engine/store/messages.py) the
same holds cut into several statements and with two writers at once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import Connection, delete, select, update

import engine.store.messages as store_module
from engine.settings import Settings
from engine.store import Incoming, SqlMessageStore, Stored, lists
from engine.store.messages import utcnow
from engine.store.tables import messages

RAWS = [
    b"MSH|^~\\&|A|B\r\x00PID|1||\xff\xfe\x80\r",
    'MSH|^~\\&|A|B\rPID|1||Zoë "Z" 🦷\\u0000\r'.encode(),
    bytes(range(256)) * 9,
]


def _item(n: int, key: str | None, raw: bytes | None = None) -> Incoming:
    return Incoming(
        raw=raw if raw is not None else b"MSH|^~\\&|SENDER|SITE|||||ADT^A08|C%d|P|2.5.1\r" % n,
        channel="mllp",
        peer="127.0.0.1:9",
        control_id=f"C{n}",
        message_type="ADT",
        trigger="A08",
        dedupe_key=key,
        patient_key=f"SITE|MRN{n}",
        state="received" if key else "error",
        reason=None if key else "no MSH",
    )


@pytest.mark.parametrize("limit", [lists.JSON_ROWS_BYTES, 1], ids=["one-text", "a-text-a-row"])
def test_a_batch_of_new_resent_and_keyless_messages(
    store: SqlMessageStore, limit: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    [original] = store.save_batch([_item(0, "SENDER|SITE|C0")])
    monkeypatch.setattr(lists, "JSON_ROWS_BYTES", limit)
    batch = [
        _item(1, "SENDER|SITE|C1", RAWS[0]),
        _item(0, "SENDER|SITE|C0"),  # stored before: a duplicate of the original
        _item(2, None, RAWS[1]),  # unreadable: no key, always stored
        _item(1, "SENDER|SITE|C1", RAWS[0]),  # resent within the batch: message 1's id
        _item(3, "SENDER|SITE|C3", RAWS[2]),
        _item(4, None),
    ]
    stored = store.save_batch(batch)

    assert [s.duplicate for s in stored] == [False, True, False, True, False, False]
    assert (stored[1].id, stored[1].received_at) == (original.id, original.received_at)
    assert stored[3].id == stored[0].id
    new = [stored[i].id for i in (0, 2, 4, 5)]
    assert new == sorted(new) and len(set(new)) == 4 and original.id < new[0]
    with store.db_engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(select(messages)).all()}
    assert len(rows) == 5
    for i in (0, 2, 4, 5):
        row = rows[stored[i].id]
        assert (row.control_id, row.raw, row.state) == (
            batch[i].control_id,
            batch[i].raw,
            batch[i].state,
        )
        assert (row.size, row.dedupe_key, row.patient_key) == (
            len(batch[i].raw),
            batch[i].dedupe_key,
            batch[i].patient_key,
        )
    assert rows[stored[2].id].reason == "no MSH"


def test_two_writers_at_once_each_id_its_own_message(store: SqlMessageStore) -> None:
    """Two threads store 40 batches of 5 each at the same time (ids from one sequence, drawn
    in turns): every id returned is the row of that message, each batch's in its order."""
    results: dict[int, list[tuple[int, str]]] = {}
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            got: list[tuple[int, str]] = []
            for b in range(40):
                items = [_item(w * 1000 + b * 10 + i, f"K{w}-{b}-{i}") for i in range(5)]
                stored = store.save_batch(items)
                ids = [s.id for s in stored]
                assert ids == sorted(ids)
                got += [(s.id, it.control_id or "") for s, it in zip(stored, items, strict=True)]
            results[w] = got
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    with store.db_engine.connect() as conn:
        control = {
            r.id: r.control_id for r in conn.execute(select(messages.c.id, messages.c.control_id))
        }
    everything = results[1] + results[2]
    assert len(everything) == len(control) == 400
    assert all(control[mid] == cid for mid, cid in everything)


def _hold_by_update(store: SqlMessageStore, conn: Connection, mid: int) -> None:
    conn.execute(update(messages).where(messages.c.id == mid).values(state="processing"))


def _hold_by_claim(store: SqlMessageStore, conn: Connection, mid: int) -> None:
    assert [m[0] for m in store._claim_received(conn, "w1", 10, utcnow())] == [mid]


def _hold_by_finish(store: SqlMessageStore, conn: Connection, mid: int) -> None:
    conn.execute(update(messages).values(state="processing", claimed_by="w1"))
    assert list(conn.execute(store._STILL_CLAIMED, {"ids": [mid], "worker": "w1"})) != []


def _hold_by_settling(store: SqlMessageStore, conn: Connection, mid: int) -> None:
    from engine.store.deliveries import _LOCK_MESSAGES

    assert list(conn.execute(_LOCK_MESSAGES, {"ids": [mid]})) != []


def _hold_by_operator(store: SqlMessageStore, conn: Connection, mid: int) -> None:
    from engine.store.operator import _lock_message

    assert _lock_message(conn, mid) is not None


@pytest.mark.parametrize(
    "hold",
    [_hold_by_update, _hold_by_claim, _hold_by_finish, _hold_by_settling, _hold_by_operator],
    ids=["update", "claim", "finish", "settling", "replay-or-match"],
)
def test_a_resend_does_not_wait_for_a_worker_holding_its_original(
    store: SqlMessageStore, hold: Callable[[SqlMessageStore, Connection, int], None]
) -> None:
    """A transaction holding the original's row (an UPDATE, the worker's claim or finish, a
    delivery's settling, an operator's replay or match) left open: the resend is answered as
    a duplicate at once. Its lookup locks the original FOR KEY SHARE (engine/store/resends.py);
    these take FOR NO KEY UPDATE, which lets that through (with FOR UPDATE, as before the
    evening of 7 December, the resend's ACK waited for the worker's transaction)."""
    if store.db_engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer: an open write transaction holds every other")
    [original] = store.save_batch([_item(7, "SENDER|SITE|C7")])
    done: list[Stored] = []
    with store.db_engine.connect() as worker:
        worker.begin()
        hold(store, worker, original.id)
        saver = threading.Thread(
            target=lambda: done.extend(store.save_batch([_item(7, "SENDER|SITE|C7")]))
        )
        saver.start()
        saver.join(5.0)
        finished = not saver.is_alive()
        worker.rollback()
    saver.join(5.0)
    assert finished, "the resend waited for the worker's transaction"
    assert [(s.id, s.duplicate) for s in done] == [(original.id, True)]


def test_a_resend_whose_original_is_purged_meanwhile_is_stored_anew_in_order(
    store: SqlMessageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The original is deleted (retention) between the insert that skipped the resend and the
    lookup of its key: the batch is inserted again, the resend stored as a new message, and
    the batch's ids still in its order (a patient's messages are processed in id order)."""
    if store.db_engine.dialect.name != "postgresql":
        pytest.skip("SQLite looks keys up before it inserts, under its one writer's lock")
    [original] = store.save_batch([_item(8, "SENDER|SITE|C8")])
    real = store_module.holders
    purged: list[int] = []

    def known_after_purge(conn: object, keys: object, **options: bool) -> object:
        if not purged:
            with store.db_engine.begin() as other:
                other.execute(delete(messages).where(messages.c.id == original.id))
            purged.append(original.id)
        return real(conn, keys, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(store_module, "holders", known_after_purge)
    batch = [_item(11, "SENDER|SITE|C11"), _item(8, "SENDER|SITE|C8"), _item(12, "SENDER|SITE|C12")]
    stored = store.save_batch(batch)
    assert purged == [original.id]
    assert [s.duplicate for s in stored] == [False, False, False]
    ids = [s.id for s in stored]
    assert ids == sorted(ids) and original.id not in ids
    with store.db_engine.connect() as conn:
        rows = {
            r.id: r.control_id for r in conn.execute(select(messages.c.id, messages.c.control_id))
        }
    assert rows == {s.id: item.control_id for s, item in zip(stored, batch, strict=True)}


def test_a_lookup_that_never_finds_the_key_fails_the_batch(
    store: SqlMessageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four rounds at most, then the batch fails (its senders are told to send again) and
    nothing of it is stored."""
    if store.db_engine.dialect.name != "postgresql":
        pytest.skip("SQLite looks keys up before it inserts")
    [original] = store.save_batch([_item(9, "SENDER|SITE|C9")])
    lookups: list[object] = []

    def never(conn: object, keys: object, **options: bool) -> dict[str, object]:
        lookups.append(keys)
        return {}

    monkeypatch.setattr(store_module, "holders", never)
    with pytest.raises(RuntimeError, match="changed under it 4 times"):
        store.save_batch([_item(10, "SENDER|SITE|C10"), _item(9, "SENDER|SITE|C9")])
    assert len(lookups) == 4
    assert [m.id for m in store.list(limit=10)] == [original.id]


def test_a_message_is_at_most_256_mb(tmp_path: Path) -> None:
    """In base64 (a third more) it stays under PostgreSQL's 1 GB a value."""
    assert Settings(var_dir=tmp_path, max_message_bytes=256 << 20).max_message_bytes == 256 << 20
    with pytest.raises(ValidationError, match="max_message_bytes"):
        Settings(var_dir=tmp_path, max_message_bytes=(256 << 20) + 1)
