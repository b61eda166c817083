"""Pass-through: a message with no FHIR mapping is taken when a route passes it on as received.

The rule (docs/ROUTES.md, "Which routes take a message, and when it is refused"): the gate
refuses (AR) only when no route can take the message; the processor gives the Bundle to the
mapping routes that can map it, the raw message to the pass-through routes, and skips a mapping
route that cannot map it, with a warning stored on the message.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from engine.adapters.memory import MemoryDestination
from engine.adapters.registry import load_routes
from engine.errors import UnsupportedMessageError
from engine.flow.gate import RouteGate
from engine.flow.process import Processor
from engine.hl7v2.codec import parse_message
from engine.mappings import Mappings, load_mappings
from engine.routes.loader import RouteSet
from engine.routes.router import Router
from engine.store import SqlMessageStore
from tests.flow.test_queue import run_all

DESTINATIONS = """
destinations:
  fhir:
    type: file
    directory: {tmp}/fhir
  raw:
    type: file
    directory: {tmp}/raw
routes:
"""

MAPPING_ADT = """
  - name: adt-to-fhir
    match: {{message: [ADT]}}
    mapping: fhir
    destinations: [fhir]
"""

RAW_ADT = """
  - name: adt-raw
    match: {{message: [ADT]}}
    mapping: none
    destinations: [raw]
"""

RAW_ORU = """
  - name: results-raw
    match: {{message: [ORU]}}
    mapping: none
    destinations: [raw]
