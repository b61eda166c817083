"""Two nodes on one PostgreSQL database, each with its own store (its own engine and pool): the
database decides, not a node's memory.

* The same message (sender and control id) received by both at the same instant is stored once:
  the unique index on the dedupe key lets one insert win; the other node's insert fails on it,
  its receiver stores that message again alone and finds the original (both ACK AA, one of them
  as a duplicate).
* Each patient's messages are claimed one at a time and in the order received, whichever node
  claims them (the claim reads the patient's earlier messages in the same statement, and skips
  rows another node has locked).
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from engine.flow.ingest import Ingest
from engine.store import Incoming, SqlMessageStore, create_db_engine
from engine.store.messages import Processed
from engine.store.tables import messages

pytestmark = pytest.mark.postgres

ADT = (
    "MSH|^~\\&|FRONTDESK|CLINIC|ENGINE|HUB|20260102030405||ADT^A08|{cid}|P|2.5.1\r"
    "EVN|A08|20260102030405\rPID|1||MRN{patient}^^^CLINIC^MR||Testpatient^Ann||19800101|F\r"
)


@pytest.fixture
def two_stores(postgres_schema_url: str) -> Iterator[tuple[SqlMessageStore, SqlMessageStore]]:
    from engine.store.tables import metadata

    one = SqlMessageStore(create_db_engine(postgres_schema_url))
    one.migrate()
    two = SqlMessageStore(create_db_engine(postgres_schema_url))
    try:
        yield one, two
    finally:
        two.db_engine.dispose()
        metadata.drop_all(one.db_engine)
        with one.db_engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
        one.db_engine.dispose()


def test_the_same_control_id_on_two_nodes_at_once_is_stored_once(
    two_stores: tuple[SqlMessageStore, SqlMessageStore],
) -> None:
    one, two = two_stores
    rounds = 40

    async def main() -> list[tuple[str | None, bool, str | None, bool]]:
        ingests = [Ingest(store, identity=("ENGINE", "HUB")) for store in (one, two)]
        for ingest in ingests:
            await ingest.start()
        try:
            out = []
            for n in range(rounds):
                message = ADT.format(cid=f"SAME{n}", patient=n).encode()
                a, b = await asyncio.gather(
                    ingests[0].receive(message, channel="mllp", peer="10.0.0.1"),
                    ingests[1].receive(message, channel="mllp", peer="10.0.0.2"),
                )
                out.append((a.ack_code, a.duplicate, b.ack_code, b.duplicate))
            return out
        finally:
            for ingest in ingests:
                await ingest.stop()

    receipts = asyncio.run(main())
    with one.db_engine.connect() as conn:
        stored = dict(
            conn.execute(
                select(messages.c.control_id, func.count()).group_by(messages.c.control_id)
            ).all()
        )
    assert stored == {f"SAME{n}": 1 for n in range(rounds)}  # exactly one original each
    for a_code, a_dup, b_code, b_dup in receipts:
        assert a_code == b_code == "AA"  # both senders are told it is kept
        assert sorted([a_dup, b_dup]) == [False, True]  # one original, one duplicate


def test_two_nodes_claim_each_patient_s_messages_one_at_a_time_in_order(
    two_stores: tuple[SqlMessageStore, SqlMessageStore],
) -> None:
    one, two = two_stores
    patients, per_patient = 4, 15
    items = [
        Incoming(
            raw=ADT.format(cid=f"O{p}-{k}", patient=p).encode(),
            channel="test",
            control_id=f"O{p}-{k}",
            patient_key=f"CLINIC|MRN{p}",
        )
        for k in range(per_patient)
        for p in range(patients)
    ]
    stored = one.save_batch(items)
    patient_of = {s.id: items[n].patient_key for n, s in enumerate(stored)}
    lock = threading.Lock()
    in_flight: dict[str, int] = {}
    claimed: dict[str, list[int]] = defaultdict(list)
    overlaps: list[tuple[str, int, int]] = []
    start = threading.Barrier(2)

    def work(store: SqlMessageStore, node: str) -> None:
        start.wait()
        idle = 0
        while idle < 20:
            batch = store.claim_received(node, limit=3)
            if not batch:
                idle += 1
                threading.Event().wait(0.01)
                continue
            idle = 0
            with lock:
                for mid, _, _ in batch:
                    patient = patient_of[mid] or ""
                    if patient in in_flight:
                        overlaps.append((patient, in_flight[patient], mid))
                    in_flight[patient] = mid
                    claimed[patient].append(mid)
            threading.Event().wait(0.005)  # "processing"
            with lock:
                for mid, _, _ in batch:
                    in_flight.pop(patient_of[mid] or "", None)
            store.finish_batch([Processed(mid, "unrouted", worker=node) for mid, _, _ in batch])

    threads = [
        threading.Thread(target=work, args=(store, name))
        for store, name in ((one, "node-a"), (two, "node-b"))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert overlaps == []  # never two of one patient's messages in flight at once
    assert sum(len(ids) for ids in claimed.values()) == patients * per_patient
    for ids in claimed.values():
        assert ids == sorted(ids)  # each patient's in the order received
