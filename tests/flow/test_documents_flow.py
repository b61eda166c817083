"""Documents through the pipeline, on the real store: a stored document routed by type, sender and
practice, mapped per route (DocumentReference, MDM^T02, as it came) and delivered to folders and
a real MLLP peer; an MDM^T02 received is taken in as a document (same bytes, same SHA-256), one
of 16 MiB over MLLP included."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import warnings
from datetime import UTC, datetime
from pathlib import Path

import hl7
import hl7.client
import orjson
import pytest
from hl7.mllp import start_hl7_server

from engine.adapters.destination import Destination, Payload
from engine.adapters.files import FileDestination, FileDropDestination
from engine.adapters.mllp.client import MLLPDestination, MllpDestination
from engine.adapters.mllp.server import MLLPServer
from engine.adapters.registry import load_routes
from engine.documents.model import (
    DOCUMENT_ENVELOPE_TYPE,
    DocumentContent,
    DocumentEnvelope,
    DocumentInfo,
)
from engine.flow.deliver import Dispatcher
from engine.flow.gate import RouteGate
from engine.flow.ingest import Ingest
from engine.flow.process import Processor
from engine.hl7v2.codec import parse_message
from engine.hl7v2.validate import validate
from engine.mappings import Mappings, load_mappings
from engine.mappings.document_types import document_types
from engine.mappings.fhir_validate import validate_resource
from engine.mappings.mdm import fill_mdm, mdm_t02
from engine.routes.loader import RouteSet
from engine.routes.router import Router
from engine.store import SqlMessageStore
from engine.store.documents import NewDocument
from tests.adapters.test_mllp_client import ScriptedHandler

NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)

ROUTES = """
destinations:
  cards: {{type: file, directory: "{tmp}/cards"}}
  labs: {{type: file, directory: "{tmp}/labs"}}
  chart: {{type: file, directory: "{tmp}/chart"}}
routes:
  - name: practice-1-cards
    match: {{kind: document, document_type: [insurance-card], practice: ["1"]}}
    mapping: none
    destinations: [cards]
  - name: faxed-labs
    match: {{document_type: [lab-report], sending_application: [FAX]}}
    mapping: hl7v2
    destinations: [labs]
  - name: everything-to-chart
    match: {{kind: document}}
    mapping: fhir
    destinations: [chart]
"""


def simple_pdf(pad: int = 0) -> bytes:
    """A minimal one-page PDF (pypdf opens it), with ``pad`` bytes of comment lines."""
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    line = b"%" + b"x" * 78 + b"\n"
    out += line * (pad // len(line))
    offsets = []
    for n, body in enumerate(objs, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return bytes(out)


@pytest.fixture(scope="module")
def mappings() -> Mappings:
    return load_mappings()


def routes_in(tmp_path: Path, text: str = ROUTES) -> RouteSet:
    folder = tmp_path / "routes"
    folder.mkdir(exist_ok=True)
    (folder / "docs.yaml").write_text(text.format(tmp=tmp_path))
    return load_routes(defaults=folder)


def put(
    store: SqlMessageStore, tmp_path: Path, data: bytes, **fields: str
) -> tuple[DocumentInfo, int]:
    src = tmp_path / f"in-{hashlib.sha256(data).hexdigest()[:8]}.pdf"
    src.write_bytes(data)
    base = {
        "patient_mrn": "MRN1",
        "document_type": "insurance-card",
        "document_date": "2026-03-01",
        "sender": "FRONTDESK",
        "channel": "folder",
        "patient_authority": "OAKCLINIC",
    }
    base.update(fields)
    stored = store.store_document(
        NewDocument(**base),  # type: ignore[arg-type]
        src,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        media_type="application/pdf",
    )
    return stored.info, stored.message_id


def process(store: SqlMessageStore, routes: RouteSet, mappings: Mappings) -> Processor:
    processor = Processor(store, routes, mappings)
    while processor.process_batch():
        pass
    return processor


def payloads(store: SqlMessageStore) -> dict[tuple[int, str], tuple[str, bytes]]:
    """Every delivery's (route, payload), by message and destination, read from the table."""
    from sqlalchemy import select

    from engine.store.tables import deliveries as table

    with store.db_engine.connect() as conn:
        rows = conn.execute(
            select(
                table.c.message_id,
                table.c.destination,
                table.c.route,
                table.c.kind,
                table.c.content_type,
                table.c.payload,
            )
        ).all()
    out = {}
    for row in rows:
        assert row.kind == "document" and row.content_type == DOCUMENT_ENVELOPE_TYPE
        out[(row.message_id, row.destination)] = (row.route, bytes(row.payload))
    return out


