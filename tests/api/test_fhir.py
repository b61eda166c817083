"""``POST /fhir``: a FHIR JSON resource is stored (202); anything else is named and refused."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from engine.metrics import EngineMetrics
from tests.api.conftest import MAX_BYTES, TestClient, bearer
from tests.api.fakes import FakeIngest

BUNDLE = json.dumps(
    {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Patient", "name": [{"family": "Testpatient"}]},
                "request": {"method": "POST", "url": "Patient"},
            }
        ],
    }
).encode()


@pytest.fixture
def headers(token: Callable[[str], str]) -> dict[str, str]:
    return {"Content-Type": "application/fhir+json", **bearer(token("integration"))}


def test_bundle_is_stored_and_202(
    client: TestClient, headers: dict[str, str], ingest: FakeIngest
) -> None:
    response = client.post("/fhir", content=BUNDLE, headers=headers)
    assert response.status_code == 202 and response.json() == {"message_id": 1}
    assert ingest.calls[0][:2] == ("fhir", BUNDLE)


def test_plain_json_content_type_is_accepted(client: TestClient, headers: dict[str, str]) -> None:
    response = client.post(
        "/fhir", content=BUNDLE, headers={**headers, "Content-Type": "application/json"}
    )
    assert response.status_code == 202


def test_invalid_json_is_400_naming_where(
    client: TestClient, headers: dict[str, str], ingest: FakeIngest, metrics: EngineMetrics
) -> None:
    response = client.post(
        "/fhir", content=b'{"resourceType": "Patient",\n  "name": }', headers=headers
    )
    assert response.status_code == 400
    issue = _outcome(response)
    diagnostics = issue["diagnostics"]
    assert issue["code"] == "structure"
    assert diagnostics.startswith("invalid JSON at line 2 column") and "Patient" not in diagnostics
    errors = metrics.registry.get_sample_value("engine_errors_total", {"stage": "receive"})
    assert ingest.calls == [] and errors == 1


def _outcome(response: Any) -> dict[str, Any]:
    """The one issue of an OperationOutcome answer (FHIR R4 §3.1.0.5: an error is one)."""
    assert response.headers["content-type"].startswith("application/fhir+json")
    body = response.json()
    assert body["resourceType"] == "OperationOutcome" and len(body["issue"]) == 1
    issue: dict[str, Any] = body["issue"][0]
    assert issue["severity"] == "error"
    return issue


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b"[1, 2]", "no resourceType"),
        (b'"Patient"', "no resourceType"),
        (b'{"id": "x"}', "no resourceType"),
        (b'{"resourceType": 5}', "resourceType 5 is not a string"),
        (b'{"resourceType": null}', "resourceType null is not a string"),
    ],
)
def test_json_that_is_not_a_resource_is_400_with_an_outcome(
    client: TestClient,
    headers: dict[str, str],
    ingest: FakeIngest,
    metrics: EngineMetrics,
    body: bytes,
    named: str,
) -> None:
    response = client.post("/fhir", content=body, headers=headers)
    assert response.status_code == 400
    issue = _outcome(response)
    assert issue["code"] == "invalid" and named in issue["diagnostics"]
    errors = metrics.registry.get_sample_value("engine_errors_total", {"stage": "receive"})
    assert ingest.calls == [] and errors == 1


@pytest.mark.parametrize(
    "rtype",
    ["Patientt", "patient", "HumanName", "PatientContact", "DomainResource", "", "Pat/../x"],
)
def test_a_type_r4_does_not_have_is_refused_with_an_outcome(
    client: TestClient, headers: dict[str, str], ingest: FakeIngest, rtype: str
) -> None:
    body = json.dumps({"resourceType": rtype, "id": "1"}).encode()
    response = client.post("/fhir", content=body, headers=headers)
    assert response.status_code == 400
    issue = _outcome(response)
    assert issue["code"] == "not-supported"
    assert f"resourceType {rtype!r} is not a FHIR R4 resource type" in issue["diagnostics"]
    assert ingest.calls == []  # refused before it is stored, like any body that is not FHIR


def test_the_refused_type_is_cut_short_in_the_outcome(
    client: TestClient, headers: dict[str, str]
) -> None:
    rtype = "X" * 500
    response = client.post("/fhir", content=json.dumps({"resourceType": rtype}), headers=headers)
    diagnostics = _outcome(response)["diagnostics"]
    assert response.status_code == 400 and len(diagnostics) < 200 and "XXX..." in diagnostics


@pytest.mark.parametrize("rtype", ["Patient", "Appointment", "Bundle", "Parameters", "Binary"])
def test_every_r4_resource_type_is_taken(
    client: TestClient, headers: dict[str, str], ingest: FakeIngest, rtype: str
) -> None:
    body = json.dumps({"resourceType": rtype}).encode()
    assert client.post("/fhir", content=body, headers=headers).status_code == 202
    assert ingest.calls[0][1] == body


def _bundle(*resources: object) -> bytes:
    entries = [{"resource": r, "request": {"method": "POST", "url": "x"}} for r in resources]
    return json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}).encode()


def test_an_entry_of_a_type_r4_does_not_have_is_refused_naming_the_entry(
    client: TestClient, headers: dict[str, str], ingest: FakeIngest, metrics: EngineMetrics
) -> None:
    patient = {"resourceType": "Patient"}
    body = _bundle(patient, patient, patient, {"resourceType": "NotFhir"}, patient)
    response = client.post("/fhir", content=body, headers=headers)
    assert response.status_code == 400
    issue = _outcome(response)
    assert issue["code"] == "not-supported"
    assert issue["expression"] == ["Bundle.entry[3].resource.resourceType"]
    assert "resourceType 'NotFhir' is not a FHIR R4 resource type" in issue["diagnostics"]
    errors = metrics.registry.get_sample_value("engine_errors_total", {"stage": "receive"})
    assert ingest.calls == [] and errors == 1


@pytest.mark.parametrize(
    ("resource", "code", "named", "at"),
    [
        ({"id": "x"}, "invalid", "no resourceType", "resource"),
        ("Patient", "invalid", "no resourceType", "resource"),
        ({"resourceType": 7}, "invalid", "resourceType 7 is not a string", "resourceType"),
        ({"resourceType": "HumanName"}, "not-supported", "'HumanName' is not", "resourceType"),
    ],
)
def test_every_entry_resource_is_checked_like_the_body(
    client: TestClient,
    headers: dict[str, str],
    ingest: FakeIngest,
    resource: object,
    code: str,
    named: str,
    at: str,
) -> None:
    body = _bundle({"resourceType": "Patient"}, resource)
    response = client.post("/fhir", content=body, headers=headers)
    issue = _outcome(response)
    assert response.status_code == 400 and issue["code"] == code and named in issue["diagnostics"]
    expression = "Bundle.entry[1].resource" + ("" if at == "resource" else ".resourceType")
    assert issue["expression"] == [expression] and expression in issue["diagnostics"]
    assert ingest.calls == []


def test_an_entry_of_a_bundle_in_a_bundle_is_checked(
    client: TestClient, headers: dict[str, str], ingest: FakeIngest
) -> None:
    inner = json.loads(_bundle({"resourceType": "Patient"}, {"resourceType": "Nope"}))
    response = client.post("/fhir", content=_bundle(inner), headers=headers)
    issue = _outcome(response)
    assert response.status_code == 400
    assert issue["expression"] == ["Bundle.entry[0].resource.entry[1].resource.resourceType"]
    assert ingest.calls == []


def test_entries_without_a_resource_and_of_every_r4_type_are_taken(
    client: TestClient, headers: dict[str, str], ingest: FakeIngest
) -> None:
    document = json.loads(_bundle({"resourceType": "Patient"}, {"resourceType": "Encounter"}))
    document["entry"].append({"request": {"method": "DELETE", "url": "Patient/1"}})
    body = json.dumps(document).encode()
    assert client.post("/fhir", content=body, headers=headers).status_code == 202
    assert ingest.calls[0][1] == body


def test_wrong_content_type_is_415_with_an_outcome(
    client: TestClient, headers: dict[str, str]
) -> None:
    response = client.post("/fhir", content=BUNDLE, headers={**headers, "Content-Type": "text/xml"})
    assert response.status_code == 415
    issue = _outcome(response)
    assert issue["code"] == "not-supported" and "application/fhir+json" in issue["diagnostics"]


def test_oversize_is_413_with_an_outcome(
    client: TestClient, headers: dict[str, str], metrics: EngineMetrics
) -> None:
    body = json.dumps({"resourceType": "Binary", "data": "A" * MAX_BYTES}).encode()
    response = client.post("/fhir", content=body, headers=headers)
    assert response.status_code == 413
    issue = _outcome(response)
    assert issue["code"] == "too-long" and f"{MAX_BYTES}-byte limit" in issue["diagnostics"]
    errors = metrics.registry.get_sample_value("engine_errors_total", {"stage": "receive"})
    assert errors == 1


def test_an_empty_body_is_400_with_an_outcome(
    client: TestClient, headers: dict[str, str], ingest: FakeIngest
) -> None:
    response = client.post("/fhir", content=b"", headers=headers)
    assert response.status_code == 400
    issue = _outcome(response)
    assert issue["code"] == "invalid" and "empty body" in issue["diagnostics"]
    assert ingest.calls == []


def test_store_refusal_is_503(
    client: TestClient, headers: dict[str, str], ingest: FakeIngest
) -> None:
    ingest.mode = "refused"
    response = client.post("/fhir", content=BUNDLE, headers=headers)
    assert response.status_code == 503 and response.headers["retry-after"] == "30"
    issue = _outcome(response)
    assert issue["code"] == "transient" and "send again" in issue["diagnostics"]


def test_stored_but_rejected_is_422_with_the_id(
    client: TestClient, headers: dict[str, str], ingest: FakeIngest
) -> None:
    ingest.mode = "unreadable"
    response = client.post("/fhir", content=BUNDLE, headers=headers)
    assert response.status_code == 422
    issue = _outcome(response)
    assert issue["code"] == "processing" and "stored as message 1" in issue["diagnostics"]


def test_viewer_may_not_post(client: TestClient, token: Callable[[str], str]) -> None:
    response = client.post(
        "/fhir",
        content=BUNDLE,
        headers={"Content-Type": "application/fhir+json", **bearer(token("viewer"))},
    )
    assert response.status_code == 403
