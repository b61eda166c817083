"""A batch's deliveries and indexed resources are written in one statement each on PostgreSQL
(rows as one JSON array, payloads in base64; engine/store/deliveries.py, engine/store/index.py)
and by ``executemany`` on SQLite: the same rows either way, byte for byte, in the same order."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
from sqlalchemy import select

from engine.store import Incoming, NewDelivery, Processed, SqlMessageStore
from engine.store.index import IndexedResource
from engine.store.tables import deliveries, fhir_resources

#: payloads no JSON string could carry as they are: NUL, bytes that are not UTF-8, a quote
PAYLOADS = [
    b"MSH|^~\\&|A|B\r\x00PID|1||\xff\xfe\x80\r",
    '{"name":"Zoë \\"Z\\" 🦷","x":"\\u0000"}'.encode(),
    b"",
    bytes(range(256)) * 9,
]


def _saved(store: SqlMessageStore, n: int) -> list[int]:
    stored = store.save_batch([Incoming(raw=b"MSH|%d" % i, channel="test") for i in range(n)])
    return [s.id for s in stored]


def test_a_batch_of_deliveries_keeps_its_order_states_and_bytes(store: SqlMessageStore) -> None:
    mids = _saved(store, 12)
    patients = ["A", "B", "A", "C", "A", "B", "D", "A", "E", "B", "A", "F"]
    batch = []
    for i, (mid, patient) in enumerate(zip(mids, patients, strict=True)):
        news = [NewDelivery("files", "r1", "hl7v2", "text/plain", PAYLOADS[i % 4], patient)]
        if i % 3 == 0:  # a second destination for some: a queue of its own per patient
            news.append(
                NewDelivery("ehr", "r2", "fhir-bundle", "application/fhir+json", b"{}", patient)
            )
        batch.append(Processed(mid, "routed", None, patient, news))
    store.finish_batch(batch)

    with store.db_engine.connect() as conn:
        rows = conn.execute(select(deliveries).order_by(deliveries.c.id)).all()
    # the rows in the batch's order: message by message, each message's deliveries in turn
    expected = [(p.message_id, d.destination) for p in batch for d in p.new_deliveries]
    assert [(r.message_id, r.destination) for r in rows] == expected
    # each queue's first delivery is its head, the ones after it wait
    seen: set[tuple[str, str]] = set()
    for r in rows:
        queue = (r.destination, r.patient_key)
        assert r.state == ("waiting" if queue in seen else "pending"), (r.id, queue)
        seen.add(queue)
    by_message = {p.message_id: p for p in batch}
    for r in rows:
        [want] = [
            d for d in by_message[r.message_id].new_deliveries if d.destination == r.destination
        ]
        assert bytes(r.payload) == want.payload
        assert (r.route, r.kind, r.content_type, r.patient_key) == (
            want.route,
            want.kind,
            want.content_type,
            want.patient_key,
        )
        assert r.attempts == 0 and r.resend_of is None
        assert r.created_at is not None and r.next_attempt_at is not None
    # the heads are claimable, in id order
    claimed = store.claim_due_deliveries(100)
    heads = [r.id for r in rows if r.state == "pending"]
    assert sorted(d.id for d in claimed) == heads


def _resource(url: str, body: dict[str, object], start: datetime | None = None) -> IndexedResource:
    return IndexedResource(
        "Appointment" if start else "Patient",
        url,
        orjson.dumps(body),
        "urn:uuid:p1",
        start,
        "booked" if start else None,
    )


def test_a_batch_of_resources_is_upserted_whole_and_never_by_an_older_message(
    store: SqlMessageStore,
) -> None:
    mids = _saved(store, 3)
    start = datetime(2026, 12, 7, 14, 30, tzinfo=UTC)
    tricky = {
        "resourceType": "Patient",
        "name": [{"family": 'O"Brien \\ Zoë', "given": ["🦷", "\t", "{a,b}"]}],
        "note": "\\u0000 is text here, not a NUL",
    }
    first = [
        _resource("urn:uuid:a", tricky),
        _resource("urn:uuid:b", {"resourceType": "Appointment", "status": "booked"}, start),
        _resource("urn:uuid:c", {"resourceType": "Patient", "id": "c"}),
    ]
    store.finish_batch([Processed(mids[1], "routed", None, "p1", (), first)])
    index = store.resource
    assert {k: v for k, v in (index("urn:uuid:a") or {}).items() if k != "_full_url"} == tricky
    with store.db_engine.connect() as conn:
        row = conn.execute(
            select(fhir_resources).where(fhir_resources.c.full_url == "urn:uuid:b")
        ).one()
    assert row.start.replace(tzinfo=row.start.tzinfo or UTC) == start
    assert (row.status, row.patient_url, row.message_id) == ("booked", "urn:uuid:p1", mids[1])

    # an older message's version of a and a newer message's version of c, in one batch each
    older = [_resource("urn:uuid:a", {"resourceType": "Patient", "id": "old"})]
    newer = [_resource("urn:uuid:c", {"resourceType": "Patient", "id": "new"})]
    store.finish_batch(
        [
            Processed(mids[0], "routed", None, "p1", (), older),
            Processed(mids[2], "routed", None, "p1", (), newer),
        ]
    )
    assert (index("urn:uuid:a") or {}).get("name") == tricky["name"]  # kept: a was newer
    assert (index("urn:uuid:c") or {}).get("id") == "new"