# -- routing and mapping -------------------------------------------------------------------------


def test_documents_routed_by_type_sender_and_practice(
    store: SqlMessageStore, tmp_path: Path, mappings: Mappings
) -> None:
    routes = routes_in(tmp_path)
    data = simple_pdf()
    card1, m_card1 = put(store, tmp_path, data, practice="1")
    card2, m_card2 = put(store, tmp_path, data + b"\n", practice="2", patient_mrn="MRN2")
    lab_fax, m_lab_fax = put(
        store, tmp_path, data + b"\n\n", document_type="lab-report", sender="FAX"
    )
    lab_desk, m_lab_desk = put(
        store, tmp_path, data + b"\n\n\n", document_type="lab-report", sender="FRONTDESK"
    )
    process(store, routes, mappings)
    got = payloads(store)
    by_message: dict[int, set[str]] = {}
    for (mid, dest), _ in got.items():
        by_message.setdefault(mid, set()).add(dest)
    assert by_message == {
        m_card1: {"cards", "chart"},
        m_card2: {"chart"},
        m_lab_fax: {"labs", "chart"},
        m_lab_desk: {"chart"},
    }
    for mid in by_message:
        view = store.get(mid)
        assert view is not None and view.state == "routed"

    none = DocumentEnvelope.from_bytes(got[(m_card1, "cards")][1])
    assert none.format == "none" and none.document == card1 and none.body is None

    fhir = DocumentEnvelope.from_bytes(got[(m_card1, "chart")][1])
    assert fhir.format == "fhir"
    docref = fhir.body["DocumentReference"]
    validate_resource(docref)
    assert docref["type"]["coding"][0]["code"] == "64290-0"
    sha1 = base64.b64encode(hashlib.sha1(data).digest()).decode()
    assert docref["content"][0]["attachment"]["hash"] == sha1  # computed from the stored bytes
    assert fhir.body["Binary"] == {"resourceType": "Binary", "contentType": "application/pdf"}

    mdm = DocumentEnvelope.from_bytes(got[(m_lab_fax, "labs")][1])
    assert mdm.format == "hl7v2"
    message = parse_message(mdm.body)
    assert message.type.code == "MDM" and message.get("TXA-2") == "LR"
    assert message.get("OBX-5.5") == ""  # the bytes go in when it is sent
    assert lab_fax.patient_key == "OAKCLINIC|MRN1"


def test_a_document_whose_type_the_table_lacks_is_parked_with_the_reason(
    store: SqlMessageStore, tmp_path: Path, mappings: Mappings
) -> None:
    routes = routes_in(tmp_path)
    _, mid = put(store, tmp_path, simple_pdf(), document_type="x-ray")
    process(store, routes, mappings)
    view = store.get(mid)
    assert view is not None and view.state == "error"
    assert "'x-ray' is not in the document type table" in (view.reason or "")


# -- delivering ---------------------------------------------------------------------------------


def content_of(store: SqlMessageStore, info: DocumentInfo) -> DocumentContent:
    return DocumentContent(info.sha256, info.size, lambda: store.document_chunks(info.sha256))


def doc_payload(
    store: SqlMessageStore, info: DocumentInfo, body: bytes, mid: int, dest: str
) -> Payload:
    return Payload(
        message_id=mid,
        destination=dest,
        kind="document",
        body=body,
        content_type=DOCUMENT_ENVELOPE_TYPE,
        idempotency_key=f"{mid}-{dest}",
        control_id="",
        content=content_of(store, info),
    )


