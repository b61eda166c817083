"""A resend or a control ID reused (engine/store/resends.py), on both databases: a key already
held is a duplicate only when the content is the same (line ends and MSH-7 aside); other content
under it is a message of its own, stored with a warning, and its own resends are found in turn."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, insert, select, text, update

from engine.store import Incoming, Processed, SqlMessageStore, Stored
from engine.store.resends import content_digest, reused_key
from engine.store.tables import messages

KEY = "FRONTDESK|CLINIC|CTRL-1"
MSG = (
    "MSH|^~\\&|FRONTDESK|CLINIC|ENGINE|HUB|{when}||ADT^A08|CTRL-1|P|2.5.1\r"
    "PID|1||MRN{mrn}^^^CLINIC^MR||Testpatient^{given}\r"
)


def raw(mrn: int = 1, given: str = "Alice", when: str = "20261207031500") -> bytes:
    return MSG.format(mrn=mrn, given=given, when=when).encode()


def item(body: bytes, key: str | None = KEY, kind: str = "hl7v2") -> Incoming:
    return Incoming(raw=body, channel="mllp", kind=kind, control_id="CTRL-1", dedupe_key=key)


def _row(store: SqlMessageStore, mid: int) -> tuple[bytes, str | None, str | None]:
    with store.db_engine.connect() as conn:
        row = conn.execute(
            select(messages.c.raw, messages.c.dedupe_key, messages.c.warnings).where(
                messages.c.id == mid
            )
        ).one()
    return bytes(row.raw), row.dedupe_key, row.warnings


def test_the_digest_leaves_out_line_ends_and_msh7_only() -> None:
    base = content_digest(raw())
    assert content_digest(raw().replace(b"\r", b"\n")) == base
    assert content_digest(raw().replace(b"\r", b"\r\n") + b"\r\n\r\n") == base
    assert content_digest(raw(when="20261207031502")) == base  # a resend stamped anew
    assert content_digest(raw(given="Alicia")) != base
    assert content_digest(raw(mrn=2)) != base
    # any other MSH field counts: MSH-9 (the event) and MSH-11 (processing id)
    assert content_digest(raw().replace(b"ADT^A08", b"ADT^A31")) != base
    assert content_digest(raw().replace(b"|P|2.5.1", b"|T|2.5.1")) != base
    # a field moved across the MSH-7 position is not the same message
    assert content_digest(b"MSH|^~\\&|A|B|C|D|X|\r") != content_digest(b"MSH|^~\\&|A|B|C|D||X\r")
    assert content_digest(b"no header at all") != content_digest(b"no header at al1")
    # what the parser skips before MSH, in any order: a byte-order mark, blanks, framing
    assert content_digest(b"\xef\xbb\xbf" + raw(when="1")) == base
    assert content_digest(b" \x0b\xef\xbb\xbf" + raw(when="1")) == base
    # another field separator: its MSH-7 is left out all the same
    other = raw().replace(b"|", b"#")
    assert content_digest(other.replace(b"20261207031500", b"20261208")) == content_digest(other)
    assert content_digest(other) != base


def test_the_reused_key_keeps_its_digest_whole_within_the_width() -> None:
    digest = content_digest(raw())
    assert reused_key(KEY, digest, 700) == f"{KEY}|#{digest}"
    long = reused_key("x" * 700, digest, 700)
    assert len(long) == 700 and long.endswith(f"|#{digest}")


def test_a_reused_control_id_is_stored_and_its_resends_found(store: SqlMessageStore) -> None:
    [alice] = store.save_batch([item(raw())])
    batch = [
        item(raw(mrn=2, given="Bob")),  # the same MSH-10 from the same sender, another patient
        item(raw().replace(b"CTRL-1", b"CTRL-2"), key=KEY.replace("CTRL-1", "CTRL-2")),
        item(raw(when="20261207031509").replace(b"\r", b"\n")),  # Alice's resend, stamped anew
    ]
    bob, other, resend = store.save_batch(batch)
    assert (bob.duplicate, bob.reused) == (False, True)
    assert (other.duplicate, other.reused) == (False, False)
    assert (resend.id, resend.duplicate) == (alice.id, True)
    # SQLite looks keys up first and keeps the batch's order; PostgreSQL finds the reuse after
    # its insert, and may add Bob's row after the batch's others (a batch holds one message of
    # each connection at most, so no sender's order changes)
    assert alice.id < min(bob.id, other.id)
    if store.db_engine.dialect.name != "postgresql":
        assert bob.id < other.id
    body, key, warnings = _row(store, bob.id)
    assert body == batch[0].raw
    assert key == f"{KEY}|#{content_digest(batch[0].raw)}"
    assert warnings is not None and "control ID (MSH-10) CTRL-1 was used before" in warnings
    assert _row(store, alice.id)[2] is None  # the original is left as it was

    # Bob's resend finds Bob's row; a third content under the key is a third message
    again, carol = store.save_batch([item(raw(mrn=2, given="Bob")), item(raw(3, "Carol"))])
    assert (again.id, again.duplicate) == (bob.id, True)
    assert (carol.duplicate, carol.reused) == (False, True) and carol.id > bob.id
    assert len(store.list(limit=10)) == 4


def test_within_a_batch_each_content_is_stored_once(store: SqlMessageStore) -> None:
    a1, b1, a2, b2 = store.save_batch(
        [item(raw()), item(raw(2, "Bob")), item(raw()), item(raw(2, "Bob", when="2026"))]
    )
    assert [s.duplicate for s in (a1, b1, a2, b2)] == [False, False, True, True]
    assert (a2.id, b2.id) == (a1.id, b1.id) and a1.id < b1.id
    assert b1.reused and not a1.reused


def test_a_pulled_resource_is_keyed_by_its_version_not_its_bytes(store: SqlMessageStore) -> None:
    """Only HL7v2 is compared: a FHIR appointment pulled again at the same version (its key,
    engine/jobs/pull.py) is the same message, whatever its Bundle's bytes."""
    [first] = store.save_batch([item(b'{"v": 1}', key="pull|epic|Appointment/1|v1", kind="fhir")])
    [again] = store.save_batch([item(b'{"v": 2}', key="pull|epic|Appointment/1|v1", kind="fhir")])
    assert (again.id, again.duplicate) == (first.id, True)


