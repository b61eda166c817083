"""Strict validation against HL7 message structures (hl7apy reference data). Synthetic data only."""

from __future__ import annotations

from typing import Any

import hl7apy
import pytest

from engine.errors import HL7ParseError, HL7ValidationError
from engine.hl7v2 import validate as validate_module
from engine.hl7v2.ack import ack_code_for, errors_for
from engine.hl7v2.codec import parse_message
from engine.hl7v2.validate import SUPPORTED_VERSIONS, ValidationIssue, check, validate

MSH = (
    "MSH|^~\\&|FRONTDESK|CLINIC|ENGINE|HUB|20240301101500||ADT^A04^ADT_A01|MSG0001|P|2.5.1|||AL|NE"
)
EVN = "EVN|A04|20240301101500"
PID = "PID|1||SYN0001^^^CLINIC^MR||TESTPATIENT^JANE^Q||19800101|F"
PV1 = "PV1|1|O|CLINIC^101^1"


def msg(*segments: str) -> str:
    return "\r".join(segments) + "\r"


VALID = msg(MSH, EVN, PID, PV1)


def errors(issues: list[ValidationIssue]) -> list[ValidationIssue]:
    return [i for i in issues if i.severity == "E"]


def test_valid_adt_a04_has_no_issues() -> None:
    assert validate(VALID) == []
    assert validate(VALID.encode()) == []
    assert validate(parse_message(VALID)) == []
    check(VALID)  # does not raise


def test_supported_versions_are_hl7apys() -> None:
    assert set(SUPPORTED_VERSIONS) == set(hl7apy.SUPPORTED_LIBRARIES)


def test_missing_required_field() -> None:
    issues = validate(msg(MSH, EVN, PID, "PV1|1||CLINIC^101^1"))
    assert issues == [
        ValidationIssue(
            "101",
            "E",
            "PV1-2",
            "segment 4 (PV1): field 2 (Patient Class) is required but empty",
            "Patient Class",
        )
    ]
    assert str(issues[0]).endswith("(error 101)")


def test_segment_out_of_place_and_the_missing_one_both_named() -> None:
    issues = validate(msg(MSH, PID, PV1, EVN))
    assert [(i.code, i.location) for i in issues] == [
        ("100", "EVN"),
        ("100", "segment 4 (EVN)"),
    ]
    assert issues[0].text == "required segment EVN is missing before segment 2 (PID)"
    assert issues[1].text.startswith("segment 4 (EVN) is not allowed in ADT_A01 here")


def test_segment_the_structure_does_not_have() -> None:
    issues = validate(msg(MSH, EVN, PID, "OBR|1||F1|GLU^Glucose^L", PV1))
    assert len(errors(issues)) == 1
    assert issues[0].location == "segment 4 (OBR)"
    assert issues[0].text == (
        "segment 4 (OBR) is not allowed in ADT_A01 here (ADT_A01 has no OBR segment)"
    )


def test_missing_required_segment_and_repeated_segment() -> None:
    assert [i.text for i in validate(msg(MSH, EVN, PID))] == [
        "required segment PV1 is missing at the end of the message"
    ]
    twice = validate(msg(MSH, EVN, PID, PV1, PV1))
    assert [(i.code, i.location) for i in twice] == [("100", "segment 5 (PV1)")]
    assert "repeated more often than allowed" in twice[0].text


def test_segment_that_is_no_hl7_segment() -> None:
    issues = validate(msg(MSH, EVN, PID, PV1, "QQQ|1"))
    assert [(i.code, i.severity, i.text) for i in issues] == [
        ("100", "E", "segment 5 (QQQ) is not a segment of HL7 2.5.1")
    ]


def test_z_segment_is_information_not_an_error() -> None:
    issues = validate(msg(MSH, EVN, PID, "ZPI|1|local stuff", PV1))
    assert [(i.severity, i.location) for i in issues] == [("I", "segment 4 (ZPI)")]
    assert "locally defined Z segment" in issues[0].text
    check(msg(MSH, EVN, PID, "ZPI|1|local stuff", PV1))  # does not raise


