"""Envelope parsing: delimiters from the ISA, terminator variants, counts and control numbers."""

from __future__ import annotations

import re
from datetime import datetime

import pytest

from engine.x12.envelope import build_interchange, parse_interchange, parse_interchanges
from engine.x12.errors import X12Error
from engine.x12.segments import Delimiters, format_segment

ISA = (
    "ISA*00*          *00*          *ZZ*GREENFIELDFP   *ZZ*CEDARVALLEY    *250314*0930*^*00501*"
    "000000007*0*T*:"
)
BODY = [
    "GS*HS*GREENFIELDFP*CEDARVALLEY*20250314*0930*7*X*005010X279A1",
    "ST*270*0001*005010X279A1",
    "BHT*0022*13*TRC-1*20250314*0930",
    "HL*1**20*1",
    "NM1*PR*2*CEDAR VALLEY HEALTH PLAN*****PI*CVHP1",
    "HL*2*1*21*1",
    "NM1*1P*2*GREENFIELD FAMILY PRACTICE*****XX*1234567893",
    "HL*3*2*22*0",
    "TRN*1*TRC-1*1999999999",
    "NM1*IL*1*LINDQVIST*ERIK****MI*W987654321",
    "DMG*D8*19751103*M",
    "EQ*30^98",
    "SE*12*0001",
    "GE*1*7",
    "IEA*1*000000007",
]


def interchange(
    term: str = "~", body: list[str] | None = None, isa: str = ISA, sep: str = ""
) -> str:
    return (isa + term + sep) + "".join(s + term + sep for s in (body or BODY))


def replaced(old: str, new: str) -> list[str]:
    return [new if s == old else s for s in BODY]


def test_reads_the_structure_and_delimiters() -> None:
    ic = parse_interchange(interchange())
    assert ic.delimiters == Delimiters("*", "^", ":", "~")
    assert (ic.sender_id, ic.receiver_id, ic.control_number, ic.usage) == (
        "GREENFIELDFP",
        "CEDARVALLEY",
        "000000007",
        "T",
    )
    assert [g.functional_id for g in ic.groups] == ["HS"]
    (tx,) = ic.transactions()
    assert (tx.id, tx.control_number, tx.convention) == ("270", "0001", "005010X279A1")
    assert [s.id for s in tx.segments][:3] == ["ST", "BHT", "HL"]
    eq = tx.segments[-2]
    assert eq.repetitions(1) == ["30", "98"]
    assert eq.position == 13  # ISA = 1, GS = 2, ST = 3 ...
    assert ic.warnings == []


@pytest.mark.parametrize(
    ("term", "sep"),
    [
        ("~", ""),
        ("~", "\n"),
        ("~", "\r\n"),
        ("\n", ""),
        ("\r\n", ""),
        ("\r", ""),
        ("\x1d", ""),
        ("\x1d", "\r\n"),
        ("~", "\r\n\t\t  "),
    ],
    ids=["tilde", "tilde-LF", "tilde-CRLF", "LF", "CRLF", "CR", "0x1D", "0x1D-CRLF", "indented"],
)
def test_every_terminator_and_line_break_variant_reads_the_same(term: str, sep: str) -> None:
    reference = parse_interchange(interchange())
    ic = parse_interchange(interchange(term, sep=sep))
    assert [s.elements for s in ic.segments()] == [s.elements for s in reference.segments()]
    assert ic.delimiters.segment == term[0]


def test_byte_order_mark_in_bytes_and_text() -> None:
    text = interchange(sep="\r\n")
    for data in ("\ufeff" + text, b"\xef\xbb\xbf" + text.encode()):
        assert parse_interchange(data).control_number == "000000007"


def test_other_delimiters_are_taken_from_the_isa() -> None:
    isa = ISA.replace("*", "|").replace("|^|", "|!|")[:-1] + ">"
    body = [s.replace("*", "|").replace("^", "!") for s in BODY]
    ic = parse_interchange(interchange("\n", body, isa))
    assert ic.delimiters == Delimiters("|", "!", ">", "\n")
    assert list(ic.transactions())[0].segments[-2].repetitions(1) == ["30", "98"]


