"""Documents to Epic: the ``epic`` destination against the stub Epic over real HTTP, with the
real SMART Backend Services token (the engine's key, the stub fetching its JWKS)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.adapters.destination import DeliveryResult, Payload
from engine.adapters.epic import EpicDestination, EpicDocumentDestination
from engine.adapters.fhir_rest import FhirDestination, FhirRestDestination
from engine.documents.model import DocumentContent, DocumentEnvelope, DocumentInfo
from engine.keys import Keyring
from engine.settings import Settings
from engine.sim.epic import MRN_SYSTEM, StubEpicServer
from engine.sim.fhir_server import running_stub_fhir
from tests.sim.epic_support import epic_with_client

CLIENT = "engine-epic-docs"


def pdf(n: int, size: int = 3000) -> bytes:
    """A synthetic 'PDF' of ``size`` bytes, different for each ``n``."""
    head = f"%PDF-1.4\n% synthetic document {n}\n".encode()
    return head + bytes((n + i) % 251 for i in range(size - len(head)))


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("home")
    Keyring(home / "var" / "keys").create("RS384")
    return home


@pytest.fixture(scope="module")
def epic_server(home: Path) -> Iterator[StubEpicServer]:
    with epic_with_client(Keyring(home / "var" / "keys"), CLIENT) as epic:
        yield epic


@pytest.fixture
def epic(epic_server: StubEpicServer, home: Path) -> StubEpicServer:
    state = epic_server.state
    state.reset_documents()
    state.failures.clear()
    state.binary_supported = True
    state.revoke_tokens()
    for cached in (home / "var" / "tokens").glob("smart-*.json"):
        cached.unlink()
    return epic_server


def destination(epic: StubEpicServer, home: Path, **keys: Any) -> EpicDocumentDestination:
    config = EpicDestination.model_validate(
        {"base_url": epic.base_url, "client_id": CLIENT, "mrn_system": MRN_SYSTEM, **keys}
    )
    return EpicDocumentDestination("epic", config, settings=Settings(home=home))


def document(n: int, data: bytes, mrn: str = "DEMO1001") -> Payload:
    info = DocumentInfo(
        document_id=n,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        media_type="application/pdf",
        patient_mrn=mrn,
        document_type="insurance-card",
        document_date="2026-12-03",
        sender="scanner-1",
        channel="folder",
    )
    docref = {
        "resourceType": "DocumentReference",
        "status": "current",
        "type": {"coding": [{"system": "http://loinc.org", "code": "64290-0"}]},
        "date": "2026-12-03T09:00:00Z",
        "subject": {"identifier": {"system": MRN_SYSTEM, "value": mrn}},
        "content": [{"attachment": {"contentType": "application/pdf", "size": len(data)}}],
    }
    envelope = DocumentEnvelope(
        info, "fhir", {"DocumentReference": docref, "Binary": {"contentType": "application/pdf"}}
    )
    chunks = [data[i : i + 1000] for i in range(0, len(data), 1000)]  # not a multiple of 3
    return Payload(
        message_id=n,
        destination="epic",
        kind="document",
        body=envelope.to_bytes(),
        content_type="application/vnd.engine.document+json",
        idempotency_key=f"{n}:epic",
        control_id=f"DOC-{n}",
        content=DocumentContent(info.sha256, len(data), lambda: iter(chunks)),
    )


def deliver(dest: EpicDocumentDestination, *payloads: Payload) -> list[DeliveryResult]:
    async def run() -> list[DeliveryResult]:
        try:
            return [await dest.deliver(p) for p in payloads]
        finally:
            await dest.close()

    return asyncio.run(run())


def stored_documents(epic: StubEpicServer) -> list[dict[str, Any]]:
    with epic.state.fhir.lock:
        return list(epic.state.fhir.resources.get("DocumentReference", {}).values())


def demo_patient_id(epic: StubEpicServer, mrn: str) -> str:
    with epic.state.fhir.lock:
        for pid, p in epic.state.fhir.resources["Patient"].items():
            if p["identifier"][0]["value"] == mrn:
                return pid
    raise AssertionError(mrn)


def test_inline_when_the_server_takes_no_binary(epic: StubEpicServer, home: Path) -> None:
    epic.state.binary_supported = False
    data = pdf(1)
    [result] = deliver(destination(epic, home), document(1, data))
    assert result.ok, result.detail
    assert epic.state.creates_by_hash[hashlib.sha256(data).hexdigest()] == 1
    assert epic.state.binary_creates == 0
    [doc] = stored_documents(epic)
    assert doc["subject"] == {"reference": f"Patient/{demo_patient_id(epic, 'DEMO1001')}"}
    assert doc["identifier"][0] == {
        "system": "urn:ietf:rfc:3986",
        "value": "urn:sha256:" + hashlib.sha256(data).hexdigest(),
    }
    assert doc["content"][0]["attachment"]["size"] == len(data)


def test_binary_first_when_the_capability_statement_lists_it(
    epic: StubEpicServer, home: Path
) -> None:
    data = pdf(2, size=10_001)
    [result] = deliver(destination(epic, home), document(2, data))
    assert result.ok, result.detail
    assert epic.state.binary_creates == 1
    assert epic.state.creates_by_hash[hashlib.sha256(data).hexdigest()] == 1
    [doc] = stored_documents(epic)
    assert doc["content"][0]["attachment"]["url"].startswith("Binary/")


def test_document_mode_inline_overrides_the_capability_statement(
    epic: StubEpicServer, home: Path
) -> None:
    [result] = deliver(destination(epic, home, document_mode="inline"), document(3, pdf(3)))
    assert result.ok, result.detail
    assert epic.state.binary_creates == 0


@pytest.mark.parametrize("binary", [True, False])
def test_redelivery_creates_once(epic: StubEpicServer, home: Path, binary: bool) -> None:
    epic.state.binary_supported = binary
    data = pdf(4)
    first, again = deliver(destination(epic, home), document(4, data), document(4, data))
    assert first.ok and again.ok
    assert "already there" in again.detail
    assert epic.state.creates_by_hash[hashlib.sha256(data).hexdigest()] == 1
    assert epic.state.binary_creates == (1 if binary else 0)  # no second Binary either


def test_patient_cached_across_deliveries(epic: StubEpicServer, home: Path) -> None:
    results = deliver(destination(epic, home), document(5, pdf(5)), document(6, pdf(6)))
    assert all(r.ok for r in results)
    assert epic.state.data.searches["Patient"] == 1
    assert sum(epic.state.creates_by_hash.values()) == 2


def test_unknown_mrn_waits_for_a_patient(epic: StubEpicServer, home: Path) -> None:
    [result] = deliver(destination(epic, home), document(7, pdf(7), mrn="NOSUCH42"))
    assert result.needs_patient and not result.ok and not result.retryable
    assert result.detail == "patient not found (0 matches)"
    assert "NOSUCH42" not in result.detail
    assert stored_documents(epic) == []


def test_an_mrn_matching_two_patients_waits_too(epic: StubEpicServer, home: Path) -> None:
    twin = epic.state.data.put(
        {
            "resourceType": "Patient",
            "identifier": [{"system": MRN_SYSTEM, "value": "TWIN1"}],
        }
    )
    epic.state.data.put({**twin, "id": "other-twin"})
    [result] = deliver(destination(epic, home), document(8, pdf(8), mrn="TWIN1"))
    assert result.needs_patient
    assert result.detail == "patient not found (2 matches)"


def test_429_retry_after_is_retryable_with_the_wait(epic: StubEpicServer, home: Path) -> None:
    epic.state.fail_next(429, retry_after=7)
    [result] = deliver(destination(epic, home), document(9, pdf(9)))
    assert result.retryable and not result.ok
    assert result.retry_after_s == 7
    assert "429" in result.detail and result.detail.startswith("epic: ")


def test_503_then_success_on_the_next_attempt(epic: StubEpicServer, home: Path) -> None:
    epic.state.binary_supported = False
    data = pdf(10)
    epic.state.fail_next(503)
    dest = destination(epic, home)
    first, second = deliver(dest, document(10, data), document(10, data))
    assert first.retryable and "503" in first.detail
    assert second.ok
    assert epic.state.creates_by_hash[hashlib.sha256(data).hexdigest()] == 1


def test_401_gets_one_new_token(epic: StubEpicServer, home: Path) -> None:
    dest = destination(epic, home)

    async def run() -> tuple[DeliveryResult, DeliveryResult]:
        try:
            first = await dest.deliver(document(11, pdf(11)))
            epic.state.revoke_tokens()  # the token Epic gave stops working
            return first, await dest.deliver(document(12, pdf(12)))
        finally:
            await dest.close()

    issued = epic.state.tokens_issued
    first, second = asyncio.run(run())
    assert first.ok and second.ok, second.detail
    assert epic.state.tokens_issued == issued + 2


def test_the_stub_refusing_the_document_is_permanent(epic: StubEpicServer, home: Path) -> None:
    """The patient is found (then cached) but gone when the DocumentReference arrives."""
    epic.state.binary_supported = False
    dest = destination(epic, home)

    async def run() -> tuple[DeliveryResult, DeliveryResult]:
        try:
            first = await dest.deliver(document(13, pdf(13), mrn="DEMO1003"))
            pid = demo_patient_id(epic, "DEMO1003")
            with epic.state.fhir.lock:
                patient = epic.state.fhir.resources["Patient"].pop(pid)
            try:
                return first, await dest.deliver(document(14, pdf(14), mrn="DEMO1003"))
            finally:
                with epic.state.fhir.lock:
                    epic.state.fhir.resources["Patient"][pid] = patient
        finally:
            await dest.close()

    first, second = asyncio.run(run())
    assert first.ok
    assert not second.ok and not second.retryable and not second.needs_patient
    assert second.detail == ("epic: DocumentReference create -> 422 (OperationOutcome: not-found)")


def test_hl7v2_and_bundles_are_refused_naming_the_reason(epic: StubEpicServer, home: Path) -> None:
    hl7 = Payload(1, "epic", "hl7v2", b"MSH|^~\\&|", "x-application/hl7-v2+er7", "1:epic", "C1")
    bundle = Payload(2, "epic", "fhir-bundle", b"{}", "application/fhir+json", "2:epic", "C2")
    asked = epic.state.token_requests
    first, second = deliver(destination(epic, home), hl7, bundle)
    assert not first.ok and not first.retryable
    assert first.detail == "epic: Epic takes HL7v2 over MLLP: route it to an mllp destination"
    assert not second.ok and "documents only" in second.detail
    assert epic.state.token_requests == asked  # refused before any request


def test_the_fhir_destination_writes_documents_with_the_same_writer() -> None:
    """A generic FHIR server (no CapabilityStatement listing Binary: inline), no auth."""
    data = pdf(30)
    with running_stub_fhir() as fhir:
        fhir.state.resources["Patient"] = {
            "p1": {
                "resourceType": "Patient",
                "id": "p1",
                "identifier": [{"system": MRN_SYSTEM, "value": "DEMO1001"}],
            }
        }
        config = FhirDestination.model_validate({"base_url": fhir.base_url})
        dest = FhirRestDestination("fhir", config)

        async def run() -> DeliveryResult:
            try:
                return await dest.deliver(document(30, data))
            finally:
                await dest.close()

        result = asyncio.run(run())
        assert result.ok, result.detail
        [doc] = fhir.state.resources["DocumentReference"].values()
    assert doc["subject"] == {"reference": "Patient/p1"}
    assert base64.b64decode(doc["content"][0]["attachment"]["data"]) == data


def test_base64_body_streams_exactly_the_json_it_announces() -> None:
    from engine.adapters.fhir_documents import base64_body

    data = pdf(20, size=4097)
    sha = hashlib.sha256(data).hexdigest()
    content = DocumentContent(sha, len(data), lambda: iter([data[:1000], data[1000:]]))
    resource: dict[str, Any] = {"resourceType": "DocumentReference", "content": []}
    attachment: dict[str, Any] = {"contentType": "application/pdf"}
    resource["content"].append({"attachment": attachment})

    async def collect() -> bytes:
        stream, length = base64_body(resource, attachment, content)
        body = b"".join([c async for c in stream()])
        assert len(body) == length
        return body

    import orjson

    parsed = orjson.loads(asyncio.run(collect()))
    assert base64.b64decode(parsed["content"][0]["attachment"]["data"]) == data


def test_patient_cache_expires_and_stays_bounded() -> None:
    from engine.adapters.fhir_documents import PatientCache

    now = [0.0]
    cache = PatientCache(ttl_s=60, size=2, clock=lambda: now[0])
    cache.put("s|A", "1")
    cache.put("s|B", "2")
    assert cache.get("s|A") == "1"  # A is now the most recent
    cache.put("s|C", "3")  # B, the least recent, goes
    assert (cache.get("s|B"), len(cache)) == (None, 2)
    now[0] = 61.0
    assert cache.get("s|A") is None and cache.get("s|C") is None


def test_patient_cache_ttl_is_a_route_key(epic: StubEpicServer, home: Path) -> None:
    dest = destination(epic, home, patient_cache_ttl_s=0)
    results = deliver(dest, document(40, pdf(40)), document(41, pdf(41)))
    assert all(r.ok for r in results)
    assert epic.state.data.searches["Patient"] == 2  # nothing kept: searched each time


def test_a_server_taking_only_fhir_json_binaries_gets_one(epic: StubEpicServer, home: Path) -> None:
    """Raw bytes refused with 415: the Binary goes as FHIR JSON (base64 data), and the next
    document goes that way at once."""
    epic.state.data.binary_raw_supported = False
    try:
        first, second = deliver(
            destination(epic, home), document(50, pdf(50)), document(51, pdf(51))
        )
        assert first.ok and second.ok, (first.detail, second.detail)
        assert epic.state.binary_creates == 2
        assert epic.state.data.binary_refused == 1  # the raw attempt, once
        for data in (pdf(50), pdf(51)):
            assert epic.state.creates_by_hash[hashlib.sha256(data).hexdigest()] == 1
    finally:
        epic.state.data.binary_raw_supported = True


def test_redelivery_creates_once_even_where_if_none_exist_is_ignored(
    epic: StubEpicServer, home: Path
) -> None:
    """A server that ignores If-None-Exist: the search before the create finds the first."""
    epic.state.binary_supported = False
    epic.state.data.honour_if_none_exist = False
    try:
        data = pdf(60)
        first, again = deliver(destination(epic, home), document(60, data), document(60, data))
        assert first.ok and again.ok
        assert epic.state.creates_by_hash[hashlib.sha256(data).hexdigest()] == 1
    finally:
        epic.state.data.honour_if_none_exist = True


def test_the_same_bytes_for_two_patients_are_two_documents(
    epic: StubEpicServer, home: Path
) -> None:
    data = pdf(70)
    results = deliver(
        destination(epic, home), document(70, data, "DEMO1001"), document(71, data, "DEMO1002")
    )
    assert all(r.ok for r in results)
    assert epic.state.creates_by_hash[hashlib.sha256(data).hexdigest()] == 2


@pytest.mark.parametrize("binary", [True, False])
def test_bytes_read_that_are_not_the_stored_ones_send_nothing(
    epic: StubEpicServer, home: Path, binary: bool
) -> None:
    """The store gives other bytes than it hashed (a disk fault): the request is cut before
    its last chunk, so the server creates nothing; retryable (the next read may be good)."""
    import dataclasses

    epic.state.binary_supported = binary
    good = pdf(80, size=5000)
    payload = document(80, good)
    bad = good[:-1] + b"!"
    chunks = [bad[i : i + 1000] for i in range(0, len(bad), 1000)]
    payload = dataclasses.replace(
        payload, content=DocumentContent(payload.content.sha256, len(bad), lambda: iter(chunks))
    )
    [result] = deliver(destination(epic, home), payload)
    assert not result.ok and result.retryable
    assert "not the stored ones" in result.detail
    assert sum(epic.state.creates_by_hash.values()) == 0
    assert epic.state.binary_creates == 0