def test_folder_gets_the_bytes_and_a_sidecar_and_mapped_forms(
    store: SqlMessageStore, tmp_path: Path, mappings: Mappings
) -> None:
    routes = routes_in(tmp_path)
    data = simple_pdf(pad=3 * 1024 * 1024)  # several stored chunks
    info, mid = put(store, tmp_path, data, practice="1")
    lab, lab_mid = put(store, tmp_path, data + b"\n", document_type="lab-report", sender="FAX")
    process(store, routes, mappings)
    got = payloads(store)

    async def run() -> None:
        for (m, dest), (_, body) in got.items():
            target = FileDropDestination(dest, FileDestination(directory=tmp_path / "out" / dest))
            doc = info if m == mid else lab
            result = await target.deliver(doc_payload(store, doc, body, m, dest))
            assert result.ok, result.detail
            again = await target.deliver(doc_payload(store, doc, body, m, dest))
            assert again.ok  # a redelivery finds its files

    asyncio.run(run())
    [card] = list((tmp_path / "out" / "cards").glob("*.pdf"))
    assert card.read_bytes() == data
    [meta] = list((tmp_path / "out" / "cards").glob("*.meta.json"))
    side = orjson.loads(meta.read_bytes())
    assert side["file"] == card.name and side["document"]["sha256"] == info.sha256
    assert not list((tmp_path / "out" / "cards").glob(".*"))  # no temporary file left

    [mdm] = list((tmp_path / "out" / "labs").glob("*.hl7"))
    message = parse_message(mdm.read_bytes())
    assert base64.b64decode(message.get("OBX-5.5")) == data + b"\n"
    assert not [i for i in validate(message) if i.severity == "E"]

    charted = [p for p in (tmp_path / "out" / "chart").glob("*.json") if ".meta" not in p.name]
    assert len(charted) == 2
    for path in charted:
        docref = orjson.loads(path.read_bytes())
        validate_resource(docref)
        attachment = docref["content"][0]["attachment"]
        raw = base64.b64decode(attachment["data"])
        assert attachment["hash"] == base64.b64encode(hashlib.sha1(raw).digest()).decode()


def test_mdm_to_a_python_hl7_peer(
    store: SqlMessageStore, tmp_path: Path, mappings: Mappings
) -> None:
    """The MLLP destination sends the MDM^T02 with OBX-5 filled; the outside peer's AA delivers."""
    routes = routes_in(tmp_path)
    data = simple_pdf(pad=200_000)
    info, mid = put(store, tmp_path, data, document_type="lab-report", sender="FAX")
    process(store, routes, mappings)
    body = payloads(store)[(mid, "labs")][1]
    received: list[bytes] = []

    async def on_client(reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter) -> None:
        try:
            while True:
                message = await reader.readmessage()
                received.append(str(message).encode())
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    writer.writemessage(message.create_ack("AA"))
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    async def run() -> bool:
        server = await start_hl7_server(on_client, "127.0.0.1", 0, limit=4 * 1024 * 1024)
        port = server.sockets[0].getsockname()[1]
        dest = MLLPDestination("labs", MllpDestination(host="127.0.0.1", port=port, timeout_s=10))
        try:
            result = await dest.deliver(doc_payload(store, info, body, mid, "labs"))
            return result.ok
        finally:
            await dest.close()
            server.close()
            await server.wait_closed()

    assert asyncio.run(run())
    [sent] = received
    message = parse_message(sent)
    assert base64.b64decode(message.get("OBX-5.5")) == data
    assert message.get("MSH-10") == f"D{mid}"