def test_4010_style_isa11_means_no_repetition_separator() -> None:
    isa = ISA.replace("*^*00501*", "*U*00401*")
    ic = parse_interchange(interchange(isa=isa))
    assert ic.delimiters.repetition == ""
    assert list(ic.transactions())[0].segments[-2].repetitions(1) == ["30^98"]
    assert ic.warnings == [
        "segment 1 (ISA): ISA12 '00401' is a 4010 envelope; its transactions are read as their "
        "GS08 says"
    ]


def test_same_repetition_and_component_separator_is_tolerated_with_a_warning() -> None:
    isa = ISA[:-1] + "^"
    ic = parse_interchange(interchange(isa=isa))
    assert "ISA11 and ISA16 are both '^'" in ic.warnings[0]
    eq = list(ic.transactions())[0].segments[-2]
    assert eq.repetitions(1) == ["30", "98"] and eq.components(1) == ["30", "98"]


@pytest.mark.parametrize(
    ("body", "message", "segment", "position", "element", "ack"),
    [
        (
            replaced("SE*12*0001", "SE*11*0001"),
            "segment 14 (SE): SE01 says 11 segments, the transaction has 12",
            "SE",
            14,
            1,
            ("4", "IK5"),
        ),
        (
            replaced("SE*12*0001", "SE*twelve*0001"),
            "segment 14 (SE): SE01 'twelve' is not a count; the transaction has 12 segments",
            "SE",
            14,
            1,
            ("4", "IK5"),
        ),
        (
            replaced("SE*12*0001", "SE*12*0002"),
            "segment 14 (SE): SE02 '0002' does not match ST02 '0001' (segment 3)",
            "SE",
            14,
            2,
            ("3", "IK5"),
        ),
        (
            replaced("GE*1*7", "GE*2*7"),
            "segment 15 (GE): GE01 says 2 transaction sets, the group has 1",
            "GE",
            15,
            1,
            ("5", "AK9"),
        ),
        (
            replaced("GE*1*7", "GE*1*8"),
            "segment 15 (GE): GE02 '8' does not match GS06 '7' (segment 2)",
            "GE",
            15,
            2,
            ("4", "AK9"),
        ),
        (
            replaced("IEA*1*000000007", "IEA*3*000000007"),
            "segment 16 (IEA): IEA01 says 3 functional groups, the interchange has 1",
            "IEA",
            16,
            1,
            ("021", "TA1"),
        ),
        (
            replaced("IEA*1*000000007", "IEA*1*000000008"),
            "segment 16 (IEA): IEA02 '000000008' does not match ISA13 '000000007' (segment 1)",
            "IEA",
            16,
            2,
            ("001", "TA1"),
        ),
    ],
    ids=["SE01", "SE01-nan", "SE02", "GE01", "GE02", "IEA01", "IEA02"],
)
def test_every_count_and_control_number_fault_is_named(
    body: list[str],
    message: str,
    segment: str,
    position: int,
    element: int,
    ack: tuple[str, str],
) -> None:
    text = interchange(body=body)
    with pytest.raises(X12Error) as info:
        parse_interchange(text)
    err = info.value
    assert str(err) == message
    assert (err.segment_id, err.position, err.element) == (segment, position, element)
    assert (err.ack_code, err.ack_level) == ack
    lenient = parse_interchange(text, strict=False)
    assert lenient.warnings == [message]


