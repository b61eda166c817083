"""The stub FHIR server's failure modes the fault campaign uses: a write applied and its answer
cut mid-body (``drop``), a slow server (``latency_s``), and ``clear``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from engine.sim.fhir_server import StubFhirServer, running_stub_fhir

SYSTEM = "urn:engine:identifier:CHAOS"


@pytest.fixture
def server() -> Iterator[StubFhirServer]:
    with running_stub_fhir() as s:
        yield s


def patient(mrn: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": SYSTEM, "value": mrn}]}


def test_drop_applies_the_write_then_cuts_the_answer(server: StubFhirServer) -> None:
    base = server.base_url + "/"
    with httpx.Client(base_url=base, timeout=5) as fhir:
        assert fhir.post("$fail", json={"drop": 1}).status_code == 200
        key = {"Idempotency-Key": "7-fhir"}
        with pytest.raises(httpx.RemoteProtocolError):  # the body ends before its length
            fhir.put("Patient/p", json=patient("P"), headers=key)
    with httpx.Client(base_url=base, timeout=5) as fhir:
        assert fhir.get("Patient/p").status_code == 200  # applied all the same
        again = fhir.put("Patient/p", json=patient("P"), headers=key)  # the client's retry
        assert again.status_code == 201
        assert fhir.get("Patient/p").json()["meta"]["versionId"] == "1"  # not applied twice
        log = fhir.get("$log").json()["log"]
    assert [(e["status"], e.get("replayed", False)) for e in log] == [(201, False), (201, True)]


def test_latency_slows_every_request_until_cleared(server: StubFhirServer) -> None:
    with httpx.Client(base_url=server.base_url + "/", timeout=5) as fhir:
        assert fhir.post("$fail", json={"latency_s": 0.3}).status_code == 200
        start = time.monotonic()
        assert fhir.get("Patient/none").status_code == 404
        assert time.monotonic() - start >= 0.3
        assert fhir.post("$fail", json={"status": 500, "count": 5}).status_code == 200
        assert fhir.post("$fail", json={"clear": True}).status_code == 200
        start = time.monotonic()
        assert fhir.get("Patient/none").status_code == 404  # neither slow nor failing
        assert time.monotonic() - start < 0.3
    assert server.state.latency_s == 0 and not server.state.failures and not server.state.drops


def test_a_write_whose_client_timed_out_is_applied_all_the_same(server: StubFhirServer) -> None:
    with httpx.Client(base_url=server.base_url + "/", timeout=5) as fhir:
        assert fhir.post("$fail", json={"latency_s": 0.6}).status_code == 200
        key = {"Idempotency-Key": "8-fhir"}
        with pytest.raises(httpx.ReadTimeout):  # the client gives up before the answer
            fhir.put("Patient/late", json=patient("L"), headers=key, timeout=0.2)
        time.sleep(0.8)
        assert fhir.post("$fail", json={"clear": True}).status_code == 200
        assert fhir.get("Patient/late").status_code == 200  # applied after the client left
        assert fhir.put("Patient/late", json=patient("L"), headers=key).status_code == 201
        log = fhir.get("$log").json()["log"]
    assert [e.get("replayed", False) for e in log] == [False, True]


def test_a_bad_switch_is_refused(server: StubFhirServer) -> None:
    with httpx.Client(base_url=server.base_url + "/", timeout=5) as fhir:
        assert fhir.post("$fail", json={"drop": "many"}).status_code == 400
