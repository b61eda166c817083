"""A batch's deliveries and indexed resources are written in one statement each on PostgreSQL
(rows as one JSON array, payloads in base64; engine/store/deliveries.py, engine/store/index.py)
and by ``executemany`` on SQLite: the same rows either way, byte for byte, in the same order."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from sqlalchemy import select

from engine.store import Incoming, NewDelivery, Processed, SqlMessageStore, lists
from engine.store.index import IndexedResource
from engine.store.lists import json_rows
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


@pytest.mark.parametrize("limit", [lists.JSON_ROWS_BYTES, 1], ids=["one-text", "a-text-a-row"])
def test_a_batch_of_deliveries_keeps_its_order_states_and_bytes(
    store: SqlMessageStore, limit: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whole, or cut into several statements (a batch of large payloads): the same rows."""
    monkeypatch.setattr(lists, "JSON_ROWS_BYTES", limit)
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
        # queued at the batch's one instant, due at once
        assert r.created_at == rows[0].created_at == r.next_attempt_at
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


def test_one_fullurl_twice_in_a_batch_is_one_row_the_later_messages(
    store: SqlMessageStore,
) -> None:
    """The practice's one doctor in every message of a batch; and two fullUrls that the column
    keeps as one (PostgreSQL cuts spaces past its width): one row each, no statement that
    upserts a row twice."""
    mids = _saved(store, 3)
    doctor = "urn:uuid:practitioner-1234567893"
    long_url = "urn:uuid:" + "x" * 119  # the column's 128 characters
    batch = [
        Processed(
            mid,
            "routed",
            None,
            "p1",
            (),
            [
                _resource(doctor, {"resourceType": "Practitioner", "id": str(mid)}),
                _resource(long_url + " " * (n + 1), {"resourceType": "Patient", "id": str(mid)}),
            ],
        )
        for n, mid in enumerate(mids)
    ]
    store.finish_batch(batch)
    assert (store.resource(doctor) or {}).get("id") == str(mids[-1])
    with store.db_engine.connect() as conn:
        urls = conn.execute(
            select(fhir_resources.c.full_url, fhir_resources.c.message_id).where(
                fhir_resources.c.full_url.like(long_url + "%")
            )
        ).all()
    assert [m for _, m in urls] == [mids[-1]]


def test_rows_are_cut_into_texts_in_order_and_under_the_limit() -> None:
    rows = [{"n": i, "pad": "y" * (i % 7) * 100} for i in range(50)]
    texts = list(json_rows(rows, limit=1000))
    assert len(texts) > 1
    assert [r for t in texts for r in orjson.loads(t)] == rows
    for t in texts:
        assert len(t.encode()) <= 1000 or len(orjson.loads(t)) == 1
    assert list(json_rows([])) == []
    [whole] = json_rows(rows)
    assert orjson.loads(whole) == rows


def test_a_bundles_entries_are_indexed_only_with_strings_where_strings_belong() -> None:
    """A Bundle from outside (a FHIR feed) with a fullUrl, a reference or a status that is no
    string: not indexed, or indexed without that value (both databases refuse such a value,
    or one would store its JSON text and the other refuse it)."""
    from engine.flow.process import index_rows

    bundle = {
        "entry": [
            {"fullUrl": 12, "resource": {"resourceType": "Patient"}},
            {
                "fullUrl": "urn:uuid:c1",
                "resource": {
                    "resourceType": "Coverage",
                    "status": {"code": "active"},
                    "beneficiary": {"reference": ["urn:uuid:p1"]},
                },
            },
            {
                "fullUrl": "urn:uuid:c2",
                "resource": {"resourceType": "Coverage", "status": "active"},
            },
        ]
    }
    rows = index_rows(bundle)
    assert [(r.full_url, r.status, r.patient_url) for r in rows] == [
        ("urn:uuid:c1", None, None),
        ("urn:uuid:c2", "active", None),
    ]
