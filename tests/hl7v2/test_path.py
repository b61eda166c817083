"""Terse paths (``PID-3[2].4.1``) and reading messages through them."""

from __future__ import annotations

import pytest

from engine.errors import HL7PathError
from engine.hl7v2.codec import Message, parse_message
from engine.hl7v2.path import Path, parse_path

MESSAGE = "\r".join(
    [
        "MSH|^~\\&|SENDAPP|SENDFAC|RCVAPP|RCVFAC|20240102030405||ADT^A04|CTRL0001|P|2.5.1",
        "PID|1||11111^^^HOSP&1.2.3&ISO^MR~22222^^^CLINIC&2.16.840&ISO^PI||Testpatient^Alice^B",
        "|".join(["IN1", "1", "PLAN-A", *[""] * 33, "POLICY-ONE"]),  # IN1-36: policy number
        "|".join(["IN1", "2", "PLAN-B", *[""] * 33, "POLICY-TWO"]),
    ]
)


@pytest.fixture
def message() -> Message:
    return parse_message(MESSAGE)


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("PID-3[2].4.1", Path("PID", 1, 3, 2, 4, 1)),
        ("IN1[2]-36", Path("IN1", 2, 36, 1, 0, 0)),
        ("MSH-9.2", Path("MSH", 1, 9, 1, 2, 0)),
        ("PID-5", Path("PID", 1, 5, 1, 0, 0)),
        ("ZX1", Path("ZX1", 1, 0, 1, 0, 0)),
        ("  OBX[12]-5[3]  ", Path("OBX", 12, 5, 3, 0, 0)),
    ],
)
def test_parse_path(text: str, path: Path) -> None:
    assert parse_path(text) == path


@pytest.mark.parametrize("text", ["PID-3[2].4.1", "IN1[2]-36", "MSH-9.2", "PID", "OBX[3]-5[2].1"])
def test_path_str_round_trips(text: str) -> None:
    assert str(parse_path(text)) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "pid-3",
        "PI-3",
        "PID3",
        "PID-",
        "PID-0",
        "PID-03",
        "PID-3[0]",
        "PID[0]-3",
        "PID-3.0",
        "PID-3..1",
        "PID-3.1.2.3",
        "PID-3[x]",
        "PID-3[2",
        "PID-3.1.",
        "1ID-3",
    ],
)
def test_malformed_paths_raise(text: str) -> None:
    with pytest.raises(HL7PathError, match="malformed path") as info:
        parse_path(text)
    assert repr(text) in info.value.message


def test_malformed_path_in_message_get(message: Message) -> None:
    with pytest.raises(HL7PathError):
        message.get("PID-3[")


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("PID-3[2].4.1", "CLINIC"),
        ("PID-3[2].4.2", "2.16.840"),
        ("PID-3[1].4", "HOSP"),  # a component path reads its first subcomponent
        ("PID-3", "11111"),  # a field path reads the first component of the first repetition
        ("PID-3[2]", "22222"),
        ("PID-3[3]", ""),  # absent repetition
        ("PID-5.2", "Alice"),
        ("PID-5.9", ""),
        ("PID-99", ""),
        ("IN1-36", "POLICY-ONE"),
        ("IN1[2]-36", "POLICY-TWO"),
        ("IN1[3]-36", ""),  # absent segment occurrence
        ("MSH-9.2", "A04"),
        ("MSH-9.1", "ADT"),
        ("MSH-10", "CTRL0001"),
        ("MSH-1", "|"),
        ("MSH-2", "^~\\&"),
        ("PV1-2", ""),  # absent segment
        ("PID", ""),  # a whole segment is not a text value
    ],
)
def test_message_get(message: Message, path: str, value: str) -> None:
    assert message.get(path) == value


def test_get_accepts_a_parsed_path(message: Message) -> None:
    assert message.get(Path("PID", 1, 3, 2, 1, 0)) == "22222"


def test_msh_1_and_2_with_other_delimiters() -> None:
    m = parse_message("MSH#$%!?#APP\rPID#1##a$b")
    assert m.get("MSH-1") == "#"
    assert m.get("MSH-2") == "$%!?"
    assert m.get("MSH-3") == "APP"
    assert m.get("PID-3.2") == "b"
