"""``save_batch``, the receiver's group commit, on both databases: each message's id is its own
row's (checked by its control id and bytes), duplicates point at their original, and on
PostgreSQL (one INSERT ... ON CONFLICT DO NOTHING of JSON rows, engine/store/messages.py) the
same holds cut into several statements and with two writers at once."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select

from engine.store import Incoming, SqlMessageStore, lists
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
        _item(1, "SENDER|SITE|C1"),  # resent within the batch: message 1's id
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