"""

A02 = (
    b"MSH|^~\\&|FRONTDESK|CLINIC|ENGINE|HUB|20260102030405||ADT^A02|T{n}|P|2.5.1\r"
    b"EVN|A02|20260102030405\rPID|1||MRN9^^^CLINIC^MR||Testpatient^Bob||19800101|M\r"
    b"PV1|1|I|WARD^2^1\r"
)
A08_NO_PID = (
    b"MSH|^~\\&|FRONTDESK|CLINIC|ENGINE|HUB|20260102030405||ADT^A08|T{n}|P|2.5.1\r"
    b"EVN|A08|20260102030405\rPV1|1|O\r"
)
ORU = (
    b"MSH|^~\\&|LAB|LABFAC|ENGINE|HUB|20260102030405||ORU^R01|T{n}|P|2.5.1\r"
    b"PID|1||MRN9^^^CLINIC^MR||Testpatient^Bob\rOBR|1||LAB1|GLU^Glucose\r"
    b"OBX|1|NM|GLU^Glucose||5.4|mmol/L|||||F\r"
)


def raw(template: bytes, n: int = 1) -> bytes:
    return template.replace(b"{n}", str(n).encode())


@pytest.fixture(scope="module")
def mappings() -> Mappings:
    return load_mappings()


def route_set(tmp_path: Path, *routes: str) -> RouteSet:
    folder = tmp_path / "routes"
    folder.mkdir(exist_ok=True)
    text = DESTINATIONS.format(tmp=tmp_path) + "".join(r.format() for r in routes)
    (folder / "test.yaml").write_text(text)
    return load_routes(defaults=folder)


def gate(routes: RouteSet, mappings: Mappings) -> RouteGate:
    return RouteGate(Router(routes), mappings)


# the gate, before the ACK


def test_gate_takes_an_a02_a_pass_through_route_takes(tmp_path: Path, mappings: Mappings) -> None:
    routes = route_set(tmp_path, MAPPING_ADT, RAW_ADT)
    assert gate(routes, mappings).refuse(parse_message(raw(A02))) is None


def test_gate_refuses_an_a02_only_a_mapping_route_takes(tmp_path: Path, mappings: Mappings) -> None:
    routes = route_set(tmp_path, MAPPING_ADT)
    problem = gate(routes, mappings).refuse(parse_message(raw(A02)))
    assert isinstance(problem, UnsupportedMessageError)
    assert problem.code == "201" and "ADT^A02" in str(problem)


def test_gate_takes_an_oru_a_pass_through_route_takes(tmp_path: Path, mappings: Mappings) -> None:
    routes = route_set(tmp_path, MAPPING_ADT, RAW_ORU)
    assert gate(routes, mappings).refuse(parse_message(raw(ORU))) is None


def test_gate_refuses_an_oru_no_route_takes(tmp_path: Path, mappings: Mappings) -> None:
    routes = route_set(tmp_path, MAPPING_ADT, RAW_ADT)
    problem = gate(routes, mappings).refuse(parse_message(raw(ORU)))
    assert isinstance(problem, UnsupportedMessageError) and problem.code == "200"


def test_gate_refuses_an_adt_without_pid_even_with_a_pass_through_route(
    tmp_path: Path, mappings: Mappings
) -> None:
    """A type the mapping knows but cannot make its Patient from: never an AA (issue 9)."""
    message = parse_message(raw(A08_NO_PID))
    problem = gate(route_set(tmp_path, MAPPING_ADT, RAW_ADT), mappings).refuse(message)
    assert problem is not None and "no PID segment" in str(problem)


# the processor, after the ACK


def test_processor_skips_the_mapping_route_with_a_warning(
    tmp_path: Path, mappings: Mappings, store: SqlMessageStore
) -> None:
    routes = route_set(tmp_path, MAPPING_ADT, RAW_ADT)
    done = Processor(store, routes, mappings).process_one(1, raw(A02), "hl7v2")
    assert done.state == "routed" and done.reason is None
    [delivery] = done.new_deliveries
    assert (delivery.destination, delivery.route, delivery.payload) == ("raw", "adt-raw", raw(A02))
    assert not done.resources
    assert "route adt-to-fhir skipped" in (done.warnings or "")
    assert "ADT^A02" in (done.warnings or "")


def test_processor_without_a_pass_through_route_parks_the_message(
    tmp_path: Path, mappings: Mappings, store: SqlMessageStore
) -> None:
    """Routes changed after the ACK: nothing can take the message, a person must look."""
    routes = route_set(tmp_path, MAPPING_ADT)
    done = Processor(store, routes, mappings).process_one(1, raw(A02), "hl7v2")
    assert done.state == "error" and "ADT^A02" in (done.reason or "")
    assert not done.new_deliveries


def test_processor_maps_what_it_can_and_passes_the_rest(
    tmp_path: Path, mappings: Mappings, store: SqlMessageStore
) -> None:
    a08 = raw(A02).replace(b"ADT^A02", b"ADT^A08").replace(b"EVN|A02", b"EVN|A08")
    routes = route_set(tmp_path, MAPPING_ADT, RAW_ADT)
    done = Processor(store, routes, mappings).process_one(1, a08, "hl7v2")
    assert done.state == "routed"
    assert {d.destination for d in done.new_deliveries} == {"fhir", "raw"}
    assert "skipped" not in (done.warnings or "")


# end to end: ingest → processor → dispatcher


def test_a02_is_acked_aa_and_delivered_raw(
    tmp_path: Path, mappings: Mappings, store: SqlMessageStore
) -> None:
    routes = route_set(tmp_path, MAPPING_ADT, RAW_ADT)
    dests = {"fhir": MemoryDestination("fhir"), "raw": MemoryDestination("raw")}
    [ack] = run_all(store, routes, mappings, dests, [raw(A02, 1)])
    assert parse_message(ack or b"").get("MSA-1") == "AA"
    [rec] = store.list()
    assert rec.state == "delivered"
    assert [d.destination for d in store.get(rec.id).deliveries] == ["raw"]
    assert dests["raw"].received(rec.id)[0].body == raw(A02, 1)
    assert not dests["fhir"].attempts
    detail = store.get(rec.id)
    assert detail is not None
    assert any("route adt-to-fhir skipped" in w for w in detail.warnings)


def test_a02_only_a_mapping_route_takes_is_refused_ar(
    tmp_path: Path, mappings: Mappings, store: SqlMessageStore
) -> None:
    routes = route_set(tmp_path, MAPPING_ADT)
    [ack] = run_all(store, routes, mappings, {}, [raw(A02, 2)], settle=0.2)
    nak = parse_message(ack or b"")
    assert (nak.get("MSA-1"), nak.get("ERR-3.1")) == ("AR", "201")
    [rec] = store.list()
    assert rec.state == "error" and "ADT^A02" in (rec.reason or "")


def test_oru_is_acked_aa_and_delivered_raw(
    tmp_path: Path, mappings: Mappings, store: SqlMessageStore
) -> None:
    routes = route_set(tmp_path, MAPPING_ADT, RAW_ORU)
    dests = {"fhir": MemoryDestination("fhir"), "raw": MemoryDestination("raw")}
    [ack] = run_all(store, routes, mappings, dests, [raw(ORU, 3)])
    assert parse_message(ack or b"").get("MSA-1") == "AA"
    [rec] = store.list()
    assert rec.state == "delivered"
    assert dests["raw"].received(rec.id)[0].body == raw(ORU, 3)
    body = dests["raw"].received(rec.id)[0].body
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(body)  # passed on as received, not a Bundle


def test_processor_a_mapping_error_after_the_ack_delivers_nothing(
    tmp_path: Path, mappings: Mappings, store: SqlMessageStore
) -> None:
    """Not a skip: a type the mapping knows failed on its data, all or nothing (docs/ROUTES.md)."""
    bad_date = raw(A02).replace(b"ADT^A02", b"ADT^A08").replace(b"EVN|A02", b"EVN|A08")
    bad_date = bad_date.replace(b"19800101", b"19841399")
    routes = route_set(tmp_path, MAPPING_ADT, RAW_ADT)
    done = Processor(store, routes, mappings).process_one(1, bad_date, "hl7v2")
    assert done.state == "error" and "PID-7" in (done.reason or "")
    assert not done.new_deliveries
