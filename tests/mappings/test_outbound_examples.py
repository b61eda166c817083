"""Issue 9: every FHIR example a server could hand us converts to HL7v2, and the message passes
hl7apy's strict validation (:func:`engine.hl7v2.validate.validate`, what ``engine validate``
runs).

The examples are the outside corpus under tests/corpus/fhir/ (FHIR R4 spec examples, US Core,
Da Vinci CRD, ISiK, NDHM and HCX: see tests/corpus/SOURCES.md) and our own synthetic ones shaped
like the spec's (fixtures/fhir/outbound_example_*.json: a Coverage, a Claim and an Appointment
sent alone, a Bundle with what a Coverage refers to, a logical payer reference, self-pay, a
proposed appointment without a start, every name use, alpha-2 and alpha-3 countries). Only
Patients, Coverages, Appointments and Claims (alone or in a Bundle) are taken: the other types
make no HL7v2 message here. Each example's warnings must name a FHIR element, and no run may
refuse or write an invalid message.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from engine.hl7v2.validate import validate
from engine.mappings import Mappings, load_mappings

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "corpus" / "fhir"
FIXTURES = ROOT / "fixtures" / "fhir"
KINDS = frozenset({"Patient", "Coverage", "Appointment", "Claim"})
TS = "20250402101500-0400"


def _kinds(doc: Any) -> set[str]:
    if not isinstance(doc, dict):
        return set()
    if doc.get("resourceType") == "Bundle":
        return {
            str(e["resource"].get("resourceType"))
            for e in doc.get("entry") or []
            if isinstance(e, dict) and isinstance(e.get("resource"), dict)
        }
    return {str(doc.get("resourceType"))}


def _examples(paths: list[Path]) -> list[Path]:
    return [p for p in paths if _kinds(json.loads(p.read_text(encoding="utf-8"))) & KINDS]


CORPUS_EXAMPLES = _examples(sorted(CORPUS.glob("**/*.json")))
OUR_EXAMPLES = _examples(sorted(FIXTURES.glob("outbound_example_*.json")))


@pytest.fixture(scope="module")
def mappings() -> Mappings:
    return load_mappings()


def test_the_examples_are_there() -> None:
    # an empty or missing corpus must fail, not pass by testing nothing
    assert len(CORPUS_EXAMPLES) >= 50, f"{CORPUS}: {len(CORPUS_EXAMPLES)} examples"
    assert len(OUR_EXAMPLES) >= 9
    every = [_kinds(json.loads(p.read_text(encoding="utf-8"))) for p in CORPUS_EXAMPLES]
    for kind in KINDS:
        assert any(kind in k for k in every), f"no {kind} in {CORPUS}"


@pytest.mark.parametrize(
    "path",
    CORPUS_EXAMPLES + OUR_EXAMPLES,
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_example_converts_and_validates(mappings: Mappings, path: Path) -> None:
    doc = json.loads(path.read_text(encoding="utf-8"))
    warnings: list[str] = []
    msg = mappings.to_hl7(doc, control_id="EX1", timestamp=TS, warnings=warnings)
    assert msg.type.code in {"ADT", "SIU", "DFT"}
    errors = [str(i) for i in validate(msg.to_er7()) if i.severity == "E"]
    assert errors == []
    # each warning names the FHIR element it is about (Coverage.class[2] ...)
    for line in warnings:
        assert re.match(r"[A-Z][A-Za-z]+\.[a-z]", line), line
