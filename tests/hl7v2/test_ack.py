"""Acknowledgments (HL7 v2.5.1 chapter 2, 2.9): modes, codes, ERR segments, NAKs. Synthetic data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message as hl7apy_parse

from engine.errors import (
    ConfigError,
    ConversionError,
    EngineError,
    HL7DecodeError,
    HL7ParseError,
    HL7ValidationError,
    UnsupportedMessageError,
)
from engine.hl7v2.ack import (
    AckError,
    ErrorLocation,
    ack_bytes,
    ack_code_for,
    ack_mode,
    application_ack_wanted,
    build_ack,
    commit_ack_wanted,
    errors_for,
    hl7_timestamp,
    nak_for_unparseable,
)
from engine.hl7v2.codec import Message, parse_message
from engine.hl7v2.validate import validate

TS = "20240301101600-0500"
PATIENT_NAME = "TESTPATIENT^JANE"


def adt(
    msh15: str = "",
    msh16: str = "",
    *,
    version: str = "2.5.1",
    receiving: str = "ENGINE|HUB",
    tail: str = "",
) -> str:
    """A synthetic ADT^A04 (no real person), optionally asking for enhanced-mode ACKs."""
    msh = (
        f"MSH|^~\\&|FRONTDESK|CLINIC|{receiving}|20240301101500||ADT^A04^ADT_A01|MSG00042|P|"
        f"{version}|||{msh15}|{msh16}||UNICODE UTF-8"
    )
    body = [
        msh,
        "EVN|A04|20240301101500",
        f"PID|1||SYN0001^^^CLINIC^MR||{PATIENT_NAME}^Q||19800101|F",
        "PV1|1|O|CLINIC^101^1",
    ]
    return "\r".join(body) + "\r" + tail


def fields(msg: Message, seg: str, occurrence: int = 1) -> list[str]:
    found = msg.segment(seg, occurrence)
    assert found is not None, f"no {seg}"
    return found.fields()


# -- modes and conditions (2.9.2, 2.9.3, table 0155) --------------------------------------------


@pytest.mark.parametrize(
    ("msh15", "msh16", "mode"),
    [
        ("", "", "original"),
        ("AL", "", "enhanced"),
        ("", "NE", "enhanced"),
        ("NE", "NE", "enhanced"),
    ],
)
def test_ack_mode_is_enhanced_when_msh15_or_msh16_valued(msh15: str, msh16: str, mode: str) -> None:
    assert ack_mode(parse_message(adt(msh15, msh16))) == mode


@pytest.mark.parametrize(
    ("msh15", "msh16", "accepted", "commit", "application"),
    [
        ("", "", True, False, True),  # original mode: one application ACK, always
        ("", "", False, False, True),
        ("AL", "NE", True, True, False),
        ("AL", "NE", False, True, False),
        ("NE", "AL", True, False, True),
        ("ER", "SU", True, False, True),
        ("ER", "SU", False, True, False),
        ("SU", "ER", True, True, False),
        ("SU", "ER", False, False, True),
        ("", "NE", True, True, False),  # our reading: empty in enhanced mode means AL
        ("NE", "", False, False, True),
        ("al", "xx", False, True, True),  # case-insensitive; unknown counts as AL
    ],
)
def test_ack_wanted_follows_table_0155(
    msh15: str, msh16: str, accepted: bool, commit: bool, application: bool
) -> None:
    msg = parse_message(adt(msh15, msh16))
    assert commit_ack_wanted(msg, accepted) is commit
    assert application_ack_wanted(msg, accepted) is application


# -- the one mapping from error to acknowledgment code (table 0008) -----------------------------


@pytest.mark.parametrize(
    ("error", "enhanced", "stage", "code"),
    [
        (None, False, "application", "AA"),
        (None, True, "commit", "CA"),
        (None, True, "application", "AA"),
        (HL7ParseError("no MSH"), False, "application", "AR"),
        (HL7ParseError("no MSH"), True, "commit", "CR"),
        (HL7DecodeError("bad byte"), True, "commit", "CR"),
        (UnsupportedMessageError("no XYZ", code="200"), False, "application", "AR"),
        (UnsupportedMessageError("v9", code="203"), True, "commit", "CR"),
        (HL7ValidationError("PV1-2 empty", code="101"), False, "application", "AE"),
        (HL7ValidationError("PV1-2 empty", code="101"), True, "commit", "CE"),
        (HL7ValidationError("v2.9", code="203"), False, "application", "AR"),
        (ConversionError("no mapping"), True, "application", "AE"),
        (EngineError("database down"), False, "commit", "AR"),
        (EngineError("database down"), True, "commit", "CR"),
        (EngineError("bug after commit"), True, "application", "AE"),
        (ConfigError("route file"), False, "application", "AE"),
    ],
)
def test_ack_code_for(error: EngineError | None, enhanced: bool, stage: str, code: str) -> None:
    assert ack_code_for(error, enhanced=enhanced, stage=stage) == code  # type: ignore[arg-type]


# -- build_ack -----------------------------------------------------------------------------------


def test_original_mode_aa_swaps_parties_and_echoes_the_header() -> None:
    original = parse_message(adt())
    ack = build_ack(original, "AA", control_id="ACK0001", timestamp=TS)
    msh = ack.msh
    assert (msh.get(3), msh.get(4), msh.get(5), msh.get(6)) == (
        "ENGINE",
        "HUB",
        "FRONTDESK",
        "CLINIC",
    )
    assert msh.raw_field(9) == "ACK^A04^ACK"
    assert msh.get(7) == TS
    assert msh.get(10) == "ACK0001"
    assert (msh.get(11), msh.get(12), msh.get(18)) == ("P", "2.5.1", "UNICODE UTF-8")
    assert msh.get(15) == msh.get(16) == ""
    assert [s.name for s in ack.segments] == ["MSH", "MSA"]
    assert fields(ack, "MSA")[1:] == ["AA", "MSG00042"]  # no MSA-3 text on success


def test_sending_is_the_fallback_when_the_original_has_no_receiver() -> None:
    original = parse_message(adt(receiving="|"))
    ack = build_ack(original, "AA", control_id="A1", timestamp=TS, sending=("ENG", "PRACTICE"))
    assert (ack.msh.get(3), ack.msh.get(4)) == ("ENG", "PRACTICE")
    assert (ack.msh.get(5), ack.msh.get(6)) == ("FRONTDESK", "CLINIC")


def test_enhanced_commit_error_carries_err_segments_per_issue() -> None:
    original = parse_message(adt("AL", "NE"))
    exc = HL7ValidationError(
        "two problems",
        code="101",
        issues=[
            ("101", "PV1-2", "segment 4 (PV1): field 2 (Patient Class) is required but empty"),
            ("102", "PID-7.1", "segment 3 (PID): field 7 component 1 is not a valid DTM value"),
        ],
    )
    code = ack_code_for(exc, enhanced=True, stage="commit")
    ack = build_ack(original, code, control_id="A2", timestamp=TS, errors=errors_for(exc))
    assert code == "CE"
    assert (ack.msh.get(15), ack.msh.get(16)) == ("NE", "NE")  # an ACK is never acknowledged
    msa = fields(ack, "MSA")
    assert msa[1:3] == ["CE", "MSG00042"]
    assert msa[3] == "segment 4 (PV1): field 2 (Patient Class) is required but empty"
    err1, err2 = ack.all("ERR")
    assert err1.raw_field(2) == "PV1^1^2^1"
    assert err1.raw_field(3) == "101^Required field missing^HL70357"
    assert err1.get(4) == "E"
    assert err1.get(8).startswith("segment 4 (PV1): field 2")
    assert err2.raw_field(2) == "PID^1^7^1^1"
    assert err2.raw_field(3) == "102^Data type error^HL70357"


def test_msa3_is_capped_and_err8_stays_one_line() -> None:
    original = parse_message(adt())
    long_text = "line one\nline two " + "x" * 400
    ack = build_ack(
        original,
        "AE",
        control_id="A3",
        timestamp=TS,
        errors=[AckError("207", "E", None, long_text)],
    )
    assert len(fields(ack, "MSA")[3]) == 80
    err = ack.segment("ERR")
    assert err is not None
    assert "\n" not in err.get(8) and len(err.get(8)) == 250
    assert err.raw_field(2) == ""  # no location given, no ERL


def test_non_default_delimiters_are_echoed_byte_for_byte() -> None:
    text = adt().replace("|", "#").replace("^~\\&", "*!$@", 1).replace("^", "*")
    text = text.replace("#FRONTDESK#", "#FRONT$F$DESK#")  # an escaped field separator
    original = parse_message(text)
    assert original.msh.get(3) == "FRONT#DESK"
    ack = build_ack(original, "AA", control_id="A4", timestamp=TS)
    er7 = ack.to_er7()
    assert er7.startswith("MSH#*!$@#ENGINE#HUB#FRONT$F$DESK#CLINIC#")
    assert "#ACK*A04*ACK#A4#P#2.5.1#" in er7
    assert parse_message(er7).msh.get(5) == "FRONT#DESK"


def test_build_ack_is_parseable_and_a_valid_hl7apy_ack() -> None:
    original = parse_message(adt("AL", "AL"))
    exc = HL7ValidationError("x", code="101", issues=[("101", "PV1-2", "PV1-2 is empty")])
    for code, errors in (("AA", []), ("AE", errors_for(exc)), ("CR", [AckError("207")])):
        ack = build_ack(original, code, control_id="A5", timestamp=TS, errors=errors)
        text = ack.to_er7()
        again = parse_message(ack.to_bytes())
        assert again.type == ("ACK", "A04", "ACK")
        assert again.control_id == "A5"
        assert validate(again) == []
        strict = hl7apy_parse(text, validation_level=VALIDATION_LEVEL.STRICT, force_validation=True)
        assert strict.name == "ACK"
        assert strict.msa.msa_1.to_er7() == code


def test_before_v25_err_uses_the_eld_form() -> None:
    original = parse_message(adt(version="2.4"))
    exc = HL7ValidationError("x", code="101", issues=[("101", "PV1-2", "PV1-2 is empty")])
    ack = build_ack(original, "AE", control_id="A6", timestamp=TS, errors=errors_for(exc))
    err = ack.segment("ERR")
    assert err is not None
    assert err.raw_field(1) == "PV1^1^2^101&Required field missing&HL70357"
    assert len(err) == 1  # no v2.5 fields in a 2.4 ERR
    assert validate(ack) == []


# -- AckError and its locations ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "location"),
    [
        ("PID-3", ErrorLocation("PID", 1, 3, 1)),
        ("MSH-2", ErrorLocation("MSH", 1, 2, 1)),
        ("PV1-3", ErrorLocation("PV1", 1, 3, 1)),
        ("OBX[2]-5[3].1.2", ErrorLocation("OBX", 2, 5, 3, 1, 2)),
        ("segment 4 (PV1)", ErrorLocation("PV1", 1)),
        ("PV1", ErrorLocation("PV1", 1)),
        ("segment 4", None),  # no ID and no message to look it up in
        ("line 7 of the route file", None),
        (None, None),
    ],
)
def test_from_exception_reads_where(where: str | None, location: ErrorLocation | None) -> None:
    err = AckError.from_exception(HL7ParseError("broken", where=where))
    assert err.location == location
    assert (err.code, err.severity, err.text) == ("100", "E", "broken")


def test_segment_position_becomes_the_segment_sequence_with_the_message() -> None:
    msg = parse_message(adt(tail="OBX|1|ST|A||x\rOBX|2|ST|B||y\r"))
    err = AckError.from_exception(EngineError("bad", where="segment 6 (OBX)"), msg)
    assert err.location == ErrorLocation("OBX", 2)
    bare = AckError.from_exception(EngineError("bad", where="segment 5"), msg)
    assert bare.location == ErrorLocation("OBX", 1)
    assert bare.location.components() == ["OBX", "1"]


def test_errors_for_gives_one_err_per_issue_and_from_exception_the_first() -> None:
    exc = HL7ValidationError(
        "two", code="100", issues=[("100", "segment 5 (ZZZ)", "a"), ("101", "PID-3", "b")]
    )
    assert [e.code for e in errors_for(exc)] == ["100", "101"]
    assert errors_for(exc)[1].location == ErrorLocation("PID", 1, 3, 1)
    assert AckError.from_exception(exc).text == "a"
    assert errors_for(UnsupportedMessageError("no", where="MSH-9", code="201"))[0].code == "201"


# -- timestamps ----------------------------------------------------------------------------------


def test_hl7_timestamp_writes_a_dtm_with_offset() -> None:
    est = timezone(timedelta(hours=-5))
    assert hl7_timestamp(datetime(2024, 3, 1, 10, 15, 0, tzinfo=UTC)) == "20240301101500+0000"
    assert hl7_timestamp(datetime(2024, 3, 1, 10, 15, 0, 123456, est)) == (
        "20240301101500.1234-0500"
    )
    india = timezone(timedelta(hours=5, minutes=30))
    assert hl7_timestamp(datetime(2024, 12, 31, 23, 59, 59, tzinfo=india)).endswith("+0530")
    with pytest.raises(ValueError, match="aware"):
        hl7_timestamp(datetime(2024, 3, 1, 10, 15))


# -- NAKs for what cannot be parsed --------------------------------------------------------------


def nak(raw: bytes | str, error: EngineError | None = None) -> Message | None:
    out, code = nak_for_unparseable(
        raw,
        error or HL7ParseError("not ER7", where="segment 2"),
        control_id="NAK1",
        timestamp=TS,
        sending=("ENG", "PRACTICE"),
    )
    if out is None:
        assert code is None
        return None
    ack = parse_message(out)
    assert ack.get("MSA-1") == code  # the code returned beside the ACK is the one it carries
    return ack


@pytest.mark.parametrize(
    "raw",
    [b"", b"garbage without a header", "PID|1||X\r", b"\x0b\x1c\r", b"MSH", b"MSH1^~\\&|A"],
)
def test_no_msh_still_gets_a_generic_reject(raw: bytes | str) -> None:
    ack = nak(raw)
    assert ack is not None
    assert ack.get("MSA-1") == "AR"
    assert ack.get("MSA-2") == ""  # no control ID could be read
    assert ack.get("MSH-3") == "ENG"
    assert ack.get("ERR-3.1") == "100"


def test_half_readable_message_gets_ar_with_the_salvaged_header() -> None:
    raw = b"\x0b" + adt().encode().replace(b"EVN|A04", b"EVN^A04") + b"\x1c\r"
    with pytest.raises(HL7ParseError) as caught:
        parse_message(raw)
    ack = nak(raw, caught.value)
    assert ack is not None
    assert (ack.msh.get(3), ack.msh.get(4), ack.msh.get(5), ack.msh.get(6)) == (
        "ENGINE",
        "HUB",
        "FRONTDESK",
        "CLINIC",
    )
    assert ack.type == ("ACK", "A04", "ACK")
    assert (ack.msh.get(10), ack.msh.get(12), ack.msh.get(18)) == ("NAK1", "2.5.1", "UNICODE UTF-8")
    assert fields(ack, "MSA")[1:3] == ["AR", "MSG00042"]
    err = ack.segment("ERR")
    assert err is not None
    assert err.raw_field(2) == "EVN^1"  # the codec said "segment 2"
    assert err.raw_field(3) == "100^Segment sequence error^HL70357"


def test_nak_location_resolves_segment_positions_from_the_raw_lines() -> None:
    raw = adt() + "OBX|1|ST|A||x\r1BX|broken\r"
    ack = nak(raw, HL7ParseError("not a segment ID", where="segment 6"))
    assert ack is not None
    err = ack.segment("ERR")
    assert err is not None
    assert err.raw_field(2) == ""  # "1BX" is no segment ID: no ERL rather than a wrong one
    ack = nak(raw, HL7ParseError("bad", where="segment 5 (OBX)"))
    assert ack is not None and ack.all("ERR")[0].raw_field(2) == "OBX^1"


def test_enhanced_mode_nak_is_cr() -> None:
    ack = nak(adt("AL", "NE") + "\x00junk")
    assert ack is not None
    assert fields(ack, "MSA")[1] == "CR"
    assert (ack.msh.get(15), ack.msh.get(16)) == ("NE", "NE")


def test_broken_encoding_characters_fall_back_to_standard_delimiters() -> None:
    raw = b"junk\rMSH|^~|APP^X|FAC|ENGINE|HUB|2024||ADT^A08|C77|T|2.3\rPID|"
    ack = nak(raw, HL7ParseError("encoding characters", where="MSH-2"))
    assert ack is not None
    assert ack.to_er7().startswith("MSH|^~\\&|ENGINE|HUB|APP|FAC|")
    assert ack.msh.raw_field(9) == "ACK^A08"  # no MSG.3 before v2.3.1
    assert (ack.msh.get(11), ack.msh.get(12)) == ("T", "2.3")
    assert fields(ack, "MSA")[1:3] == ["AR", "C77"]
    err = ack.segment("ERR")
    assert err is not None
    assert err.raw_field(1) == "MSH^1^2^100&Segment sequence error&HL70357"  # ELD before 2.5


def test_non_default_delimiters_are_kept_in_the_nak() -> None:
    raw = adt().replace("|", "#").replace("^~\\&", "*!$@", 1).replace("^", "*") + "\x7f"
    ack = nak(raw.encode())
    assert ack is not None
    assert ack.delimiters.field == "#"
    assert ack.to_er7().startswith("MSH#*!$@#ENGINE#HUB#FRONTDESK#CLINIC#")


def test_nak_uses_the_charset_msh18_names() -> None:
    raw = adt().replace("FRONTDESK", "RÉCEPTION").replace("UNICODE UTF-8", "8859/1")
    out, _ = nak_for_unparseable(
        raw.encode("latin-1"),
        HL7DecodeError("bad byte"),
        control_id="N",
        timestamp=TS,
        sending=("E", "F"),
    )
    assert out is not None
    assert "|RÉCEPTION|CLINIC|".encode("latin-1") in out
    assert parse_message(out).msh.get(5) == "RÉCEPTION"


def test_nak_never_copies_patient_data() -> None:
    raw = adt().replace("EVN", "E\x00N")
    error = HL7ParseError("bad segment ID", where="segment 2")
    out, _ = nak_for_unparseable(raw, error, control_id="N", timestamp=TS, sending=("E", "F"))
    assert out is not None
    assert b"TESTPATIENT" not in out and b"19800101" not in out


def test_nak_for_a_store_failure_on_a_good_message_is_a_reject() -> None:
    ack = nak(adt(), EngineError("message could not be stored; send again"))
    assert ack is not None
    assert fields(ack, "MSA")[1:4] == ["AR", "MSG00042", "message could not be stored; send again"]
    err = ack.segment("ERR")
    assert err is not None and err.get(3) == "207"


@pytest.mark.parametrize(
    "raw",
    [
        b"MSH|",
        b"MSH|^~\\&",
        "MSH|^~\\&|\ud800|x",  # a lone surrogate cannot be encoded
        b"MSH|^~\\&|A|B|C|D|E||F^G|H|I|J|||||||\xff\xfe",
        b"\xef\xbb\xbfMSH|^~\\&|A|B",
    ],
)
def test_nak_never_raises(raw: bytes | str) -> None:
    out, _ = nak_for_unparseable(
        raw, HL7ParseError("x"), control_id="N", timestamp=TS, sending=("E", "F")
    )
    assert out is None or out.startswith(b"MSH")


_HEADERS = [
    "MSH|^~\\&|FRONT|CLINIC|ENGINE|HUB|20260102030405||ADT^A08^ADT_A01|C1|P|2.5.1",
    "MSH|^~\\&|FRONT|CLINIC|||20260102030405||ADT^A04|C2|T|2.3",  # no MSH-5/6: our identity
    "MSH|^~\\&|A^1.2^ISO|F&x|B|G|20260102||SIU^S12^SIU_S12|C\\F\\3|P|2.5.1|||AL|NE||8859/1",
    "MSH|^~\\&#|A|F|B|G|20260102||ADT^A01^ADT_A01|C4|P^T|2.7|||AL|AL",  # enhanced, truncation
    "MSH*^~\\&*A*F*B*G*20260102**ADT^A08*C5*D*2.4",  # other field separator
    "MSH|^~\\&|A|F|B|G|20260102||DFT^P03|C6|P|2.5.1^USA&&ISO3166|||||UNICODE UTF-8",
    "MSH|^~\\&|A|F|B|G|20260102||ADT^A08|123^|P|2.5.1",  # MSH-10 with trailing delimiters
    "MSH|^~\\&|A|F|B|G|20260102||ADT^A08|12~|P|2.5.1",
    "MSH|^~\\&|A|F|B|G|20260102||ADT^A08|1&|P|2.5.1",
]


@pytest.mark.parametrize("header", _HEADERS)
@pytest.mark.parametrize("code", ["AA", "CA", "AE"])
def test_the_cached_ack_is_the_composed_ack(header: str, code: str) -> None:
    f = header[3]
    original = parse_message(f"{header}\rPID{f}1{f}{f}MRN1\r")
    for control_id in ("A1", "A123456", "A|pipe", "A^hat"):  # the last two are composed in full
        timestamp = hl7_timestamp(datetime(2026, 1, 2, 3, 4, 5, 600, tzinfo=UTC))
        expected = build_ack(
            original, code, control_id=control_id, timestamp=timestamp, sending=("EN", "HUB")
        ).to_bytes()
        got = ack_bytes(
            original, code, control_id=control_id, timestamp=timestamp, sending=("EN", "HUB")
        )
        assert got == expected
