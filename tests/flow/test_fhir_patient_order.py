"""A FHIR Bundle received over HTTP is ordered by its patient from receipt (engine/flow/ingest.py,
``fhir_patient_key``), as an HL7v2 message is by PID-3: with two worker processes (or nodes) a
patient's second Bundle is not claimed while the first is still being processed, so its
deliveries cannot overtake the first's. Bundles without a Patient identifier, and JSON of any
shape, still go in (no key: claimed in parallel)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from engine.flow.ingest import Ingest, fhir_patient_key
from engine.store import SqlMessageStore
from engine.store.messages import Processed


def _bundle(mrn: str | None, note: str) -> dict[str, Any]:
    patient: dict[str, Any] = {"resourceType": "Patient", "name": [{"family": "Testpatient"}]}
    if mrn is not None:
        patient["identifier"] = [
            {"system": "urn:oid:2.16.840.1.113883.19.5", "value": ""},  # no value: skipped
            {"system": "urn:oid:2.16.840.1.113883.19.5", "value": mrn},
        ]
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "id": note,
        "entry": [
            {"resource": {"resourceType": "Organization", "name": "Payer"}},
            {"fullUrl": "urn:uuid:1", "resource": patient},
        ],
    }


def test_a_patients_bundles_are_claimed_one_at_a_time_in_order(store: SqlMessageStore) -> None:
    bodies = [
        _bundle("MRN1", "first"),
        _bundle("MRN2", "other patient"),
        _bundle("MRN1", "second"),
        _bundle(None, "no patient identifier"),
    ]

    async def receive() -> list[int | None]:
        ingest = Ingest(store, identity=("ENGINE", "HUB"))
        await ingest.start()
        try:
            return [
                (await ingest.receive_fhir(orjson.dumps(b), peer="127.0.0.1")).message_id
                for b in bodies
            ]
        finally:
            await ingest.stop()

    ids = asyncio.run(receive())
    assert all(ids)
    first, other, second, anonymous = ids
    # one worker process claims what it can: the first of MRN1, the other patient, the Bundle
    # with no key; the second of MRN1 waits for the first
    claimed = [mid for mid, _, _ in store.claim_received("worker-a", limit=10)]
    assert claimed == [first, other, anonymous]
    # the other worker process finds nothing of MRN1 to take while the first is in hand
    assert store.claim_received("worker-b", limit=10) == []
    store.finish_batch([Processed(first, "unrouted", worker="worker-a")])
    assert [mid for mid, _, _ in store.claim_received("worker-b", limit=10)] == [second]


@pytest.mark.parametrize(
    "doc",
    [
        None,
        [],
        "Patient",
        {"resourceType": "Bundle", "entry": "not a list"},
        {"resourceType": "Bundle", "entry": [None, 3, {"resource": []}]},
        {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Patient"}}]},
        {"resourceType": "Patient", "identifier": {"value": "not a list"}},
        {"resourceType": "Patient", "identifier": [None, {"system": "s"}]},
    ],
)
def test_json_of_any_shape_has_no_key_and_no_error(doc: Any) -> None:
    assert fhir_patient_key(doc) is None


def test_the_key_of_a_resource_and_of_a_bundle() -> None:
    assert fhir_patient_key(_bundle("MRN7", "b")) == "urn:oid:2.16.840.1.113883.19.5|MRN7"
    lone = {"resourceType": "Patient", "identifier": [{"value": "X" * 300}]}
    assert fhir_patient_key(lone) == ("|" + "X" * 300)[:255]
