"""FHIR → HL7v2 as ``engine convert --to hl7v2`` runs it, on generated valid resources.

An input is ``<event>\\n<JSON>``: the event ``engine convert --event`` would pass (empty for
none) and a FHIR resource or Bundle. The JSON is generated from the repository's FHIR files
(fixtures/fhir, tests/corpus/fhir, and the FHIR-Converter Bundles in ../shared) by edits that
keep each value's type and form: a string replaced by another (HL7 delimiters, escapes, unicode,
long text), a code by another code written at the same key somewhere in the corpus, a date or
instant by another valid one, a reference by another form of reference, an optional element
dropped, a list item repeated, resources moved between Bundles, a resource taken out of its
Bundle or wrapped in one. What does not validate against the R4 model is refused there with a
``ConversionError`` (the engine's typed error), as ``engine convert`` refuses it; the rest is
mapped by the compiled mapping files, written as ER7, and the ER7 must parse.

The mapping files are loaded once per process (as the engine does), not per input.
"""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson
from hypothesis import strategies as st

from engine.errors import EngineError
from engine.hl7v2.codec import parse_message
from engine.mappings import Mappings, load_mappings
from engine.mappings.fhir_validate import validate_bundle, validate_resource
from fuzz.mutate import Program
from fuzz.runner import Oracle, Target
from fuzz.seeds import fhir_seeds

__all__ = ["TARGET", "run"]

EVENTS = ("", "", "", "new", "update", "reschedule", "modify", "A08", "A04", "S12", "P03", "X99")
STRINGS = (
    "A",
    "Quillfeather",
    "O'Brien-Smith",
    "Zoë Ångström",
    "李小龙",
    "a|b^c~d\\e&f",
    "\\X41\\",
    "#",
    "   padded   ",
    "line\nbreak",
    "tab\there",
    "x" * 300,
    "9" * 40,
    "-1",
    "0",
    "http://example.org/x",
    "urn:oid:1.2.3",
    "\U0001f600",
    "null",
)
DATES = (
    "2026",
    "2026-02",
    "2026-02-28",
    "1900-01-01",
    "2000-02-29",
    "9999-12-31",
    "0001-01-01",
)
INSTANTS = (
    "2026-03-01T09:30:00Z",
    "2026-03-01T09:30:00.123456+05:30",
    "2026-03-01T23:59:59-12:00",
    "1970-01-01T00:00:00+14:00",
    "2026-03-01T09:30:00",
    "2026-03-01",
    "2026",
)
REFERENCES = (
    "Patient/pat-1",
    "Patient/unknown",
    "Practitioner/prac-1",
    "Location/loc-1",
    "Organization/org-1",
    "Coverage/cov-1",
    "urn:uuid:5c2e0f0e-0000-4000-8000-000000000001",
    "http://fhir.example.org/Patient/pat-1/_history/2",
    "#contained-1",
    "RelatedPerson/rp-1",
)
NUMBERS: tuple[int | float, ...] = (0, 1, 2, -1, 7, 12.5, 0.01, 10**12, 99999999.99, 1e-7)

#: the resource types the outbound maps read (others would only be refused or ignored)
KEPT = frozenset(
    (
        "Patient",
        "Encounter",
        "Appointment",
        "Coverage",
        "Claim",
        "Practitioner",
        "PractitionerRole",
        "Organization",
        "Location",
        "RelatedPerson",
        "AllergyIntolerance",
        "Condition",
        "Observation",
        "Account",
        "Procedure",
        "Device",
        "HealthcareService",
    )
)
#: a seed Bundle keeps at most this many entries (the FHIR-Converter Bundles hold dozens; a
#: message's worth is what the outbound path sees, and validation costs by the entry)
MAX_ENTRIES = 10

_DATE_RE = re.compile(r"\d{4}(-\d{2}(-\d{2})?)?\Z")
_INSTANT_RE = re.compile(r"\d{4}-\d{2}-\d{2}T")


@lru_cache(maxsize=1)
def _corpus() -> tuple[tuple[Any, ...], dict[str, tuple[str, ...]]]:
    """The seed documents (FHIR resources and Bundles), and every string value the corpus
    writes at each key (``code``, ``system``, ``use``, ``status`` ...), to swap among."""
    docs: list[Any] = []
    values: dict[str, set[str]] = {}

    def walk(node: Any, key: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, k)
        elif isinstance(node, list):
            for v in node:
                walk(v, key)
        elif isinstance(node, str) and len(node) < 200:
            values.setdefault(key, set()).add(node)

    for raw in fhir_seeds():
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(doc, dict) or not isinstance(doc.get("resourceType"), str):
            continue
        if doc["resourceType"] == "Bundle":
            entries = [
                e
                for e in doc.get("entry") or []
                if isinstance(e, dict)
                and isinstance(e.get("resource"), dict)
                and e["resource"].get("resourceType") in KEPT
            ]
            if not entries:
                continue
            doc = {**doc, "entry": entries[:MAX_ENTRIES]}
        elif doc["resourceType"] not in KEPT:
            continue
        docs.append(doc)
        walk(doc, "")
    return tuple(docs), {k: tuple(sorted(v)) for k, v in values.items()}