def test_mllp_refuses_a_document_not_mapped_to_mdm(
    store: SqlMessageStore, tmp_path: Path, mappings: Mappings
) -> None:
    routes = routes_in(tmp_path)
    info, mid = put(store, tmp_path, simple_pdf(), practice="1")
    process(store, routes, mappings)
    body = payloads(store)[(mid, "cards")][1]
    dest = MLLPDestination("x", MllpDestination(host="127.0.0.1", port=9, timeout_s=1))
    result = asyncio.run(dest.deliver(doc_payload(store, info, body, mid, "x")))
    assert not result.ok and not result.retryable
    assert "mapping: hl7v2" in result.detail


# -- MDM in -------------------------------------------------------------------------------------


class _Handler:
    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest

    async def on_message(self, data: bytes, peer: str) -> bytes | None:
        return (await self.ingest.receive(data, channel="mllp", peer=peer)).ack

    async def on_oversize(self, head: bytes, limit: int, peer: str) -> bytes | None:
        return (
            await self.ingest.receive_oversize(head, limit=limit, channel="mllp", peer=peer)
        ).ack


def inbound_mdm(mappings: Mappings, data: bytes, **fields: object) -> bytes:
    """An MDM^T02 as an EHR would send it: made by our own MDM mapping from a document."""
    base: dict[str, object] = {
        "document_id": 500,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "media_type": "application/pdf",
        "patient_mrn": "MRN5",
        "document_type": "clinical-note",
        "document_date": "2026-02-27",
        "sender": "EHR",
        "channel": "mllp",
        "patient_authority": "OAKCLINIC",
        "unique_number": "EHR-DOC-9",
    }
    base.update(fields)
    info = DocumentInfo(**base)  # type: ignore[arg-type]
    er7 = mdm_t02(info, document_types(mappings), mappings.files.site, control_id="M500", now=NOW)
    er7 = er7.replace("|ENGINE|ENGINE|", "|EHR|CLINIC|", 1)
    return fill_mdm(er7, data)


def test_mdm_in_round_trip_same_bytes(
    store: SqlMessageStore, tmp_path: Path, mappings: Mappings
) -> None:
    routes = routes_in(tmp_path)
    data = simple_pdf(pad=50_000)
    raw = inbound_mdm(mappings, data)
    gate = RouteGate(Router(routes), mappings)
    assert gate.refuse(parse_message(raw)) is None  # the gate takes an MDM: routes take documents

    async def receive() -> bytes | None:
        ingest = Ingest(store, routes=gate)
        await ingest.start()
        try:
            return (await ingest.receive(raw, channel="mllp")).ack
        finally:
            await ingest.stop()

    ack = asyncio.run(receive())
    assert parse_message(ack or b"").get("MSA-1") == "AA"
    process(store, routes, mappings)
    [mdm_view] = [v for v in store.list() if v.message_type == "MDM"]
    assert mdm_view.state == "routed"
    mdm_full = store.get(mdm_view.id)
    assert mdm_full is not None
    assert any("its document stored: document" in w for w in mdm_full.warnings)
    docs = [v for v in store.list() if v.message_type == "DOC"]
    assert len(docs) == 1
    stored_raw = store.raw(docs[0].id)
    info = DocumentInfo.from_json(stored_raw or b"")
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert b"".join(store.document_chunks(info.sha256)) == data
    assert (info.channel, info.unique_number, info.document_type) == (
        "mllp",
        "EHR-DOC-9",
        "clinical-note",
    )
    assert (info.patient_mrn, info.patient_authority, info.sender) == ("MRN5", "OAKCLINIC", "EHR")
    assert docs[0].state == "routed"  # the document's own message went through routing
    doc_view = store.get(docs[0].id)
    assert doc_view is not None and {d.destination for d in doc_view.deliveries} == {"chart"}


def test_mdm_in_with_bad_base64_is_an_error_naming_obx5(
    store: SqlMessageStore, tmp_path: Path, mappings: Mappings
) -> None:
    routes = routes_in(tmp_path)
    raw = inbound_mdm(mappings, simple_pdf())
    text = raw.decode()
    head, _, rest = text.partition("^Base64^")
    bad = (head + "^Base64^###" + rest[3:]).encode()
    done = Processor(store, routes, mappings).process_one(1, bad, "hl7v2")
    assert done.state == "error" and "OBX-5" in (done.reason or "")
    assert "base64" in (done.reason or "")


