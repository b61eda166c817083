"""The Coverage of a member ID shared by a family, written to a FHIR server (the stub, over real
HTTP): its conditional update names the beneficiary and payer along with the identifier
(engine/mappings/entries.py), so the dependent's Coverage does not overwrite the subscriber's,
in a transaction (placeholders resolved by the server) and entry by entry (the destination puts
in the ids the server gave)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from engine.adapters.destination import Payload
from engine.adapters.fhir_rest import FhirDestination, FhirRestDestination
from engine.hl7v2.codec import parse_message
from engine.mappings import load_mappings
from engine.sim.fhir_server import StubFhirServer, running_stub_fhir
from tests.adapters.conftest import bundle_payload

MEMBER = "FAM55501"


def _adt(mrn: str, given: str, relationship: str, control: str) -> bytes:
    return (
        "\r".join(
            [
                f"MSH|^~\\&|EHR|CLINIC|ENGINE|HUB|20261127100000||ADT^A08^ADT_A01|{control}|P|2.5.1",
                "EVN|A08|20261127100000",
                f"PID|1||{mrn}^^^CLINIC^MR||Tanaka^{given}||19800101|F",
                "PV1|1|O",
                "IN1|1|PPO^Plan^L|PAYER9^^^^NIIP|Synthetic Mutual|||||||||||PPO|"
                f"Tanaka^Emi|{relationship}|19800101||||1||||||||||||||{MEMBER}",
            ]
        )
        + "\r"
    ).encode()


SUBSCRIBER = _adt("FAM1", "Emi", "SEL^Self^HL70063", "FAM-1")
DEPENDENT = _adt("FAM2", "Kai", "CHD^Child^HL70063", "FAM-2")


@pytest.fixture(scope="module")
def server() -> Iterator[StubFhirServer]:
    with running_stub_fhir() as s:
        yield s


def _bundle(raw: bytes) -> bytes:
    return orjson.dumps(load_mappings().to_fhir(parse_message(raw)))


def _payload(body: bytes, n: int) -> Payload:
    return bundle_payload(body, n, "fhir", "FAM")


def _patient_id(stub: StubFhirServer, mrn: str) -> str:
    (pid,) = [
        rid
        for rid, p in stub.state.resources["Patient"].items()
        if any(i["value"] == mrn for i in p["identifier"])
    ]
    return pid


@pytest.mark.parametrize("mode", ["transaction", "conditional"])
def test_the_dependents_coverage_does_not_overwrite_the_subscribers(
    server: StubFhirServer, mode: str
) -> None:
    server.state.reset()
    dest = FhirRestDestination(
        "fhir", FhirDestination.model_validate({"base_url": server.base_url, "mode": mode})
    )

    async def run() -> list[Any]:
        try:
            bodies = [SUBSCRIBER, DEPENDENT, SUBSCRIBER]
            return [await dest.deliver(_payload(_bundle(b), n)) for n, b in enumerate(bodies)]
        finally:
            await dest.close()

    results = asyncio.run(run())
    assert all(r.ok for r in results), results
    coverages = server.state.resources["Coverage"]
    assert len(coverages) == 2  # the subscriber's sent again updated, not a third
    by_beneficiary = {c["beneficiary"]["reference"]: c for c in coverages.values()}
    emi, kai = _patient_id(server, "FAM1"), _patient_id(server, "FAM2")
    assert set(by_beneficiary) == {f"Patient/{emi}", f"Patient/{kai}"}
    assert by_beneficiary[f"Patient/{emi}"]["relationship"]["coding"][0]["code"] == "self"
    assert by_beneficiary[f"Patient/{kai}"]["relationship"]["coding"][0]["code"] == "child"
    assert all(c["identifier"][0]["value"] == MEMBER for c in coverages.values())
    (payer,) = server.state.resources["Organization"]
    assert {c["payor"][0]["reference"] for c in coverages.values()} == {f"Organization/{payer}"}
    assert by_beneficiary[f"Patient/{emi}"]["meta"]["versionId"] == "2"


def _no_payer_id(control: str) -> bytes:
    """The subscriber's ADT with a payer named but without an ID (IN1-3 empty), as real feeds
    send (tests/corpus: ``IN1|1|T71|||MEDICAID``): its Organization has no business identity."""
    return SUBSCRIBER.replace(b"|PAYER9^^^^NIIP|", b"||").replace(b"FAM-1", control.encode())


@pytest.mark.parametrize("mode", ["transaction", "conditional"])
def test_a_payer_without_an_id_does_not_make_a_coverage_per_message(
    server: StubFhirServer, mode: str
) -> None:
    """A payer named after each message's control ID would give its Coverage a new identity
    with every message: only references with a business identity narrow it."""
    server.state.reset()
    bodies = [_bundle(_no_payer_id(f"NOPAY-{n}")) for n in range(3)]
    urls = {
        e["fullUrl"]
        for b in bodies
        for e in orjson.loads(b)["entry"]
        if e["resource"]["resourceType"] == "Coverage"
    }
    assert len(urls) == 1
    dest = FhirRestDestination(
        "fhir", FhirDestination.model_validate({"base_url": server.base_url, "mode": mode})
    )

    async def run() -> list[Any]:
        try:
            return [await dest.deliver(_payload(b, n)) for n, b in enumerate(bodies)]
        finally:
            await dest.close()

    assert all(r.ok for r in asyncio.run(run()))
    assert len(server.state.resources["Coverage"]) == 1


def test_an_identifier_spelled_like_a_placeholder_is_data(server: StubFhirServer) -> None:
    """A member ID (or an MRN's system) that reads ``urn:uuid:...`` is sent as it is."""
    server.state.reset()
    member = b"urn:uuid:5b2c0d8e-8f4e-4a53-9d7c-0c1f5a2b3c4d"
    body = _bundle(SUBSCRIBER.replace(MEMBER.encode(), member))
    dest = FhirRestDestination(
        "fhir",
        FhirDestination.model_validate({"base_url": server.base_url, "mode": "conditional"}),
    )

    async def run() -> list[Any]:
        try:
            return [await dest.deliver(_payload(body, n)) for n in range(2)]
        finally:
            await dest.close()

    assert all(r.ok for r in asyncio.run(run()))
    (coverage,) = server.state.resources["Coverage"].values()
    assert coverage["identifier"][0]["value"] == member.decode()
