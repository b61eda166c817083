"""The public X12 corpus (tests/corpus/x12, see its SOURCES.md) through interchange_to_fhir."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine.mappings.fhir_validate import validate_bundle
from engine.x12.errors import X12Error
from engine.x12.fhir import interchange_to_fhir

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "x12"
pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason="tests/corpus/x12 not present")

#: files that convert, and what each gives: (resource type, count), a warning that must be there
CONVERTS = {
    "imsweb-x12-parser/x270.x12": (
        "CoverageEligibilityRequest",
        1,
        "segment 16 (SE): SE01 says 15 segments, the transaction has 14",
    ),
    "imsweb-x12-parser/x271.x12": (
        "CoverageEligibilityResponse",
        1,
        "segment 20 (SE): SE01 says 22 segments, the transaction has 18",
    ),
    "oopfactory-x12parser-4010/270_4010_Example1_DHHS.x12": (
        "CoverageEligibilityRequest",
        1,
        "segment 2 (GS): GS08 '004010X092': a 4010 270, read as 4010",
    ),
    "oopfactory-x12parser-4010/270_4010_Example3_Aetna.x12": (
        "CoverageEligibilityRequest",
        1,
        "segment 2 (GS): GS08 '004010X092': a 4010 270, read as 4010",
    ),
    "oopfactory-x12parser-4010/271_4010_Example2_TMHP.x12": (
        "CoverageEligibilityResponse",
        1,
        "segment 2 (GS): GS08 '004010X092A1 ': a 4010 271, read as 4010",  # space as sent
    ),
    "oopfactory-x12parser-4010/271_4010_Example3_CMS_HETS.x12": (
        "CoverageEligibilityResponse",
        1,
        "segment 2 (GS): GS08 '004010X092A1': a 4010 271, read as 4010",
    ),
    "oopfactory-x12parser-4010/271_4010_From_tcplex.x12": (
        "CoverageEligibilityResponse",
        1,
        "segment 1 (ISA): ISA is 105 characters, X12 fixes it at 106: ISA08 (interchange "
        "receiver ID) is 14 characters, must be 15; read by its element separators",
    ),
}

#: files refused, and the error (message as the CLI prints it)
REFUSED = {
    "imsweb-x12-parser/x12_999_accepted.x12": (
        "segment 3 (ST): X12 999: only a 270 or 271 converts to FHIR"
    ),
    "oopfactory-x12parser-4010/TA1_TechnicalAcknowledgment_Sample1.x12": (
        "segment 2 (TA1): X12 TA1: only a 270 or 271 converts to FHIR"
    ),
    "pyx12/repeat_init_segment__res997.x12": (
        "segment 3 (ST): X12 997: only a 270 or 271 converts to FHIR"
    ),
    # a documentation sample with the words "Birth Date" where the date goes
    "oopfactory-x12parser-4010/271_4010_Example1_DHHS.x12": (
        "segment 19 (DMG): DMG02 'Birth Date' is not a CCYYMMDD date"
    ),
}


@pytest.mark.parametrize("name", sorted(CONVERTS))
def test_corpus_eligibility_files_convert_to_valid_fhir(name: str) -> None:
    path = CORPUS / name
    if not path.is_file():
        pytest.skip(f"{name} not in this corpus")
    rtype, count, warning = CONVERTS[name]
    bundle, warnings = interchange_to_fhir(path.read_bytes())
    validate_bundle(bundle)
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert kinds.count(rtype) == count
    assert any(w.startswith(warning) for w in warnings), warnings
    assert all(re.match(r"segment \d+ \(\w+\): ", w) for w in warnings), warnings


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_corpus_files_that_do_not_convert_are_refused_by_name(name: str) -> None:
    path = CORPUS / name
    if not path.is_file():
        pytest.skip(f"{name} not in this corpus")
    with pytest.raises(X12Error) as info:
        interchange_to_fhir(path.read_bytes())
    assert str(info.value) == REFUSED[name]


def test_every_corpus_file_converts_or_is_refused_with_a_location() -> None:
    files = sorted(CORPUS.rglob("*.x12"))
    assert files
    converted = 0
    for path in files:
        try:
            bundle, _ = interchange_to_fhir(path.read_bytes())
        except X12Error as exc:
            assert exc.where and exc.where.startswith("segment "), (path.name, str(exc))
            continue
        validate_bundle(bundle)
        converted += 1
    assert converted >= len([n for n in CONVERTS if (CORPUS / n).is_file()])
