"""The stub FHIR server over real HTTP: transactions, conditional updates, reads, test switches."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.sim.fhir_server import StubFhirServer, running_stub_fhir

BUNDLES = Path(__file__).resolve().parents[2] / "fixtures" / "fhir"
SYSTEM = "urn:engine:identifier:OAKCLINIC"


@pytest.fixture(scope="module")
def server() -> Iterator[StubFhirServer]:
    with running_stub_fhir() as s:
        yield s


@pytest.fixture
def fhir(server: StubFhirServer) -> Iterator[httpx.Client]:
    server.state.reset()
    server.state.accepted_tokens = None
    with httpx.Client(base_url=server.base_url + "/", timeout=5) as client:
        yield client


def patient(mrn: str, family: str = "Testpatient") -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": SYSTEM, "value": mrn}],
        "name": [{"family": family}],
    }


def test_transaction_creates_then_updates_and_resolves_references(
    fhir: httpx.Client, server: StubFhirServer
) -> None:
    bundle = json.loads((BUNDLES / "adt_a01.json").read_text())
    first = fhir.post("", json=bundle)
    assert first.status_code == 200
    body = first.json()
    assert body["type"] == "transaction-response"
    assert [e["response"]["status"] for e in body["entry"]] == ["201 Created"] * 7
    pid = body["entry"][0]["response"]["location"].split("/")[1]
    encounter = fhir.get("Encounter", params={"identifier": f"{SYSTEM}|V20001"}).json()
    assert encounter["total"] == 1
    assert encounter["entry"][0]["resource"]["subject"]["reference"] == f"Patient/{pid}"

    again = fhir.post("", json=bundle).json()
    assert [e["response"]["status"] for e in again["entry"]] == ["200 OK"] * 7
    assert again["entry"][0]["response"]["etag"] == 'W/"2"'
    assert server.state.count("Patient") == 1
    log = fhir.get("$log").json()["log"]
    assert [e["interaction"] for e in log] == ["transaction", "transaction"]
    assert log[0]["entry"][0] == {
        "method": "PUT",
        "resourceType": "Patient",
        "id": pid,
        "identifier": f"{SYSTEM}|MRN20001",
        "status": 201,
    }


def test_transaction_is_all_or_nothing(fhir: httpx.Client, server: StubFhirServer) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": patient("M1"),
                "request": {"method": "PUT", "url": f"Patient?identifier={SYSTEM}|M1"},
            },
            {"resource": patient("M2"), "request": {"method": "PUT", "url": "Observation/x"}},
        ],
    }
    resp = fhir.post("", json=bundle)
    assert resp.status_code == 400
    assert resp.json()["issue"][0]["code"] == "invalid"
    assert server.state.count("Patient") == 0


def test_conditional_update_read_search(fhir: httpx.Client) -> None:
    url = f"Patient?identifier={SYSTEM}|M7"
    created = fhir.put(url, json=patient("M7"))
    assert created.status_code == 201
    rid = created.json()["id"]
    assert created.headers["location"].endswith(f"/fhir/Patient/{rid}/_history/1")
    updated = fhir.put(url, json=patient("M7", "Renamed"))
    assert updated.status_code == 200 and updated.json()["id"] == rid
    assert fhir.get(f"Patient/{rid}").json()["name"][0]["family"] == "Renamed"
    assert fhir.get("Patient", params={"identifier": f"{SYSTEM}|M7"}).json()["total"] == 1
    assert fhir.get("Patient", params={"identifier": "M7"}).json()["total"] == 1
    assert fhir.get("Patient", params={"identifier": "other|M7"}).json()["total"] == 0
    assert fhir.get("Patient/nope").status_code == 404


def test_put_by_id_and_multiple_matches(fhir: httpx.Client) -> None:
    assert fhir.put("Patient/a", json={**patient("DUP"), "id": "a"}).status_code == 201
    assert fhir.put("Patient/b", json=patient("DUP")).status_code == 201
    assert fhir.put("Patient/a", json={**patient("DUP"), "id": "b"}).status_code == 400
    resp = fhir.put(f"Patient?identifier={SYSTEM}|DUP", json=patient("DUP"))
    assert resp.status_code == 412


def test_a_conditional_update_narrowed_by_references(fhir: httpx.Client) -> None:
    """``Coverage?identifier=M&beneficiary=Patient/x``: the same member ID for two beneficiaries
    is two Coverages; in a transaction a placeholder must name an earlier entry."""

    def coverage(beneficiary: str) -> dict[str, Any]:
        return {
            "resourceType": "Coverage",
            "status": "active",
            "identifier": [{"value": "M55"}],
            "beneficiary": {"reference": beneficiary},
            "payor": [{"reference": "Organization/p1"}],
        }

    for who in ("Patient/a", "Patient/b", "Patient/a"):
        url = f"Coverage?identifier=M55&beneficiary={who}&payor=Organization/p1"
        assert fhir.put(url, json=coverage(who)).status_code in (200, 201)
    found = fhir.get("Coverage", params={"identifier": "M55"}).json()
    assert found["total"] == 2
    assert fhir.get("Coverage", params={"payor": "p1", "beneficiary": "b"}).json()["total"] == 1
    # identifier alone now matches both: several matches are refused, as the spec says
    assert fhir.put("Coverage?identifier=M55", json=coverage("Patient/c")).status_code == 412
    placeholder = "urn:uuid:00000000-0000-5000-8000-000000000000"
    coverage_first = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": coverage(placeholder),
                "request": {
                    "method": "PUT",
                    "url": f"Coverage?identifier=M9&beneficiary={placeholder}",
                },
            },
            {
                "fullUrl": placeholder,
                "resource": patient("M9"),
                "request": {"method": "PUT", "url": f"Patient?identifier={SYSTEM}|M9"},
            },
        ],
    }
    refused = fhir.post("", json=coverage_first)
    assert refused.status_code == 400
    assert "names a later entry" in refused.json()["issue"][0]["diagnostics"]
    # an identifier is data, even one spelled like an entry's fullUrl: twice, still one
    patient_first = {**coverage_first, "entry": coverage_first["entry"][::-1]}
    patient_first["entry"][1]["resource"]["identifier"] = [{"value": placeholder}]
    patient_first["entry"][1]["request"]["url"] = f"Coverage?identifier={placeholder}"
    for _ in range(2):
        assert fhir.post("", json=patient_first).status_code == 200
    assert fhir.get("Coverage", params={"identifier": placeholder}).json()["total"] == 1


def test_the_identifier_index_follows_updates_deletes_and_outside_edits(
    fhir: httpx.Client, server: StubFhirServer
) -> None:
    """Conditional writes find resources through an index of identifiers: an identifier an
    update drops no longer finds the resource, a delete removes it, and a test's edit of
    ``state.resources`` (another size, another dict) is seen."""

    META = {"versionId": "1"}

    def total(token: str) -> int:
        return int(fhir.get("Patient", params={"identifier": token}).json()["total"])

    rid = fhir.put(f"Patient?identifier={SYSTEM}|OLD", json=patient("OLD")).json()["id"]
    moved = fhir.put(f"Patient/{rid}", json={**patient("NEW"), "id": rid})
    assert moved.status_code == 200
    assert (total(f"{SYSTEM}|OLD"), total(f"{SYSTEM}|NEW"), total("NEW")) == (0, 1, 1)
    again = fhir.put(f"Patient?identifier={SYSTEM}|OLD", json=patient("OLD"))
    assert again.status_code == 201 and again.json()["id"] != rid  # not the moved one
    index = server.state._index["Patient"]
    assert fhir.put(f"Patient?identifier={SYSTEM}|THIRD", json=patient("THIRD")).status_code == 201
    assert fhir.delete(f"Patient/{rid}").status_code == 204
    assert (total("NEW"), total("THIRD")) == (0, 1)
    # kept in step by the writes, not built again for each (that was the scan it replaced)
    assert server.state._index["Patient"] is index
    assert index.covers(server.state.resources["Patient"])
    with server.state.lock:  # edited from outside, as some tests do
        server.state.resources["Patient"]["x"] = {**patient("SIDE"), "id": "x", "meta": META}
    assert total(f"{SYSTEM}|SIDE") == 1
    same = fhir.put(f"Patient?identifier={SYSTEM}|SIDE", json=patient("SIDE"))
    assert same.status_code == 200 and same.json()["id"] == "x"
    with server.state.lock:
        server.state.resources["Patient"] = {"y": {**patient("SIDE"), "id": "y", "meta": META}}
    assert fhir.put(f"Patient?identifier={SYSTEM}|SIDE", json=patient("SIDE")).json()["id"] == "y"
    two = {"identifier": [f"{SYSTEM}|SIDE", "nothing"]}
    assert fhir.get("Patient", params=two).json()["total"] == 0  # every identifier must match


def test_fail_switch_fails_the_next_n_requests(fhir: httpx.Client) -> None:
    assert fhir.post("$fail", json={"status": 503, "count": 2, "retry_after": 7}).status_code == 200
    first = fhir.put("Patient/p", json=patient("P"))
    assert first.status_code == 503 and first.headers["retry-after"] == "7"
    assert fhir.get("Patient/p").status_code == 503
    assert fhir.put("Patient/p", json=patient("P")).status_code == 201
    log = fhir.get("$log").json()["log"]
    assert [(e["interaction"], e["status"]) for e in log] == [
        ("write", 503),
        ("update", 201),
    ]


def test_bearer_tokens_when_required(fhir: httpx.Client, server: StubFhirServer) -> None:
    server.state.accepted_tokens = {"t1"}
    resp = fhir.get("Patient/x")
    assert resp.status_code == 401 and resp.headers["www-authenticate"] == "Bearer"
    assert fhir.get("Patient/x", headers={"Authorization": "Bearer t1"}).status_code == 404
    assert server.state.authorizations[-2:] == [None, "Bearer t1"]


def test_reset_and_unknown_operation(fhir: httpx.Client, server: StubFhirServer) -> None:
    fhir.put("Patient/p", json=patient("P"))
    assert fhir.post("$reset").status_code == 200
    assert server.state.count("Patient") == 0 and fhir.get("$log").json() == {"log": []}
    assert fhir.post("$nope").status_code == 404
    assert fhir.post("", json={"resourceType": "Bundle", "type": "batch"}).status_code == 400


def test_idempotency_key_applies_a_write_once(fhir: httpx.Client, server: StubFhirServer) -> None:
    key = {"Idempotency-Key": "9-fhir"}
    first = fhir.put("Patient/p", json=patient("P"), headers=key)
    again = fhir.put("Patient/p", json=patient("P"), headers=key)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json() and again.headers["location"] == first.headers["location"]
    assert fhir.get("Patient/p").json()["meta"]["versionId"] == "1"
    other = fhir.put("Patient/p", json=patient("P", "Changed"), headers=key)
    assert other.status_code == 422
    server.state.fail_next(503)
    assert (
        fhir.put("Patient/q", json=patient("Q"), headers={"Idempotency-Key": "q"}).status_code
        == 503
    )
    assert (
        fhir.put("Patient/q", json=patient("Q"), headers={"Idempotency-Key": "q"}).status_code
        == 201
    )
    log = fhir.get("$log").json()["log"]
    assert [(e["status"], e["idempotency_key"], e.get("replayed", False)) for e in log] == [
        (201, "9-fhir", False),
        (201, "9-fhir", True),
        (422, "9-fhir", False),
        (503, "q", False),
        (201, "q", False),
    ]
    server.state.fail_next(503, 5)
    server.state.reset_failures()
    assert fhir.get("Patient/q").status_code == 200