@pytest.mark.parametrize(
    ("version", "text"),
    [
        ("2.9", "HL7 version 2.9 cannot be validated (supported: 2.1 to 2.8.2)"),
        ("", "MSH-12 (Version ID) is empty: the version to validate against is unknown"),
    ],
)
def test_unknown_version_is_203(version: str, text: str) -> None:
    issues = validate(msg(MSH.replace("|2.5.1|", f"|{version}|"), EVN, PID, PV1))
    assert issues == [ValidationIssue("203", "E", "MSH-12", text, "Version ID")]
    with pytest.raises(HL7ValidationError) as caught:
        check(msg(MSH.replace("|2.5.1|", f"|{version}|"), EVN, PID, PV1))
    assert caught.value.code == "203"
    assert ack_code_for(caught.value, enhanced=False) == "AR"  # MSH-12 unacceptable: reject


def test_version_argument_overrides_msh12() -> None:
    assert validate(msg(MSH.replace("|2.5.1|", "|2.9|"), EVN, PID, PV1), version="2.5.1") == []


def test_older_version_without_msh9_3() -> None:
    old = MSH.replace("|2.5.1|", "|2.3|").replace("^ADT_A01", "")
    assert validate(msg(old, EVN, PID, PV1)) == []
    assert validate(msg(old.replace("|2.3|", "|2.2|"), EVN, PID, PV1)) == []


@pytest.mark.parametrize(
    ("msh9", "code", "location", "text"),
    [
        ("XYZ^A04", "200", "MSH-9.1", "message type XYZ is not defined in HL7 2.5.1"),
        ("ADT^A99", "201", "MSH-9.2", "HL7 2.5.1 has no message structure for ADT^A99"),
    ],
)
def test_unsupported_type_or_event(msh9: str, code: str, location: str, text: str) -> None:
    issues = validate(msg(MSH.replace("ADT^A04^ADT_A01", msh9), EVN, PID, PV1))
    assert [(i.code, i.location, i.text) for i in issues] == [(code, location, text)]


def test_wrong_msh9_3_is_a_warning_and_table_0354_decides() -> None:
    issues = validate(msg(MSH.replace("ADT_A01", "ADT_A04"), EVN, PID, PV1))
    assert [(i.code, i.severity, i.location) for i in issues] == [("103", "W", "MSH-9.3")]
    assert "validated as ADT_A01" in issues[0].text


def test_data_type_error_names_the_component_but_not_the_value() -> None:
    issues = validate(msg(MSH, EVN, PID.replace("19800101", "1980AB01"), PV1))
    assert [(i.code, i.location) for i in issues] == [("102", "PID-7.1")]
    assert issues[0].text == (
        "segment 3 (PID): field 7 (Date Time of Birth) component 1 (Time) is not a valid DTM value"
    )
    assert "1980AB01" not in issues[0].text


def test_table_values_hl7_table_error_user_table_warning() -> None:
    hl7_table = validate(msg(MSH.replace("|AL|NE", "|XX|NE"), EVN, PID, PV1))
    assert [(i.code, i.severity, i.location) for i in hl7_table] == [("103", "E", "MSH-15")]
    assert hl7_table[0].text.endswith("has a value that is not in HL7 table 0155")
    user_table = validate(msg(MSH, EVN, PID, PV1.replace("|O|", "|Q|")))
    assert [(i.code, i.severity, i.location) for i in user_table] == [("103", "W", "PV1-2")]


def test_repetition_of_a_field_that_does_not_repeat() -> None:
    issues = validate(msg(MSH, EVN, PID, PV1.replace("|O|", "|O~I|")))
    assert [(i.code, i.location) for i in issues] == [("102", "PV1-2")]
    assert issues[0].text.endswith("does not repeat but has 2")