def _paths(node: Any, at: tuple[Any, ...], out: list[tuple[Any, ...]]) -> None:
    out.append(at)
    if isinstance(node, dict):
        for k, v in node.items():
            _paths(v, (*at, k), out)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _paths(v, (*at, i), out)


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        doc = doc[p]
    return doc


def _new_value(old: Any, key: Any, prog: Program, by_key: dict[str, tuple[str, ...]]) -> Any:
    """A value of the same type and form as ``old``."""
    if isinstance(old, bool):
        return not old
    if isinstance(old, int | float):
        value = prog.pick(NUMBERS)
        return int(value) if isinstance(old, int) else value
    if not isinstance(old, str):
        return old
    if key == "reference":
        return prog.pick(REFERENCES)
    if _INSTANT_RE.match(old):
        return prog.pick(INSTANTS)
    if _DATE_RE.match(old):
        return prog.pick(DATES)
    same = by_key.get(str(key), ())
    if same and prog.byte() % 3:
        return prog.pick(same)
    return prog.pick(STRINGS)


def generate(doc: Any, prog: Program) -> Any:
    """A copy of ``doc`` with up to 8 type-keeping edits."""
    docs, by_key = _corpus()
    doc = copy.deepcopy(doc)
    for _ in range(1 + prog.below(8)):
        if prog.done:
            break
        paths: list[tuple[Any, ...]] = []
        _paths(doc, (), paths)
        path = prog.pick(paths)
        op = prog.below(8)
        if not path:
            continue
        parent = _get(doc, path[:-1])
        key = path[-1]
        value = parent[key]
        if op in (0, 1, 2) and not isinstance(value, dict | list):
            if key != "resourceType":
                parent[key] = _new_value(value, key, prog, by_key)
        elif op == 3 and isinstance(parent, dict) and key not in ("resourceType", "resource"):
            del parent[key]
        elif op == 4 and isinstance(parent, list):
            parent[key:key] = [copy.deepcopy(value)] * (1 + prog.below(12))
        elif op == 5 and isinstance(parent, list) and len(parent) > 1:
            del parent[key]
        elif op == 6 and isinstance(doc, dict) and doc.get("resourceType") == "Bundle":
            other = prog.pick(docs)
            if other.get("resourceType") == "Bundle" and other.get("entry"):
                entry = copy.deepcopy(prog.pick(other["entry"]))
                doc.setdefault("entry", []).append(entry)
            elif other.get("resourceType") != "Bundle":
                doc.setdefault("entry", []).append({"resource": copy.deepcopy(other)})
        elif op == 7 and isinstance(doc, dict):
            if doc.get("resourceType") == "Bundle" and doc.get("entry"):
                entry = prog.pick(doc["entry"])
                if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
                    doc = entry["resource"]
            else:
                doc = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": doc}]}
    return doc


def _input(doc: Any, event: str, prog: bytes) -> bytes:
    return event.encode() + b"\n" + orjson.dumps(generate(doc, Program(prog)))


def strategy() -> st.SearchStrategy[bytes]:
    docs, _ = _corpus()
    return st.builds(
        _input,
        st.sampled_from(docs),
        st.sampled_from(EVENTS),
        st.binary(min_size=1, max_size=40),
    )


@lru_cache(maxsize=1)
def _mappings() -> Mappings:
    return load_mappings(None)


def setup() -> None:
    """Load the mapping files and import every FHIR model the seeds use."""
    _mappings()
    for doc in _corpus()[0]:
        try:
            if doc["resourceType"] == "Bundle":
                validate_bundle(doc)
            else:
                validate_resource(doc)
        except EngineError:
            pass


#: inputs that validated and reached the mapping (the rest were refused as invalid FHIR)
REACHED = [0]


def run(data: bytes) -> None:
    """One input as ``engine convert --to hl7v2`` converts it (FHIR validation on)."""
    event_b, _, body = data.partition(b"\n")
    event = event_b.decode("utf-8", "replace") or None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return
    if not isinstance(doc, dict) or "resourceType" not in doc:
        return
    if doc["resourceType"] == "Bundle":
        validate_bundle(doc)
    else:
        validate_resource(doc)
    REACHED[0] += 1
    warnings: list[str] = []
    msg = _mappings().to_hl7(
        doc,
        control_id="F1",
        timestamp=datetime(2026, 1, 1, 12, 0, tzinfo=UTC),
        event=event,
        warnings=warnings,
    )
    er7 = msg.to_bytes()
    try:
        again = parse_message(er7)
    except EngineError as exc:
        raise Oracle(f"the HL7v2 written does not parse: {exc}") from exc
    if again.to_er7() != msg.to_er7():
        raise Oracle("the HL7v2 written reads back differently")
    try:
        _mappings().to_fhir(again, [])
    except EngineError:
        pass


TARGET = Target(
    "fhir",
    strategy,
    run,
    setup=setup,
    about="validate_bundle/validate_resource, Mappings.to_hl7 (as engine convert --to hl7v2), "
    "the ER7 read back, and mapped back to FHIR",
)