@pytest.mark.parametrize(
    ("isa", "message"),
    [
        (
            ISA.replace("GREENFIELDFP   ", "GREENFIELDFP"),
            "segment 1 (ISA): ISA is 103 characters, X12 fixes it at 106: ISA06 (interchange "
            "sender ID) is 12 characters, must be 15",
        ),
        (
            ISA.replace("000000007", "00000007A"),
            "ISA13 '00000007A' is not a 9-digit control number",
        ),
        (ISA.replace("*0*T*", "*0*X*"), "ISA15 'X' is not P (production) or T (test)"),
        (ISA.replace("*0*T*", "*2*T*"), "ISA14 '2' is not 0 or 1"),
        (ISA.replace("250314", "25O314"), "ISA09 '25O314' is not a YYMMDD date"),
        ("IEA" + ISA[3:], "an interchange starts with ISA; found 'IEA'"),
        (ISA[:-1] + "*", "ISA16 '*' is not a usable component separator"),
    ],
)
def test_isa_faults_are_named(isa: str, message: str) -> None:
    with pytest.raises(X12Error, match=re.escape(message)):
        parse_interchange(interchange(isa=isa))


def test_short_data_and_missing_trailers() -> None:
    with pytest.raises(X12Error, match="ISA has 9 elements"):
        parse_interchange(ISA[:70])
    with pytest.raises(
        X12Error, match=re.escape("segment 15 (GE): the data ends after this segment; expected GS")
    ):
        parse_interchange(interchange(body=BODY[:-1]))
    no_se = [s for s in BODY if not s.startswith("SE")]
    with pytest.raises(X12Error) as info:
        parse_interchange(interchange(body=no_se))
    assert str(info.value) == (
        "segment 14 (GE): transaction 270 '0001' (segment 3) has no SE before this GE"
    )
    assert info.value.ack_code == "2"
    with pytest.raises(X12Error, match="expected GS, TA1 or IEA at interchange level, found BHT"):
        parse_interchange(interchange(body=["BHT*0022", *BODY]))
    with pytest.raises(X12Error, match="expected ST or GE in the group"):
        parse_interchange(interchange(body=[BODY[0], "BHT*0022", *BODY[1:]]))
    with pytest.raises(X12Error, match="segment 3: 'st' is not a segment ID"):
        parse_interchange(interchange(body=[BODY[0], "st*270", *BODY[1:]]))
    with pytest.raises(X12Error, match="the data is empty"):
        parse_interchange(" \r\n")


def test_several_interchanges_and_trailing_garbage() -> None:
    two = interchange(sep="\n") + interchange(sep="\n").replace("000000007", "000000008")
    assert [ic.control_number for ic in parse_interchanges(two)] == ["000000007", "000000008"]
    with pytest.raises(X12Error, match="holds 2 interchanges"):
        parse_interchange(two)
    with pytest.raises(X12Error, match="data after IEA .* is not another interchange"):
        parse_interchanges(interchange() + "\nHELLO")
    with pytest.raises(X12Error, match="byte 10 \\(0xFF\\) is not UTF-8"):
        parse_interchange(b"ISA*00*   \xff")


def test_serialises_back_exactly() -> None:
    text = interchange()
    ic = parse_interchange(text)
    assert ic.to_x12() == text
    assert ic.to_x12(line_breaks=True) == interchange(sep="\n")
    assert parse_interchange(interchange("\n")).to_x12() == interchange("\n")


def test_build_interchange_counts_and_refuses_delimiters_in_data() -> None:
    text = build_interchange(
        [
            [
                ("BHT", ["0022", "13", "T1"]),
                ("EQ", [["30", "98"]]),
                ("EB", ["B", "", ("HC", "99213")]),
            ]
        ],
        transaction_set="270",
        convention="005010X279A1",
        functional_id="HS",
        sender_id="A",
        receiver_id="B",
        control_number=12,
        now=datetime(2025, 3, 14, 9, 5),
    )
    ic = parse_interchange(text)
    (tx,) = ic.transactions()
    assert tx.se.get(1) == "5" and tx.segments[2].to_x12() == "EQ*30^98~"
    assert tx.segments[3].component(3, 2) == "99213"
    assert ic.isa.get(6) == "A".ljust(15) and ic.date == "250314" and ic.time == "0905"
    with pytest.raises(X12Error, match=r"NM103 'SMITH\*JONES' contains '\*', a delimiter"):
        format_segment("NM1", ["IL", "1", "SMITH*JONES"])
    assert format_segment("NM1", ["IL", "1", "SMITH", "", "", ""]) == "NM1*IL*1*SMITH~"
