"""The stub Epic's FHIR API over real HTTP: CapabilityStatement, Patient/Appointment/Coverage
search, DocumentReference and Binary create with Epic-like rules, failure injection, the demo
seed data and the admin endpoint (only when asked for)."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Iterator
from datetime import date
from typing import Any

import httpx
import orjson
import pytest

from engine.sim.demo import PATIENTS
from engine.sim.epic import (
    MRN_SYSTEM,
    StubEpicServer,
    business_days,
    running_stub_epic,
)

PDF = b"%PDF-1.4\n" + b"synthetic scan " * 200 + b"\n%%EOF\n"


@pytest.fixture(scope="module")
def server() -> Iterator[StubEpicServer]:
    with running_stub_epic(today=date(2026, 12, 3)) as epic:
        yield epic


@pytest.fixture
def epic(server: StubEpicServer) -> StubEpicServer:
    server.state.reset_documents()
    server.state.failures.clear()
    server.state.binary_supported = True
    return server


def client(epic: StubEpicServer) -> httpx.Client:
    token = epic.state.grant_token()
    return httpx.Client(
        base_url=epic.base_url + "/",
        headers={"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"},
        timeout=10,
    )


def patient_id(http: httpx.Client, mrn: str) -> str:
    resp = http.get("Patient", params={"identifier": f"{MRN_SYSTEM}|{mrn}"})
    assert resp.status_code == 200
    entries = resp.json()["entry"]
    assert len(entries) == 1
    return str(entries[0]["resource"]["id"])


def docref(subject: str, **attachment: Any) -> dict[str, Any]:
    return {
        "resourceType": "DocumentReference",
        "status": "current",
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": "urn:sha256:" + "a" * 64}],
        "type": {"coding": [{"system": "http://loinc.org", "code": "64290-0"}]},
        "subject": {"reference": subject},
        "content": [{"attachment": {"contentType": "application/pdf", **attachment}}],
    }


def test_metadata_says_what_the_server_takes(epic: StubEpicServer) -> None:
    with client(epic) as http:
        cap = http.get("metadata").json()
        epic.state.binary_supported = False
        without = http.get("metadata").json()
    assert cap["resourceType"] == "CapabilityStatement"
    assert httpx.get(epic.base_url + "/metadata").status_code == 200  # open, needs no token
    assert cap["fhirVersion"] == "4.0.1"

    def creates(c: dict[str, Any]) -> set[str]:
        return {
            r["type"]
            for r in c["rest"][0]["resource"]
            if any(i["code"] == "create" for i in r.get("interaction", []))
        }

    assert creates(cap) == {"DocumentReference", "Binary"}
    assert creates(without) == {"DocumentReference"}


def test_seed_patients_found_by_mrn_and_read(epic: StubEpicServer) -> None:
    with client(epic) as http:
        pid = patient_id(http, "DEMO1001")
        read = http.get(f"Patient/{pid}").json()
        none = http.get("Patient", params={"identifier": f"{MRN_SYSTEM}|NOSUCH"}).json()
        other_system = http.get("Patient", params={"identifier": "urn:oid:9.9|DEMO1001"}).json()
        bare = http.get("Patient")
    assert read["identifier"][0] == {
        "use": "usual",
        "type": {"text": "MRN"},
        "system": MRN_SYSTEM,
        "value": "DEMO1001",
    }
    assert none["total"] == 0 and none.get("entry", []) == []
    assert other_system["total"] == 0
    assert bare.status_code == 400  # Epic wants a search parameter


def test_appointment_search_by_date_pages_to_the_end(epic: StubEpicServer) -> None:
    days = business_days(date(2026, 12, 3), 2)
    start, end = days[0].isoformat(), days[-1].isoformat()
    seen: list[str] = []
    pages = 0
    with client(epic) as http:
        url: str | None = f"Appointment?date=ge{start}&date=le{end}&status=booked&_count=2"
        while url:
            bundle = http.get(url).json()
            pages += 1
            seen += [e["resource"]["id"] for e in bundle.get("entry", [])]
            nxt = [link["url"] for link in bundle.get("link", []) if link["relation"] == "next"]
            url = nxt[0] if nxt else None
        one_day = http.get(
            "Appointment", params={"date": [f"ge{start}", f"le{start}"], "status": "booked"}
        ).json()
    expected = len(PATIENTS) * 2  # each demo patient, the next two business days
    assert len(seen) == len(set(seen)) == expected
    assert pages == (expected + 1) // 2
    assert one_day["total"] == len(PATIENTS)
    for entry in one_day["entry"]:
        assert entry["resource"]["start"].startswith(start)


def test_coverage_search_by_patient(epic: StubEpicServer) -> None:
    with client(epic) as http:
        pid = patient_id(http, "DEMO1002")
        bundle = http.get("Coverage", params={"patient": pid}).json()
    assert bundle["total"] == 1
    coverage = bundle["entry"][0]["resource"]
    assert coverage["beneficiary"]["reference"] == f"Patient/{pid}"
    assert coverage["subscriberId"] == "DEMO100002"


def test_document_reference_inline_created_once_per_if_none_exist(epic: StubEpicServer) -> None:
    digest = hashlib.sha256(PDF).hexdigest()
    with client(epic) as http:
        pid = patient_id(http, "DEMO1001")
        body = docref(f"Patient/{pid}", data=base64.b64encode(PDF).decode(), size=len(PDF))
        condition = {"If-None-Exist": f"identifier=urn:ietf:rfc:3986|urn:sha256:{'a' * 64}"}
        first = http.post("DocumentReference", content=orjson.dumps(body), headers=condition)
        again = http.post("DocumentReference", content=orjson.dumps(body), headers=condition)
    assert first.status_code == 201
    assert first.headers["location"].split("/")[-3] == first.json()["id"]
    assert again.status_code == 200
    assert epic.state.creates_by_hash[digest] == 1


def test_document_reference_refused_for_unknown_patient_or_bad_resource(
    epic: StubEpicServer,
) -> None:
    data = base64.b64encode(PDF).decode()
    with client(epic) as http:
        unknown = http.post(
            "DocumentReference", content=orjson.dumps(docref("Patient/999999", data=data))
        )
        invalid = http.post(
            "DocumentReference",
            content=orjson.dumps({**docref("Patient/1", data=data), "content": "x"}),
        )
        bad_status = http.post(
            "DocumentReference",
            content=orjson.dumps({**docref("Patient/1", data=data), "status": "bogus"}),
        )
        pid = patient_id(http, "DEMO1001")
        wrong_size = http.post(
            "DocumentReference",
            content=orjson.dumps(docref(f"Patient/{pid}", data=data, size=len(PDF) + 1)),
        )
        no_content = http.post("DocumentReference", content=orjson.dumps(docref(f"Patient/{pid}")))
    assert unknown.status_code == 422
    assert unknown.json()["issue"][0]["code"] == "not-found"
    assert invalid.status_code == 400
    assert invalid.json()["issue"][0]["code"] == "structure"
    assert bad_status.status_code == 400
    assert bad_status.json()["issue"][0]["code"] == "value"
    assert wrong_size.status_code == 422
    assert no_content.status_code == 422
    assert sum(epic.state.creates_by_hash.values()) == 0


def test_binary_then_document_reference_by_url(epic: StubEpicServer) -> None:
    with client(epic) as http:
        pid = patient_id(http, "DEMO1003")
        binary = http.post("Binary", content=PDF, headers={"Content-Type": "application/pdf"})
        bid = binary.json()["id"]
        ref = http.post(
            "DocumentReference", content=orjson.dumps(docref(f"Patient/{pid}", url=f"Binary/{bid}"))
        )
        dangling = http.post(
            "DocumentReference", content=orjson.dumps(docref(f"Patient/{pid}", url="Binary/nope"))
        )
        epic.state.binary_supported = False
        refused = http.post("Binary", content=PDF, headers={"Content-Type": "application/pdf"})
    assert binary.status_code == 201
    assert ref.status_code == 201
    assert epic.state.creates_by_hash[hashlib.sha256(PDF).hexdigest()] == 1
    assert epic.state.binary_creates == 1
    assert dangling.status_code == 422
    assert refused.status_code == 405


def test_failure_injection_status_retry_after_and_slow(epic: StubEpicServer) -> None:
    epic.state.fail_next(429, count=1, retry_after=7)
    epic.state.fail_next(503, count=2)
    epic.state.fail_next(200, count=1, delay_s=0.3)  # slow, then answered normally
    with client(epic) as http:
        limited = http.get("metadata")
        down = [http.get("metadata").status_code for _ in range(2)]
        began = time.monotonic()
        slow = http.get("metadata")
        took = time.monotonic() - began
        fine = http.get("metadata")
    assert limited.status_code == 429 and limited.headers["retry-after"] == "7"
    assert down == [503, 503]
    assert slow.status_code == 200 and took >= 0.3
    assert fine.status_code == 200


def test_admin_endpoint_only_when_enabled(epic: StubEpicServer) -> None:
    closed = httpx.post(epic.url + "/admin/fail", json={"status": 503, "count": 1})
    assert closed.status_code in (401, 404)  # behind the token gate, and not there anyway
    assert epic.state.failures == []
    with running_stub_epic(admin=True) as open_epic, client(open_epic) as http:
        told = httpx.post(open_epic.url + "/admin/fail", json={"status": 503, "count": 1})
        assert told.status_code == 200
        assert http.get("metadata").status_code == 503
        assert http.get("metadata").status_code == 200
        stats = httpx.get(open_epic.url + "/admin/stats").json()
    assert stats["document_creates"] == 0


def test_attachment_hash_is_checked_when_given(epic: StubEpicServer) -> None:
    """Attachment.hash is the base64 of the data's SHA-1 (FHIR R4 datatypes.html#Attachment)."""
    sha1 = base64.b64encode(hashlib.sha1(PDF).digest()).decode()
    wrong = base64.b64encode(hashlib.sha1(b"other").digest()).decode()
    data = base64.b64encode(PDF).decode()
    with client(epic) as http:
        pid = patient_id(http, "DEMO1002")
        bid = http.post("Binary", content=PDF, headers={"Content-Type": "application/pdf"}).json()[
            "id"
        ]

        def create(**attachment: Any) -> int:
            body = docref(f"Patient/{pid}", **attachment)
            body["identifier"] = []  # each a new document
            return http.post("DocumentReference", content=orjson.dumps(body)).status_code

        assert create(data=data, hash=wrong) == 422
        assert create(url=f"Binary/{bid}", hash=wrong) == 422
        assert create(data=data, hash=sha1) == 201
        assert create(url=f"Binary/{bid}", hash=sha1) == 201