def test_the_receipt_warning_stays_when_the_message_is_finished(store: SqlMessageStore) -> None:
    store.save_batch([item(raw())])
    bob, carol = store.save_batch([item(raw(2, "Bob")), item(raw(3, "Carol"))])
    claimed = [mid for mid, _, _ in store.claim_received("w1")]
    assert sorted(claimed[1:]) == sorted([bob.id, carol.id])
    assert claimed[0] < min(bob.id, carol.id)
    done = [
        Processed(claimed[0], "unrouted", worker="w1", warnings="PD1-3 taken by no map"),
        Processed(bob.id, "unrouted", worker="w1", warnings="PD1-3 taken by no map"),
        Processed(carol.id, "unrouted", worker="w1"),
    ]
    store.finish_batch(done)
    note = _row(store, carol.id)[2]
    assert note is not None and note.startswith("control ID (MSH-10) CTRL-1")
    assert _row(store, bob.id)[2] == f"{note}\nPD1-3 taken by no map"
    assert _row(store, claimed[0])[2] == "PD1-3 taken by no map"
    view = store.get(bob.id)
    assert view is not None and view.warnings == (note, "PD1-3 taken by no map")


def test_another_writers_insert_of_the_key_with_other_content(store: SqlMessageStore) -> None:
    """PostgreSQL: another writer (or node) holds an uncommitted insert of the key with other
    content. The batch waits for it, finds the content differs, and stores its message under
    the reused key, with the batch's ids still in its order."""
    if store.db_engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer")
    done: list[Stored] = []
    errors: list[BaseException] = []
    batch = [
        item(raw(5, "Dan"), key="FRONTDESK|CLINIC|CTRL-5"),
        item(raw(2, "Bob")),
        item(raw(6, "Eve"), key="FRONTDESK|CLINIC|CTRL-6"),
    ]

    def save() -> None:
        try:
            done.extend(store.save_batch(batch))
        except BaseException as exc:  # reported below
            errors.append(exc)

    with store.db_engine.connect() as other:
        other.begin()
        now = datetime.now(UTC)
        values = {"channel": "mllp", "kind": "hl7v2", "size": 1, "state": "received"}
        values |= {"received_at": now, "updated_at": now}
        other.execute(insert(messages).values(raw=raw(), dedupe_key=KEY, **values))
        saver = threading.Thread(target=save)
        saver.start()
        time.sleep(0.5)
        assert saver.is_alive(), "the batch did not wait for the other insert"
        other.commit()
    saver.join(10)
    assert errors == []
    dan, bob, eve = done
    assert [s.duplicate for s in done] == [False, False, False] and bob.reused
    assert dan.id < eve.id < bob.id  # Bob's added after the batch's others
    assert _row(store, bob.id)[:2] == (batch[1].raw, f"{KEY}|#{content_digest(batch[1].raw)}")
    # the same content as the other writer's is a resend of it
    [resend] = store.save_batch([item(raw())])
    assert resend.duplicate and resend.id < dan.id


