"""An MDM's document is checked before the ACK (review finding 8): an MDM^T02 whose OBX-5 is not
base64, or whose bytes are no document the engine takes (text, an encrypted or broken PDF), or
whose PID-3 is longer than the store keeps, is answered AE naming the field and the reason, never
AA and then parked where the sender cannot see it. The check is bounded: a PDF whose structure
takes longer than the budget to read is left to the worker rather than holding the receiver."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from pathlib import Path

import pytest
from pypdf import PdfWriter

from engine.adapters.mllp.server import MLLPServer
from engine.flow.documents import _checker, document_problem
from engine.flow.gate import RouteGate
from engine.flow.ingest import Ingest
from engine.hl7v2.ack import ack_code_for
from engine.hl7v2.codec import parse_message
from engine.mappings import Mappings, load_mappings
from engine.mappings.document_types import document_types
from engine.routes.router import Router
from engine.store import SqlMessageStore
from tests.flow.test_documents_flow import (
    ROUTES,
    _Handler,
    _send_with_python_hl7,
    inbound_mdm,
    routes_in,
    simple_pdf,
)


def encrypted_pdf() -> bytes:
    """A one-page PDF with a user password, as pypdf writes it."""
    writer = PdfWriter()
    writer.add_blank_page(100, 100)
    writer.encrypt("secret")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


@pytest.fixture(scope="module")
def mappings() -> Mappings:
    return load_mappings()


def with_obx5_data(raw: bytes, data: str) -> bytes:
    """The MDM with OBX-5's data component (after ``^Base64^``) replaced by ``data``."""
    head, sep, rest = raw.partition(b"^Base64^")
    end = rest.index(b"|")
    return head + sep + data.encode() + rest[end:]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ("@@@not-base64@@@", "not valid base64"),
        (b64(b"hello, this is plain text"), "the bytes are text"),
        (b64(encrypted_pdf()), "encrypted PDF"),
        (b64(b"%PDF-1.4\n% cut short"), "PDF does not open"),
        (b64(b"PK\x03\x04 a docx"), "ZIP archive"),
    ],
    ids=["bad-base64", "text", "encrypted-pdf", "broken-pdf", "docx"],
)
def test_the_gate_refuses_an_mdm_whose_document_cannot_be_taken(
    tmp_path: Path, mappings: Mappings, data: str, words: str
) -> None:
    raw = with_obx5_data(inbound_mdm(mappings, simple_pdf()), data)
    problem = RouteGate(Router(routes_in(tmp_path)), mappings).refuse(parse_message(raw))
    assert problem is not None, "an MDM whose document cannot be taken must not get AA"
    assert problem.where == "OBX-5" and words in str(problem)
    assert ack_code_for(problem, enhanced=False) == "AE"


def test_the_gate_refuses_an_mrn_longer_than_the_store_keeps(
    tmp_path: Path, mappings: Mappings
) -> None:
    raw = inbound_mdm(mappings, simple_pdf(), patient_mrn="7" * 65)
    problem = RouteGate(Router(routes_in(tmp_path)), mappings).refuse(parse_message(raw))
    assert problem is not None and problem.where == "PID-3"
    assert "7" * 65 not in str(problem)
    assert ack_code_for(problem, enhanced=False) == "AE"


def test_the_gate_takes_a_good_mdm_and_one_an_hl7v2_route_passes_on(
    tmp_path: Path, mappings: Mappings
) -> None:
    good = inbound_mdm(mappings, simple_pdf())
    assert RouteGate(Router(routes_in(tmp_path)), mappings).refuse(parse_message(good)) is None
    # passed on as received: its document's problem is the worker's note, not a refusal
    text = ROUTES + (
        "  - name: mdm-raw\n    match: {{message: [MDM]}}\n    mapping: none\n"
        "    destinations: [labs]\n"
    )
    bad = with_obx5_data(good, b64(b"plain text"))
    assert RouteGate(Router(routes_in(tmp_path, text)), mappings).refuse(parse_message(bad)) is None


def test_a_pdf_slower_to_check_than_the_budget_is_left_to_the_worker(mappings: Mappings) -> None:
    """A page tree that doubles at each of 40 levels: pypdf walks it until its own entry limit
    (a second or more); the receive path waits only its budget."""
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>"]
    objs += [
        b"<< /Type /Pages /Kids [%d 0 R %d 0 R] /Count 2 >>" % (k + 1, k + 1) for k in range(2, 42)
    ]
    objs.append(b"<< /Type /Page /MediaBox [0 0 1 1] >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for n, body in enumerate(objs, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    raw = inbound_mdm(mappings, bytes(out))
    started = time.monotonic()
    problem = document_problem(parse_message(raw), document_types(mappings), budget_s=0.1)
    assert time.monotonic() - started < 0.6
    assert problem is None  # the worker refuses it after the ACK (its sniff has no budget)
    _checker.submit(time.sleep, 0).result(timeout=30)  # the check ran on: the next test's waits


def test_over_mllp_the_sender_hears_ae_naming_obx5(
    store: SqlMessageStore, tmp_path: Path, mappings: Mappings
) -> None:
    routes = routes_in(tmp_path)
    raw = with_obx5_data(inbound_mdm(mappings, simple_pdf()), b64(b"hello, plain text"))

    async def run() -> bytes:
        ingest = Ingest(store, routes=RouteGate(Router(routes), mappings))
        await ingest.start()
        server = MLLPServer(_Handler(ingest), host="127.0.0.1", port=0)
        await server.start()
        try:
            return await asyncio.to_thread(_send_with_python_hl7, server.bound_port, raw)
        finally:
            await server.stop()
            await ingest.stop()

    ack = parse_message(asyncio.run(run()))
    assert ack.get("MSA-1") == "AE"
    assert "OBX" in ack.get("ERR-2") and "text" in ack.get("ERR-8")
    stored = store.get(int(ack.get("MSH-10").removeprefix("A")))  # the ACK's id: A<message id>
    assert stored is not None and stored.state == "error" and "OBX-5" in (stored.reason or "")


def test_a_check_queued_behind_a_slow_one_waits_only_its_budget(mappings: Mappings) -> None:
    """One thread checks: the next MDM does not wait for a slow check past its own budget."""
    raw = with_obx5_data(inbound_mdm(mappings, simple_pdf()), b64(b"plain text"))
    types = document_types(mappings)
    busy = _checker.submit(time.sleep, 1.0)
    try:
        started = time.monotonic()
        assert document_problem(parse_message(raw), types, budget_s=0.1) is None
        assert time.monotonic() - started < 0.6
    finally:
        busy.result(timeout=30)
    assert document_problem(parse_message(raw), types) is not None  # with the thread free