def test_mdm_in_reference_pointer_is_refused_with_the_reason(
    store: SqlMessageStore, tmp_path: Path, mappings: Mappings
) -> None:
    routes = routes_in(tmp_path)
    raw = (
        b"MSH|^~\\&|EHR|CLINIC|ENGINE|HUB|20260301120000||MDM^T02^MDM_T02|R1|P|2.5.1\r"
        b"EVN|T02|20260301120000\rPID|1||MRN7^^^CLINIC^MR||Testpatient^Ann\rPV1|1|O\r"
        b"TXA|1|PR|AP|20260228||||||||U-1^EHR|||||DO\r"
        b"OBX|1|RP|11506-3^Progress note^LN||https://ehr.example/doc/1^EHR^application^pdf||||||F\r"
    )
    done = Processor(store, routes, mappings).process_one(1, raw, "hl7v2")
    assert done.state == "error" and "reference pointer (RP)" in (done.reason or "")


@pytest.mark.postgres
@pytest.mark.parametrize("db_engine", ["postgresql"], indirect=True)
def test_16_mib_mdm_over_mllp_received_and_its_document_delivered_to_a_folder(
    store: SqlMessageStore, tmp_path: Path, mappings: Mappings
) -> None:
    """python-hl7's MLLP client sends a 16 MiB MDM^T02 to our listener; the document it carries
    is stored and delivered to a folder, byte for byte."""
    text = ROUTES.replace(
        "match: {{kind: document}}\n    mapping: fhir\n    destinations: [chart]",
        "match: {{kind: document}}\n    mapping: none\n    destinations: [chart]",
    )
    routes = routes_in(tmp_path, text)
    data = simple_pdf(pad=12 * 1024 * 1024 - 2000)  # base64: a 16 MiB message
    raw = inbound_mdm(mappings, data)
    assert 16 * 1024 * 1024 - 4096 < len(raw) <= 16 * 1024 * 1024
    dests: dict[str, Destination] = {
        name: FileDropDestination(name, FileDestination(directory=tmp_path / "out" / name))
        for name in ("cards", "labs", "chart")
    }

    async def run() -> bytes:
        stop = asyncio.Event()
        ingest = Ingest(store, routes=RouteGate(Router(routes), mappings))
        await ingest.start()
        server = MLLPServer(_Handler(ingest), host="127.0.0.1", port=0)
        await server.start()
        processor = Processor(store, routes, mappings, idle_s=0.05)
        dispatcher = Dispatcher(store, routes, dests, idle_s=0.05)
        processor.on_routed = dispatcher.wake
        ingest.on_stored = processor.wake
        tasks = [
            asyncio.create_task(processor.run(stop)),
            asyncio.create_task(dispatcher.run(stop)),
        ]
        try:
            ack = await asyncio.to_thread(_send_with_python_hl7, server.bound_port, raw)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            target = tmp_path / "out" / "chart"
            while loop.time() < deadline and not list(target.glob("*.meta.json")):
                await asyncio.sleep(0.1)
            return ack
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            await server.stop()
            await ingest.stop()

    ack = asyncio.run(run())
    assert parse_message(ack).get("MSA-1") == "AA"
    [written] = list((tmp_path / "out" / "chart").glob("*.pdf"))
    assert hashlib.sha256(written.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()


def _send_with_python_hl7(port: int, raw: bytes) -> bytes:
    """Send one framed message with python-hl7's MLLPClient (its socket, all of the frame) and
    read the ACK frame whole."""
    client = hl7.client.MLLPClient("127.0.0.1", port)
    try:
        client.socket.settimeout(60)
        client.socket.sendall(b"\x0b" + raw + b"\x1c\r")
        reply = b""
        while not reply.endswith(b"\x1c\r"):
            chunk = client.socket.recv(65536)
            if not chunk:
                break
            reply += chunk
        return reply.strip(b"\x0b\x1c\r")
    finally:
        client.close()


RP_MDM = (
    b"MSH|^~\\&|EHR|CLINIC|ENGINE|HUB|20260301120000||MDM^T02^MDM_T02|R1|P|2.5.1\r"
    b"EVN|T02|20260301120000\rPID|1||MRN7^^^CLINIC^MR||Testpatient^Ann\rPV1|1|O\r"
    b"TXA|1|PR|AP|20260228||||||||U-1^EHR|||||DO\r"
    b"OBX|1|RP|11506-3^Progress note^LN||https://ehr.example/doc/1^EHR^application^pdf||||||F\r"
)


def test_gate_refuses_an_rp_mdm_before_the_ack(tmp_path: Path, mappings: Mappings) -> None:
    problem = RouteGate(Router(routes_in(tmp_path)), mappings).refuse(parse_message(RP_MDM))
    assert problem is not None and "reference pointer (RP)" in str(problem)
    assert problem.code != "200"  # not "unsupported": the content is what is wrong (AE)


def test_an_rp_mdm_a_pass_through_route_takes_is_passed_on_with_a_warning(
    store: SqlMessageStore, tmp_path: Path, mappings: Mappings
) -> None:
    text = ROUTES + (
        "  - name: mdm-raw\n    match: {{message: [MDM]}}\n    mapping: none\n"
        "    destinations: [labs]\n"
    )
    routes = routes_in(tmp_path, text)
    assert RouteGate(Router(routes), mappings).refuse(parse_message(RP_MDM)) is None
    done = Processor(store, routes, mappings).process_one(1, RP_MDM, "hl7v2")
    assert done.state == "routed"
    assert [d.destination for d in done.new_deliveries] == ["labs"]
    assert "its document not taken" in (done.warnings or "")


def test_without_document_routes_an_mdm_is_still_unsupported(
    tmp_path: Path, mappings: Mappings
) -> None:
    text = (
        'destinations:\n  raw: {{type: file, directory: "{tmp}/raw"}}\nroutes:\n'
        "  - name: adt\n    match: {{message: [ADT]}}\n    mapping: none\n"
        "    destinations: [raw]\n"
    )
    raw = inbound_mdm(mappings, simple_pdf())
    problem = RouteGate(Router(routes_in(tmp_path, text)), mappings).refuse(parse_message(raw))
    assert problem is not None and problem.code == "200"


def test_bytes_that_are_not_the_stored_ones_are_never_written_or_sent(
    store: SqlMessageStore, tmp_path: Path, mappings: Mappings
) -> None:
    routes = routes_in(tmp_path)
    info, mid = put(store, tmp_path, simple_pdf(), practice="1")
    lab, lab_mid = put(
        store, tmp_path, simple_pdf() + b"\n", document_type="lab-report", sender="FAX"
    )
    process(store, routes, mappings)
    got = payloads(store)
    other = DocumentContent(info.sha256, info.size, lambda: iter([b"%PDF-1.4 something else"]))

    def tampered(body: bytes, m: int, dest: str) -> Payload:
        return Payload(m, dest, "document", body, DOCUMENT_ENVELOPE_TYPE, f"{m}", "", other)

    async def run() -> list[tuple[bool, bool]]:
        out = []
        folder = FileDropDestination("cards", FileDestination(directory=tmp_path / "o"))
        r = await folder.deliver(tampered(got[(mid, "cards")][1], mid, "cards"))
        out.append((r.ok, r.retryable))
        r = await folder.deliver(tampered(got[(lab_mid, "labs")][1], lab_mid, "labs"))
        out.append((r.ok, r.retryable))
        server = MLLPServer(peer, host="127.0.0.1", port=0)  # answers AA to anything
        await server.start()
        mllp = MLLPDestination(
            "labs", MllpDestination(host="127.0.0.1", port=server.bound_port, timeout_s=2)
        )
        try:
            r = await mllp.deliver(tampered(got[(lab_mid, "labs")][1], lab_mid, "labs"))
            out.append((r.ok, r.retryable))
        finally:
            await mllp.close()
            await server.stop()
        return out

    peer = ScriptedHandler()
    assert asyncio.run(run()) == [(False, True)] * 3
    assert peer.received == []  # nothing was sent
    assert not list((tmp_path / "o").iterdir())  # nothing written, no temporary file left


def test_a_payload_that_is_no_document_envelope_is_a_permanent_failure(tmp_path: Path) -> None:
    def bad(body: bytes) -> Payload:
        content = DocumentContent("0" * 64, 1, lambda: iter([b"x"]))
        return Payload(1, "d", "document", body, DOCUMENT_ENVELOPE_TYPE, "1", "", content)

    info = DocumentInfo(1, "0" * 64, 1, "application/pdf", "M", "other", "2026-01-01", "S", "x")
    no_body = DocumentEnvelope(info, "fhir", None).to_bytes()

    async def run() -> list[tuple[bool, bool]]:
        folder = FileDropDestination("d", FileDestination(directory=tmp_path / "o"))
        mllp = MLLPDestination("d", MllpDestination(host="127.0.0.1", port=9, timeout_s=1))
        results = [
            await folder.deliver(bad(b"not json")),
            await folder.deliver(bad(no_body)),
            await mllp.deliver(bad(b"{}")),
        ]
        return [(r.ok, r.retryable) for r in results]

    assert asyncio.run(run()) == [(False, False)] * 3


def test_the_same_mdm_sent_twice_is_one_document_and_an_addendum_is_noted(
    store: SqlMessageStore, tmp_path: Path, mappings: Mappings
) -> None:
    routes = routes_in(tmp_path)
    data = simple_pdf()
    raw = inbound_mdm(mappings, data)
    processor = Processor(store, routes, mappings)
    first = processor.process_one(1, raw, "hl7v2")
    again = processor.process_one(2, raw.replace(b"|M500|", b"|M501|"), "hl7v2")
    assert first.state == again.state == "routed"
    assert "its document stored: document" in (first.warnings or "")
    assert "its document stored before: document" in (again.warnings or "")
    assert len([v for v in store.list() if v.message_type == "DOC"]) == 1

    addendum = inbound_mdm(mappings, data + b"\n").replace(b"MDM^T02", b"MDM^T06")
    done = processor.process_one(3, addendum, "hl7v2")
    assert done.state == "routed"
    assert "MDM^T06: an addendum to an earlier document, but TXA-13" in (done.warnings or "")


def test_an_addendum_with_its_parent_number_keeps_the_relation(
    store: SqlMessageStore, tmp_path: Path, mappings: Mappings
) -> None:
    """MDM^T06 with TXA-13: the stored document keeps its parent's number and the relation,
    and the DocumentReference routed for it carries relatesTo appends."""
    routes = routes_in(tmp_path)
    processor = Processor(store, routes, mappings)
    raw = inbound_mdm(
        mappings,
        simple_pdf(),
        unique_number="EHR-DOC-10",
        parent_number="EHR-DOC-9",
        relation="appends",
    )
    assert b"MDM^T06" in raw and b"|EHR-DOC-9^" in raw
    done = processor.process_one(1, raw, "hl7v2")
    assert done.state == "routed"
    assert "carried on as such (relatesTo appends)" in (done.warnings or "")
    [doc] = [v for v in store.list() if v.message_type == "DOC"]
    info = DocumentInfo.from_json(store.raw(doc.id) or b"")
    assert (info.parent_number, info.relation) == ("EHR-DOC-9", "appends")
    from engine.mappings.documents import fhir_body

    relates = fhir_body(info, mappings, now=NOW)["DocumentReference"]["relatesTo"]
    assert [(r["code"], r["target"]["identifier"]["value"]) for r in relates] == [
        ("appends", "EHR-DOC-9")
    ]
