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
    detail = response.json()["detail"]
    assert detail.startswith("invalid JSON at line 2 column") and "Patient" not in detail
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


def test_wrong_content_type_is_415(client: TestClient, headers: dict[str, str]) -> None:
    response = client.post("/fhir", content=BUNDLE, headers={**headers, "Content-Type": "text/xml"})
    assert response.status_code == 415


def test_oversize_is_413(client: TestClient, headers: dict[str, str]) -> None:
    body = json.dumps({"resourceType": "Binary", "data": "A" * MAX_BYTES}).encode()
    assert client.post("/fhir", content=body, headers=headers).status_code == 413


def test_store_refusal_is_503(
    client: TestClient, headers: dict[str, str], ingest: FakeIngest
) -> None:
    ingest.mode = "refused"
    response = client.post("/fhir", content=BUNDLE, headers=headers)
    assert response.status_code == 503 and response.headers["retry-after"] == "30"


def test_stored_but_rejected_is_422_with_the_id(
    client: TestClient, headers: dict[str, str], ingest: FakeIngest
) -> None:
    ingest.mode = "unreadable"
    response = client.post("/fhir", content=BUNDLE, headers=headers)
    assert response.status_code == 422 and response.json()["message_id"] == 1


def test_viewer_may_not_post(client: TestClient, token: Callable[[str], str]) -> None:
    response = client.post(
        "/fhir",
        content=BUNDLE,
        headers={"Content-Type": "application/fhir+json", **bearer(token("viewer"))},
    )
    assert response.status_code == 403
