"""The outside corpus (tests/corpus/: other projects' test messages, the FHIR and US Core examples,
other X12 libraries' fixtures; sources in tests/corpus/SOURCES.md) holds the engine to its
promises on data we did not write: every message converts to valid FHIR R4 or is refused with a
reason, no Bundle is empty, a DFT's charges are all billed, a visit is an Encounter.
``python -m scripts.corpus_report`` prints the same figures by source."""

from __future__ import annotations

import pytest

from scripts.corpus_report import Outcome, hl7_outcomes, x12_outcomes


@pytest.fixture(scope="module")
def hl7() -> list[Outcome]:
    return list(hl7_outcomes())


@pytest.fixture(scope="module")
def x12() -> list[Outcome]:
    return list(x12_outcomes())


def test_the_hl7v2_corpus_is_large_and_from_many_sources(hl7: list[Outcome]) -> None:
    assert len(hl7) >= 200
    assert len({o.source for o in hl7}) >= 5
    # most of it is what the engine maps, and most of that converts
    assert sum(o.status == "converted" for o in hl7) >= 150


def test_every_hl7v2_message_converts_to_valid_r4_or_is_refused_with_a_reason(
    hl7: list[Outcome],
) -> None:
    broken = [f"{o.source}/{o.file} #{o.index}: {o.detail}" for o in hl7 if o.status == "broken"]
    assert broken == []
    for o in hl7:
        if o.status == "refused":
            assert o.detail.strip(), f"{o.source}/{o.file}: refused without a reason"


def test_supported_messages_are_refused_only_for_what_they_lack(hl7: list[Outcome]) -> None:
    """An ADT/SIU/DFT of a trigger we map is refused only when it cannot make its main resource
    or carries a value that does not exist, each said with the element."""
    supported = [
        o
        for o in hl7
        if o.status == "refused"
        and o.message_type[:3] in ("ADT", "SIU", "DFT")
        and "unsupported message type" not in o.detail
    ]
    for o in supported:
        assert "has no" in o.detail or "does not exist" in o.detail or "not a date" in o.detail, (
            f"{o.source}/{o.file}: {o.detail}"
        )


def test_what_no_map_takes_is_reported(hl7: list[Outcome]) -> None:
    """Real feeds carry more than we map: it is listed, never silently dropped."""
    assert any(o.warnings for o in hl7 if o.status == "converted")
    for o in hl7:
        for line in o.warnings:
            assert ": not mapped: " in line or ": no mapping took this segment" in line


def test_the_x12_corpus_converts_or_is_refused_with_a_reason(x12: list[Outcome]) -> None:
    assert len(x12) >= 15
    broken = [f"{o.source}/{o.file}: {o.detail}" for o in x12 if o.status == "broken"]
    assert broken == []
    assert sum(o.status == "converted" for o in x12) >= 8
    for o in x12:
        if o.status == "refused":  # an acknowledgment, a truncated file ...: said, with where
            assert o.detail.startswith("segment "), f"{o.source}/{o.file}: {o.detail}"