def test_two_writers_store_the_same_new_content_under_a_reused_key_once(
    store: SqlMessageStore,
) -> None:
    """Two writers (or nodes) each take the same message reusing a control ID at once: one row
    under the reused key, and both answers point at it."""
    store.save_batch([item(raw())])
    results: list[list[Stored]] = []
    errors: list[BaseException] = []
    gate = threading.Barrier(2)

    def save(n: int) -> None:
        try:
            gate.wait(5)
            results.append(store.save_batch([item(raw(2, "Bob")), item(raw(10 + n, "X"), None)]))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert errors == []
    bobs = sorted(((r[0].id, r[0].duplicate) for r in results), key=lambda b: b[1])
    assert bobs[0][1] is False and bobs[1] == (bobs[0][0], True)
    with store.db_engine.connect() as conn:
        rows = conn.execute(select(messages.c.id).where(messages.c.dedupe_key.like(f"{KEY}|#%")))
        assert [r.id for r in rows] == [bobs[0][0]]


def test_a_reused_key_adds_its_row_without_writing_the_batch_again(
    store: SqlMessageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: a feed whose control IDs restart has a reuse in nearly every batch; the
    reused message's row is added by a second insert of that row alone, not by taking the
    batch back and writing it twice."""
    if store.db_engine.dialect.name != "postgresql":
        pytest.skip("SQLite looks keys up before it inserts")
    from engine.store import messages as module

    store.save_batch([item(raw())])
    sizes: list[int] = []
    real = module.insert_messages

    def counted(conn: object, rows: list[object], now: object, guards: object) -> object:
        sizes.append(len(rows))
        return real(conn, rows, now, guards)  # type: ignore[arg-type]

    monkeypatch.setattr(module, "insert_messages", counted)
    batch = [item(raw(5, "Dan"), key=None), item(raw(2, "Bob")), item(raw(6, "Eve"), key=None)]
    dan, bob, eve = store.save_batch(batch)
    assert sizes == [3, 1]
    assert bob.reused and dan.id < eve.id < bob.id
    assert len(store.list(limit=10)) == 4


def _settle_long_ago(store: SqlMessageStore, mid: int) -> None:
    """The message delivered 60 days ago: retention's to purge."""
    long_ago = datetime.now(UTC) - timedelta(days=60)
    with store.db_engine.begin() as conn:
        conn.execute(
            update(messages)
            .where(messages.c.id == mid)
            .values(state="delivered", updated_at=long_ago)
        )


def test_a_reused_control_ids_resend_is_found_after_the_first_message_is_purged(
    store: SqlMessageStore,
) -> None:
    """Bob's message reuses Alice's control ID and is stored under the digest-keyed key; then
    retention purges Alice's. Bob's resend must still find Bob's row (before the guard it found
    the plain key free and was stored and routed a second time); a message new under the key
    is stored under it, and Bob's resend after that still finds Bob."""
    [alice] = store.save_batch([item(raw())])
    [bob] = store.save_batch([item(raw(2, "Bob"))])
    assert bob.reused
    _settle_long_ago(store, alice.id)
    assert store.purge_range(timedelta(days=30)).rows == 1
    # alone, and in a batch beside a new message of another key
    [again] = store.save_batch([item(raw(2, "Bob", when="20261207040000"))])
    assert (again.id, again.duplicate) == (bob.id, True)
    other = KEY.replace("CTRL-1", "CTRL-9")
    new, resend = store.save_batch([item(raw(9, "Ivy"), key=other), item(raw(2, "Bob"))])
    assert (new.duplicate, resend.id, resend.duplicate) == (False, bob.id, True)
    # Alice's resend: her message was purged, so it is a message again, under the plain key
    [alice2] = store.save_batch([item(raw())])
    assert (alice2.duplicate, alice2.reused) == (False, False)
    assert _row(store, alice2.id)[1] == KEY
    [bob3] = store.save_batch([item(raw(2, "Bob"))])
    assert (bob3.id, bob3.duplicate) == (bob.id, True)
    with store.db_engine.connect() as conn:
        keys = sorted(conn.execute(select(messages.c.dedupe_key)).scalars())
    assert keys == sorted([KEY, f"{KEY}|#{content_digest(raw(2, 'Bob'))}", other])


def test_a_batch_of_new_messages_is_still_one_lookup_or_one_insert(
    store: SqlMessageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guards cost no statement of their own: SQLite looks a batch's keys and guards up
    in one lookup before its one insert; PostgreSQL's one insert checks both, no lookup."""
    from engine.store import messages as module

    looked: list[int] = []
    inserted: list[int] = []
    known, insert_messages = module.holders, module.insert_messages

    def counted_known(conn: object, keys: object, **options: bool) -> object:
        looked.append(1)
        return known(conn, keys, **options)  # type: ignore[arg-type]

    def counted_insert(conn: object, rows: list[object], *args: object) -> object:
        inserted.append(len(rows))
        return insert_messages(conn, rows, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(module, "holders", counted_known)
    monkeypatch.setattr(module, "insert_messages", counted_insert)
    batch = [item(raw(n, "New"), key=f"FRONTDESK|CLINIC|NEW-{n}") for n in range(4)]
    assert not any(s.duplicate or s.reused for s in store.save_batch(batch))
    assert looked == ([] if store.db_engine.dialect.name == "postgresql" else [1])
    assert inserted == [4]


def test_a_guard_held_by_other_content_does_not_stop_the_message(store: SqlMessageStore) -> None:
    """A key built to collide with a new message's guard (the key plus its digest), held by
    other content: the message is stored under its own key, as on SQLite, not skipped round
    after round until the batch fails (PostgreSQL's insert skips a row whose guard is held)."""
    guard = reused_key(KEY, content_digest(raw()), 700)
    for kind, body in (("hl7v2", raw(7, "Mallory")), ("fhir", b'{"resourceType": "Patient"}')):
        with store.db_engine.begin() as conn:
            conn.execute(messages.delete())
            conn.execute(
                insert(messages).values(
                    received_at=datetime.now(UTC),
                    channel="mllp",
                    peer="",
                    kind=kind,
                    size=len(body),
                    raw=body,
                    control_id="X",
                    dedupe_key=guard,
                    patient_key="",
                    state="received",
                    updated_at=datetime.now(UTC),
                )
            )
        [alice] = store.save_batch([item(raw())])
        assert (alice.duplicate, alice.reused) == (False, False), kind
        assert _row(store, alice.id)[:2] == (raw(), KEY)


def test_guards_hold_across_the_statements_of_a_large_batch(
    store: SqlMessageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL splits a batch's rows into statements by size: each statement checks its own
    rows' guards (here every row a statement of its own)."""
    import engine.store.lists as lists

    [alice] = store.save_batch([item(raw())])
    [bob] = store.save_batch([item(raw(2, "Bob"))])
    _settle_long_ago(store, alice.id)
    assert store.purge_range(timedelta(days=30)).rows == 1
    monkeypatch.setattr(lists, "JSON_ROWS_BYTES", 1)
    batch = [
        item(raw(n, "New"), key=f"FRONTDESK|CLINIC|NEW-{n}") if n != 2 else item(raw(2, "Bob"))
        for n in range(5)
    ]
    results = store.save_batch(batch)
    assert [r.duplicate for r in results] == [False, False, True, False, False]
    assert results[2].id == bob.id
    ids = [r.id for n, r in enumerate(results) if n != 2]
    assert ids == sorted(ids) and len(set(ids)) == 4


def _large(when: str = "20261207031500", given: str = "Alice") -> bytes:
    """An MDM-sized message (an embedded report), over DIGEST_STORED_FROM."""
    report = "".join(
        f"OBX|{n}|TX|REPORT||line {n} of a long report {'x' * 60}\r" for n in range(1200)
    )
    return raw(given=given, when=when) + report.encode()


def _digest_of(store: SqlMessageStore, mid: int) -> str | None:
    with store.db_engine.connect() as conn:
        return conn.execute(select(messages.c.digest).where(messages.c.id == mid)).scalar_one()


def test_a_large_message_keeps_its_digest_and_its_resend_is_not_hashed_again(
    store: SqlMessageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large message (an MDM's report) is stored with its content's digest; its resend is
    compared with that digest, the original's bytes neither read back nor hashed again (on
    SQLite that hash was under the writers' lock: 0.4 s a 100 MB); a small message keeps none,
    and another large one under the same control ID is still told apart."""
    from engine.store import resends as module
    from engine.store.resends import DIGEST_STORED_FROM

    body = _large()
    assert len(body) >= DIGEST_STORED_FROM
    [first] = store.save_batch([item(body)])
    assert _digest_of(store, first.id) == content_digest(body)
    [small] = store.save_batch([item(raw(mrn=9), key=KEY.replace("CTRL-1", "CTRL-9"))])
    assert _digest_of(store, small.id) is None
    hashed: list[bytes] = []
    real = module.content_digest
    monkeypatch.setattr(module, "content_digest", lambda b: hashed.append(b) or real(b))
    [resend] = store.save_batch([item(_large(when="20261207041500").replace(b"\r", b"\n"))])
    assert (resend.id, resend.duplicate) == (first.id, True)
    [other] = store.save_batch([item(_large(given="Alicia"))])
    assert (other.duplicate, other.reused) == (False, True)
    assert hashed and body not in hashed  # the new messages' hashed, the stored original never
    monkeypatch.undo()
    with store.db_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(messages)).scalar_one() == 3


def test_a_large_original_stored_without_its_digest_is_hashed_when_compared(
    store: SqlMessageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One stored before migration 0027 (no digest): its resend is compared as before, but the
    original is hashed outside the write transaction (on SQLite another writer gets the
    writers' lock meanwhile: before, the hash held it 0.4 s a 100 MB) and once, not on each
    resend."""
    from engine.store import resends as module

    _record_pids(store)
    [first] = store.save_batch([item(_large())])
    with store.db_engine.begin() as conn:
        conn.execute(update(messages).where(messages.c.id == first.id).values(digest=None))
    monkeypatch.setattr(module, "_HASHED", {})
    real, hashed, writable = module.content_digest, [], []

    def spied(body: bytes) -> str:
        if body == _large():  # the stored original, not a message being received
            hashed.append(1)
            writable.append(_another_writer_can_write(store))
        return real(body)

    monkeypatch.setattr(module, "content_digest", spied)
    [resend] = store.save_batch([item(_large(when="20261207041500"))])
    assert (resend.id, resend.duplicate) == (first.id, True)
    [again] = store.save_batch([item(_large(when="20261207042000").replace(b"\r", b"\n"))])
    assert (again.id, again.duplicate) == (first.id, True)
    [other] = store.save_batch([item(_large(given="Alicia"))])
    assert (other.duplicate, other.reused) == (False, True)
    assert hashed == [1] and writable == [True]
    # the cache lost (full, or another process): still compared, hashed outside once more
    module._HASHED.clear()
    [third] = store.save_batch([item(_large(when="20261207043000"))])
    assert (third.id, third.duplicate) == (first.id, True) and writable == [True, True]


def _another_writer_can_write(store: SqlMessageStore) -> bool:
    """Whether a write transaction elsewhere starts at once: on SQLite, BEGIN IMMEDIATE with no
    wait; on PostgreSQL, whether a session holds a write transaction open (one with a
    transaction id: the lookup's row locks take one, a read does not)."""
    if store.db_engine.dialect.name == "sqlite":
        import sqlite3

        path = store.db_engine.url.database
        other = sqlite3.connect(str(path), timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
            return True
        except sqlite3.OperationalError:
            return False
        finally:
            other.close()
    # this store's sessions only: other tests' (another pytest on the same database) may write
    assert _STORE_PIDS, "the store's connections were not recorded (_record_pids)"
    with store.db_engine.connect() as conn:
        open_ = conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND backend_xid IS NOT NULL "
                "AND pid = ANY(:pids)"
            ),
            {"pids": sorted(_STORE_PIDS)},
        ).scalar_one()
    return open_ == 0


#: the backend pids of the store's connections (PostgreSQL), for _another_writer_can_write
_STORE_PIDS: set[int] = set()


def _record_pids(store: SqlMessageStore) -> None:
    """From now on each new connection of ``store`` adds its backend pid to _STORE_PIDS."""
    from sqlalchemy import event

    _STORE_PIDS.clear()
    if store.db_engine.dialect.name != "postgresql":
        return
    store.db_engine.dispose()  # every connection from here on is a new one, recorded

    @event.listens_for(store.db_engine, "connect")
    def _pid(dbapi_connection: Any, _record: Any) -> None:
        _STORE_PIDS.add(dbapi_connection.info.backend_pid)
