"""The message store keeps every byte received, with its state and reason, on SQLite and
PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from engine.store.repository import SqlMessageStore


def test_raw_bytes_kept_exactly(store: SqlMessageStore) -> None:
    raw = b"\x00\xffnot hl7 at all\r\n\x1c"
    mid = store.save_received(raw, channel="mllp", peer="127.0.0.1:5000")
    assert store.raw(mid) == raw
    rec = store.get(mid)
    assert rec is not None
    assert (rec.channel, rec.peer, rec.size, rec.state) == (
        "mllp",
        "127.0.0.1:5000",
        len(raw),
        "received",
    )
    received = rec.received_at.replace(tzinfo=None)  # SQLite returns naive UTC
    assert abs((datetime.now(UTC).replace(tzinfo=None) - received).total_seconds()) < 60


def test_describe_and_state(store: SqlMessageStore) -> None:
    mid = store.save_received(b"MSH|^~\\&|A|B\r", channel="http")
    store.describe(
        mid,
        control_id="CTRL1",
        message_type="ADT",
        trigger="A04",
        structure="ADT_A01",
        sending_application="A",
        sending_facility="B",
    )
    store.set_state(mid, "error", "segment 2: bad")
    rec = store.get(mid)
    assert rec is not None
    assert (rec.control_id, rec.message_type, rec.trigger) == ("CTRL1", "ADT", "A04")
    assert (rec.state, rec.reason) == ("error", "segment 2: bad")
    assert [r.id for r in store.list(state="error")] == [mid]
    assert store.list(state="received") == []


def test_ids_increase_and_list_newest_first(store: SqlMessageStore) -> None:
    ids = [store.save_received(f"m{i}".encode(), channel="cli") for i in range(3)]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert [r.id for r in store.list()] == ids[::-1]
    assert store.get(10**9) is None
    assert store.ping()


def test_group_commit_keeps_order_and_dedupes_within_and_across_batches(
    store: SqlMessageStore,
) -> None:
    from engine.store.repository import Incoming

    def item(n: int, key: str | None) -> Incoming:
        return Incoming(raw=f"m{n}".encode(), channel="mllp", dedupe_key=key)

    first = store.save_batch([item(0, "A|B|1"), item(1, None), item(2, "A|B|2"), item(3, "A|B|1")])
    # each new message gets its own id, in the batch's order; the resend points at the original
    assert [s.duplicate for s in first] == [False, False, False, True]
    assert first[0].id < first[1].id < first[2].id and first[3].id == first[0].id
    assert [store.raw(s.id) for s in first[:3]] == [b"m0", b"m1", b"m2"]
    again = store.save_batch([item(4, "A|B|2"), item(5, "A|B|3")])
    assert (again[0].id, again[0].duplicate) == (first[2].id, True)
    assert not again[1].duplicate and store.raw(again[1].id) == b"m5"
    assert len(store.list()) == 4


def _routed(store: SqlMessageStore, patient: str) -> int:
    """A message routed to one destination, ``dest``, for ``patient``: its id."""
    from engine.store.repository import NewDelivery, Processed

    mid = store.save_received(b"MSH|", channel="test")
    delivery = NewDelivery("dest", "r", "hl7v2", "text/plain", b"x", patient)
    store.finish_batch([Processed(mid, "routed", None, patient, [delivery])])
    return mid


def _states(store: SqlMessageStore, mids: list[int]) -> list[str]:
    return [store.deliveries_for(m)[0].state for m in mids]


def test_only_the_head_of_each_patients_queue_is_claimable(store: SqlMessageStore) -> None:
    from engine.store.repository import Outcome

    a1, a2, b1, a3 = (_routed(store, p) for p in ("A", "A", "B", "A"))
    assert _states(store, [a1, a2, b1, a3]) == ["pending", "waiting", "pending", "waiting"]
    assert store.counts()["deliveries_pending"] == 4
    claimed = store.claim_due_deliveries(10)
    assert [d.message_id for d in claimed] == [a1, b1]  # heads only, one per patient
    assert store.claim_due_deliveries(10) == []  # claimed heads are not claimed twice
    # a dead head lets the next one go, as a delivered one does; the one after still waits
    head = next(d for d in claimed if d.message_id == a1)
    store.record_outcomes([Outcome(head.id, False, "refused", None)])
    assert _states(store, [a1, a2, a3]) == ["dead", "pending", "waiting"]
    assert store.get(a1).state == "dead"  # type: ignore[union-attr]
    [second] = store.claim_due_deliveries(10)
    assert second.message_id == a2
    store.record_outcomes([Outcome(second.id, True)])
    assert _states(store, [a2, a3]) == ["delivered", "pending"]
    assert store.get(a2).state == "delivered"  # type: ignore[union-attr]


def test_upgrading_to_0005_queues_deliveries_behind_their_patients_head(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    import engine.store
    from engine.store.repository import create_db_engine

    db = create_db_engine(f"sqlite:///{tmp_path / 'old.db'}")
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(engine.store.__file__).parent / "migrations"))
    with db.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0004")
        conn.execute(
            text(
                "INSERT INTO messages (id, received_at, channel, peer, kind, size, raw, state,"
                " updated_at) VALUES (1, '2026-01-01', 't', '', 'hl7v2', 1, x'00', 'routed',"
                " '2026-01-01')"
            )
        )
        for did, patient in ((1, "A"), (2, "A"), (3, "B"), (4, "A")):
            conn.execute(
                text(
                    "INSERT INTO deliveries (id, message_id, destination, route, kind,"
                    " content_type, payload, patient_key, state, attempts, next_attempt_at,"
                    " created_at) VALUES (:id, 1, 'd', 'r', 'hl7v2', 't', x'00', :p, 'pending',"
                    " 0, '2026-01-01', '2026-01-01')"
                ),
                {"id": did, "p": patient},
            )
    SqlMessageStore(db).migrate()
    with db.connect() as conn:
        states = conn.execute(text("SELECT state FROM deliveries ORDER BY id")).scalars().all()
    assert states == ["pending", "waiting", "pending", "waiting"]
    db.dispose()


def test_sqlite_checkpoints_run_beside_the_writers_not_inside_a_commit(tmp_path: Path) -> None:
    from engine.store.repository import create_db_engine

    db = create_db_engine(f"sqlite:///{tmp_path / 'e.db'}")
    store = SqlMessageStore(db)
    store.migrate()
    for i in range(50):
        store.save_received(b"x" * 5000 + str(i).encode(), channel="test")
    with db.connect() as conn:
        # no commit checkpoints (an ACK would wait for it): the log keeps every frame...
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
    wal, main = tmp_path / "e.db-wal", tmp_path / "e.db"
    assert wal.stat().st_size > 50 * 5000
    before = main.stat().st_size
    store.checkpoint()  # ...until the checkpointer copies them into the database
    assert main.stat().st_size > before + 50 * 5000
    db.dispose()


def test_a_head_settled_while_the_next_delivery_is_queued_never_strands_it(
    store: SqlMessageStore,
) -> None:
    """The dispatcher settling a patient's head and a processor queueing the patient's next
    delivery, at the same moment: the new one ends up pending (the head), never left waiting
    behind a head that is gone."""
    import threading

    from engine.store.repository import NewDelivery, Outcome, Processed

    for i in range(15):
        patient = f"RACE{i}"
        _routed(store, patient)
        [head] = store.claim_due_deliveries(100)
        nxt = store.save_received(b"MSH|", channel="test")
        delivery = NewDelivery("dest", "r", "hl7v2", "text/plain", b"y", patient)
        barrier = threading.Barrier(2)

        def settle(head_id: int = head.id, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            store.record_outcomes([Outcome(head_id, True)])

        def queue(
            mid: int = nxt,
            d: NewDelivery = delivery,
            p: str = patient,
            barrier: threading.Barrier = barrier,
        ) -> None:
            barrier.wait()
            store.finish_batch([Processed(mid, "routed", None, p, [d])])

        threads = [threading.Thread(target=settle), threading.Thread(target=queue)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        [d] = store.deliveries_for(nxt)
        assert d.state == "pending", f"round {i}: the next delivery was stranded ({d.state})"
        [again] = store.claim_due_deliveries(100)
        store.record_outcomes([Outcome(again.id, True)])


def _queue_of_three(store: SqlMessageStore, patient: str = "Q") -> list[int]:
    return [_routed(store, patient) for _ in range(3)]


def test_a_delivery_settled_twice_promotes_only_once(store: SqlMessageStore) -> None:
    from engine.store.repository import Outcome

    mids = _queue_of_three(store)
    [head] = store.claim_due_deliveries(10)
    # sent twice (its lease ran out in flight): both outcomes come back
    store.record_outcomes([Outcome(head.id, True)])
    store.record_outcomes([Outcome(head.id, True)])
    assert _states(store, mids) == ["delivered", "pending", "waiting"]
    store.record_outcomes([Outcome(head.id, False, "late refusal", None)])  # a late dead
    assert _states(store, mids) == ["delivered", "pending", "waiting"]
    assert store.get(mids[0]).state == "delivered"  # type: ignore[union-attr]


def test_claims_are_renewed_only_while_ours_and_given_back(store: SqlMessageStore) -> None:
    from datetime import timedelta

    mids = _queue_of_three(store)
    [head] = store.claim_due_deliveries(10, lease=600)
    assert head.claimed_until is not None
    later = head.claimed_until + timedelta(seconds=60)
    assert store.renew_claim(head.id, head.claimed_until, later)
    assert not store.renew_claim(head.id, head.claimed_until, later)  # no longer that lease
    assert store.claim_due_deliveries(10) == []
    store.release_claims([head.id])
    [again] = store.claim_due_deliveries(10)
    assert again.id == head.id and again.message_id == mids[0]


def test_a_queue_left_without_a_head_is_repaired(store: SqlMessageStore) -> None:
    from sqlalchemy import update

    from engine.store.tables import deliveries

    mids = _queue_of_three(store)
    [head] = store.claim_due_deliveries(10)
    with store.db_engine.begin() as conn:  # settled behind the store's back: no promotion
        conn.execute(update(deliveries).where(deliveries.c.id == head.id).values(state="dead"))
    assert store.claim_due_deliveries(10) == []
    assert store.repair_queues() == 1
    assert _states(store, mids) == ["dead", "pending", "waiting"]
    assert store.repair_queues() == 0