def test_every_problem_is_reported_not_just_the_first() -> None:
    issues = validate(
        msg(MSH, PID.replace("19800101", "19801301"), "PV1|1", "OBR|1||F1|GLU^Glucose^L")
    )
    assert [(i.code, i.location) for i in issues] == [
        ("100", "EVN"),
        ("102", "PID-7.1"),
        ("101", "PV1-2"),
        ("100", "segment 4 (OBR)"),
    ]
    with pytest.raises(HL7ValidationError) as caught:
        check(msg(MSH, PID.replace("19800101", "19801301"), "PV1|1", "OBR|1||F1|GLU^Glucose^L"))
    exc = caught.value
    assert exc.code == "100" and exc.where == "EVN"
    assert str(exc).endswith("(and 3 more)")
    assert [code for code, _, _ in exc.issues] == ["100", "102", "101", "100"]
    assert [e.location.segment for e in errors_for(exc) if e.location] == [
        "EVN",
        "PID",
        "PV1",
        "OBR",
    ]


def test_second_occurrence_is_named_in_the_path() -> None:
    nk1 = "NK1|1|TESTRELATIVE^ANN|SPO^Spouse^HL70063"
    issues = validate(msg(MSH, EVN, PID, nk1, "NK1|X", PV1))
    assert [(i.code, i.location) for i in issues] == [("102", "NK1[2]-1")]
    assert issues[0].text.startswith("segment 5 (NK1): field 1 (Set ID NK1)")


def test_repeating_groups_in_an_oru() -> None:
    oru = msg(
        "MSH|^~\\&|LAB|LABFAC|EHR|CLINIC|20240301101500||ORU^R01|L1|P|2.5.1",
        "PID|1||SYN0001^^^CLINIC^MR||TESTPATIENT^JOHN",
        "PV1|1|O",
        "OBR|1||F1|GLU^Glucose^L",
        "OBX|1|NM|GLU^Glucose^L||5.5|mmol/L|||||F",
        "OBX|2|NM|GLU^Glucose^L||5.6|mmol/L|||||F",
        "NTE|1||fasting",
        "OBR|2||F2|NA^Sodium^L",
        "OBX|1|NM|NA^Sodium^L||140|mmol/L|||||F",
    )
    assert validate(oru) == []
    no_pid = validate(oru.replace("PID|1||SYN0001^^^CLINIC^MR||TESTPATIENT^JOHN\r", ""))
    assert [i.text for i in no_pid] == ["required segment PID is missing before segment 2 (PV1)"]


def test_unparseable_input_raises_our_parse_error() -> None:
    with pytest.raises(HL7ParseError):
        validate("not an HL7 message")


# -- hl7apy's own strict check and the translation of its exceptions -----------------------------


def test_hl7apy_strict_check_runs_and_its_failure_never_escapes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lib = validate_module._hl7apy()
    calls: list[Any] = []

    def boom(element: Any) -> None:
        calls.append(element)
        raise IndexError("internal hl7apy bug")

    monkeypatch.setattr(lib, "validate", boom)
    issues = validate(VALID)
    assert len(calls) == 1 and calls[0].name == "ADT_A01"
    assert [(i.code, i.severity) for i in issues] == [("207", "W")]
    assert "IndexError" in issues[0].text
    check(VALID)  # a warning only


def test_hl7apy_exceptions_are_translated_without_values() -> None:
    lib = validate_module._hl7apy()
    message = parse_message(VALID)
    translate = validate_module._translate
    missing = translate(
        lib.exc.ValidationError("Missing required child PV1.PV1_2"), message, "2.5.1"
    )
    assert (missing.code, missing.location, missing.text) == (
        "101",
        "PV1-2",
        "segment 4 (PV1): field 2 (Patient Class) is required but empty",
    )
    bad = translate(ValueError("19800101 is not an HL7 valid date value"), message, "2.5.1")
    assert bad.code == "102" and "19800101" not in bad.text
    group = translate(
        lib.exc.ValidationError("Missing required child ADT_A01.PV1"), message, "2.5.1"
    )
    assert (group.code, group.location) == ("100", "PV1")
    other = translate(lib.exc.ParserError("Invalid message"), message, "2.5.1")
    assert (other.code, other.severity, other.text) == (
        "100",
        "E",
        "hl7apy strict check: Invalid message",
    )
