"""The ER7 codec: framing, delimiters, charsets, canonical serialisation, structure, errors."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine.errors import HL7DecodeError, HL7ParseError
from engine.hl7v2.codec import (
    Delimiters,
    Message,
    MessageType,
    Segment,
    decode,
    parse_message,
    split_messages,
)

MSH = "MSH|^~\\&|SENDAPP|SENDFAC|RCVAPP|RCVFAC|20240102030405||ADT^A04|CTRL0001|P|2.5.1"
PID = "PID|1||12345^^^HOSP^MR||Testpatient^Alice^B||19800101|F"
NTE = "NTE|1||last note"
SEGMENTS = [MSH, PID, NTE]


def msh_with_charset(charset: str) -> str:
    """MSH with MSH-18 valued (MSH-13 ... MSH-17 empty)."""
    return MSH + "||||||" + charset


def check_sample(m: Message) -> None:
    assert [s.name for s in m.segments] == ["MSH", "PID", "NTE"]
    assert m.get("PID-5.2") == "Alice"
    assert m.get("NTE-3") == "last note"
    assert m.control_id == "CTRL0001"


# -- terminators and framing ---------------------------------------------------------------


@pytest.mark.parametrize("terminator", ["\r", "\n", "\r\n"])
def test_every_terminator_style(terminator: str) -> None:
    text = terminator.join(SEGMENTS) + terminator
    check_sample(parse_message(text))
    check_sample(parse_message(text.encode()))


def test_mixed_terminators() -> None:
    check_sample(parse_message(MSH + "\r\n" + PID + "\n" + NTE + "\r"))


def test_no_final_terminator() -> None:
    check_sample(parse_message("\r".join(SEGMENTS)))


def test_mllp_framing_bytes() -> None:
    framed = b"\x0b" + "\r".join(SEGMENTS).encode() + b"\r\x1c\r"
    check_sample(parse_message(framed))
    check_sample(parse_message(framed.decode()))


def test_utf8_byte_order_mark() -> None:
    body = "\r".join(SEGMENTS).encode()
    check_sample(parse_message(b"\xef\xbb\xbf" + body))
    check_sample(parse_message("\ufeff" + body.decode()))
    check_sample(parse_message(b"\x0b\xef\xbb\xbf" + body + b"\x1c\r"))  # BOM inside MLLP


def test_trailing_and_interior_blank_lines() -> None:
    m = parse_message(MSH + "\r\r\n" + PID + "\n\n" + NTE + "\r\n\r\n \n\t\r\n")
    check_sample(m)
    assert len(m.segments) == 3


def test_trailing_spaces_of_the_last_field_are_data() -> None:
    assert parse_message(MSH + "\rNTE|1||note  ").get("NTE-3") == "note  "
    assert parse_message(MSH + "\rNTE|1||note \t\r\n\r\n").get("NTE-3") == "note \t"
    assert parse_message(f"{MSH}\rNTE|1||note  \r\x1c\r".encode()).get("NTE-3") == "note  "


# -- delimiters ----------------------------------------------------------------------------


def test_non_default_encoding_characters() -> None:
    m = parse_message("MSH|$%!?|APP|FAC\rPID|1||a$b$c$d?e%f$g||Name!S!With!T!Escapes")
    assert m.delimiters == Delimiters("|", "$", "%", "!", "?")
    assert m.get("MSH-2") == "$%!?"
    assert m.get("PID-3.4.2") == "e"
    assert m.get("PID-3[2].2") == "g"
    assert m.get("PID-5") == "Name$With?Escapes"
    pid = m.segment("PID")
    assert pid is not None
    pid.set(5, "a$b|c")
    assert pid.to_er7() == "PID|1||a$b$c$d?e%f$g||a!S!b!F!c"


def test_non_default_field_separator() -> None:
    m = parse_message("MSH#^~\\&#APP#FAC\rPID#1##x^y~z#|pipe is data")
    assert m.delimiters.field == "#"
    assert m.get("MSH-1") == "#"
    assert m.get("MSH-3") == "APP"
    assert m.get("PID-3.2") == "y"
    assert m.get("PID-3[2]") == "z"
    assert m.get("PID-4") == "|pipe is data"
    assert m.to_er7() == "MSH#^~\\&#APP#FAC\rPID#1##x^y~z#|pipe is data\r"


def test_v27_truncation_character_and_p_escape() -> None:
    m = parse_message("MSH|^~\\&#|APP\rNTE|1||cut\\P\\here # plain")
    assert m.delimiters.truncation == "#"
    assert m.delimiters.encoding_characters == "^~\\&#"
    assert m.get("MSH-2") == "^~\\&#"
    assert m.get("MSH-3") == "APP"
    assert m.get("NTE-3") == "cut#here # plain"
    nte = m.segment("NTE")
    assert nte is not None
    nte.set(3, "a#b")
    assert m.to_er7() == "MSH|^~\\&#|APP\rNTE|1||a\\P\\b\r"


def test_delimiters_from_batch_header() -> None:
    d = Delimiters.from_header("BHS|$%!?|APP", where="BHS")
    assert d.key == "|$%!?"
    with pytest.raises(HL7ParseError) as info:
        Delimiters.from_header("FHS|^~", where="FHS")
    assert info.value.where == "FHS-2"


# -- character sets (MSH-18) ---------------------------------------------------------------


def test_latin1_bytes() -> None:
    data = msh_with_charset("8859/1").encode() + b"\rPID|1||||Testpatient^Ren\xe9e"
    m = parse_message(data)
    assert m.charset == "latin-1"
    assert m.get("PID-5.2") == "Renée"
    assert m.to_bytes().endswith(b"Ren\xe9e\r")


def test_unicode_utf8() -> None:
    data = f"{msh_with_charset('UNICODE UTF-8')}\rPID|1||||Testpatient^Zoë中".encode()
    m = parse_message(data)
    assert m.charset == "utf-8"
    assert m.get("PID-5.2") == "Zoë中"


def test_repeating_msh18_uses_the_first_repetition() -> None:
    data = msh_with_charset("8859/1~ISO IR87").encode() + b"\rPID|1||||Testpatient^Ren\xe9e"
    assert parse_message(data).get("PID-5.2") == "Renée"


def test_ascii_with_a_high_byte_names_the_segment() -> None:
    data = msh_with_charset("ASCII").encode() + b"\rPID|1||||Testpatient^Ren\xe9e"
    with pytest.raises(HL7DecodeError) as info:
        parse_message(data)
    assert info.value.where == "segment 2 (PID)"
    assert "0xE9" in info.value.message


def test_decode_error_counts_segments_not_blank_lines() -> None:
    data = b"\x0b" + MSH.encode() + b"\r\n\r\nPID|1\r\nNTE|1||caf\xe9"
    with pytest.raises(HL7DecodeError) as info:
        decode(data)
    assert info.value.where == "segment 3 (NTE)"


def test_empty_msh18_uses_the_default_charset() -> None:
    data = MSH.encode() + b"\rPID|1||||Testpatient^Ren\xe9e"
    assert parse_message(data, default_charset="latin-1").get("PID-5.2") == "Renée"
    with pytest.raises(HL7DecodeError) as info:
        parse_message(data)  # default utf-8: 0xE9 followed by 'e' is not UTF-8
    assert info.value.where == "segment 2 (PID)"


def test_unsupported_msh18() -> None:
    with pytest.raises(HL7DecodeError) as info:
        parse_message(msh_with_charset("KLINGON-8").encode() + b"\rPID|1")
    assert info.value.where == "MSH-18"
    assert "KLINGON-8" in info.value.message


def test_to_bytes_refuses_text_the_charset_cannot_hold() -> None:
    m = Message.new("ADT^A04", control_id="1", timestamp="20240101", charset_name="8859/1")
    m.set("PID-5.1", "Ωmega")
    with pytest.raises(HL7DecodeError) as info:
        m.to_bytes()
    assert info.value.where == "MSH-18"


# -- canonical serialisation ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("PID|1||a^^~||", "PID|1||a"),
        ("PID|1|a&^b", "PID|1|a^b"),
        ("PID|1|a^&^b", "PID|1|a^^b"),
        ("PID|1|a&&^&b", "PID|1|a^&b"),
        ("PID|1|~a~~", "PID|1|~a"),
        ("PID|1|a^&~^|x", "PID|1|a|x"),
        ("PID|1|a^&~b^", "PID|1|a~b"),
        ("PID|1|a^b&&~^", "PID|1|a^b"),
        ("PID|||", "PID"),
        ("PID|1|^^|3", "PID|1||3"),
        ("PID|1|\\F\\^", "PID|1|\\F\\"),
        ("NTE|1||  spaced \\H\\bold\\N\\ text", "NTE|1||  spaced \\H\\bold\\N\\ text"),
    ],
)
def test_canonical_trims_trailing_empties(raw: str, canonical: str) -> None:
    m = parse_message(MSH + "\r" + raw)
    assert m.segments[1].to_er7() == canonical


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("MSH|^~\\&", "MSH|^~\\&"),
        ("MSH|^~\\&|", "MSH|^~\\&"),
        ("MSH|^~\\&|APP^^||||", "MSH|^~\\&|APP"),
        ("MSH|^~\\&#|", "MSH|^~\\&#"),
        ("MSH#^~\\&#A##", "MSH#^~\\&#A"),
    ],
)
def test_canonical_leaves_msh_1_and_2(raw: str, canonical: str) -> None:
    assert parse_message(raw).msh.to_er7() == canonical


def test_changed_segment_is_rebuilt_canonically() -> None:
    m = parse_message(MSH + "\r" + PID + "|||")
    m.set("PID-5.3", "")
    m.set("PID-13[2].4", "x@example.invalid")
    assert m.segments[1].to_er7() == (
        "PID|1||12345^^^HOSP^MR||Testpatient^Alice||19800101|F|||||~^^^x@example.invalid"
    )
    assert m.segments[0].to_er7() == MSH  # untouched


# -- building ------------------------------------------------------------------------------


def test_message_new_fills_msh() -> None:
    m = Message.new(
        "ADT^A04^ADT_A01",
        control_id="CTRL9",
        timestamp="20240102030405",
        sending=("SENDAPP", "SENDFAC"),
        receiving=("RCVAPP", "RCVFAC"),
    )
    assert m.to_er7() == (
        "MSH|^~\\&|SENDAPP|SENDFAC|RCVAPP|RCVFAC|20240102030405||ADT^A04^ADT_A01|CTRL9|P|2.5.1"
        "||||||UNICODE UTF-8\r"
    )
    assert m.type == MessageType("ADT", "A04", "ADT_A01")
    assert m.version == "2.5.1"


def test_set_appends_only_the_next_occurrence() -> None:
    m = Message.new("ADT^A04", control_id="1", timestamp="20240101")
    m.set("OBX[1]-5", "one")
    m.set("OBX[2]-5", "two")
    assert [s.get(5) for s in m.all("OBX")] == ["one", "two"]
    with pytest.raises(HL7ParseError) as info:
        m.set("OBX[4]-5", "four")
    assert info.value.where == "OBX[4]-5"


@pytest.mark.parametrize("field", [1, 2])
def test_msh_1_and_2_cannot_be_set(field: int) -> None:
    m = Message.new("ADT^A04", control_id="1", timestamp="20240101")
    with pytest.raises(HL7ParseError):
        m.msh.set(field, "x")


def test_segment_new_rejects_a_bad_id() -> None:
    with pytest.raises(HL7ParseError):
        Segment.new("pid")


def test_repetitions_and_components() -> None:
    m = parse_message(MSH + "\rPID|1||A^B\\S\\C~D&E^F")
    pid = m.segment("PID")
    assert pid is not None
    reps = pid.repetitions(3)
    assert len(reps) == 2
    assert reps[0].components() == ["A", "B^C"]
    assert reps[1].get(1, 2) == "E"
    assert reps[1].get(2) == "F"
    assert pid.repetitions(4) == []
    assert m.msh.repetitions(2) == []  # MSH-2 is the delimiters, not data
    assert len(pid) == 3


# -- structure (MSH-9) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("msh9", "expected"),
    [
        ("ADT^A04", MessageType("ADT", "A04", "ADT_A01")),
        ("ADT^A04^", MessageType("ADT", "A04", "ADT_A01")),
        ("ADT^A40", MessageType("ADT", "A40", "ADT_A39")),
        ("SIU^S15", MessageType("SIU", "S15", "SIU_S12")),
        ("ADT^A04^ADT_A05", MessageType("ADT", "A04", "ADT_A05")),  # explicit MSH-9.3 wins
    ],
)
def test_message_type(msh9: str, expected: MessageType) -> None:
    m = parse_message(f"MSH|^~\\&|||||20240101||{msh9}|1|P|2.5.1")
    assert m.type == expected
    assert str(m.type) == f"{expected.code}^{expected.trigger}"


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", "", "\r\n \r", b"\x0b\x1c\r"])
def test_empty_input(data: bytes | str) -> None:
    with pytest.raises(HL7ParseError, match="no MSH"):
        parse_message(data)


def test_first_segment_not_msh() -> None:
    with pytest.raises(HL7ParseError, match="no MSH segment") as info:
        parse_message("PID|1\r" + MSH)
    assert info.value.where == "segment 1"


def test_batch_header_given_to_parse_message() -> None:
    with pytest.raises(HL7ParseError, match="batch"):
        parse_message("FHS|^~\\&\r" + MSH)


@pytest.mark.parametrize(
    ("first", "where", "words"),
    [
        ("MSH|", "MSH-2", "missing"),
        ("MSH|^~\\|APP", "MSH-2", "4 characters"),
        ("MSH|^~\\&$%|APP", "MSH-2", "4 characters"),
        ("MSH|^^\\&|APP", "MSH-2", "distinct"),
        ("MSH|^~|&|APP", "MSH-2", "4 characters"),
        ("MSH", "MSH-1", "missing"),
        ("MSHA^~\\&", "MSH-1", "not a valid separator"),
    ],
)
def test_bad_msh_delimiters(first: str, where: str, words: str) -> None:
    with pytest.raises(HL7ParseError) as info:
        parse_message(first + "\rPID|1")
    assert info.value.where == where
    assert words in info.value.message


@pytest.mark.parametrize(
    ("lines", "where"),
    [
        ([MSH, "garbage here"], "segment 2"),
        ([MSH, PID, "PV1^1"], "segment 3"),
        ([MSH, PID, "pv1|1"], "segment 3"),
        ([MSH, "P1"], "segment 2"),
    ],
)
def test_line_that_is_not_a_segment(lines: list[str], where: str) -> None:
    with pytest.raises(HL7ParseError) as info:
        parse_message("\r".join(lines))
    assert info.value.where == where


# -- splitting -----------------------------------------------------------------------------


def test_split_messages_gives_line_numbers() -> None:
    data = f"\ufeff{MSH}\r\n{PID}\r\n\r\n{MSH}\nNTE|1\r\x1c\r\x0b{MSH}\r"
    expected = [(1, f"{MSH}\r{PID}"), (4, f"{MSH}\rNTE|1"), (7, MSH)]
    assert list(split_messages(data)) == expected
    assert list(split_messages(data.encode())) == [(n, t.encode()) for n, t in expected]


# -- round trips (hypothesis) --------------------------------------------------------------

SPECIALS = "|^~\\&#$%!?\r\n\x0b\x1c\t \ufeffHNZXEFSTRP.br0Aé中😀"
TEXT = st.text(
    alphabet=st.one_of(st.sampled_from(SPECIALS), st.characters(exclude_categories=["Cs"])),
    max_size=30,
)
LATIN1_TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from("|^~\\&#\r\n\x0b\x1c\t HNZXEFSTRP.br0Aé"),
        st.characters(max_codepoint=255, exclude_categories=["Cs"]),
    ),
    max_size=30,
)
DELIMITERS = st.sampled_from(
    [
        Delimiters(),
        Delimiters("|", "$", "%", "!", "?"),
        Delimiters("#", "^", "~", "\\", "&"),
        Delimiters("|", "^", "~", "\\", "&", "#"),
    ]
)


@st.composite
def paths(draw: st.DrawFn) -> str:
    """A writable path: a data segment (or MSH-3..MSH-21 except MSH-18) at some depth."""
    seg = draw(st.sampled_from(["PID", "NTE", "ZX1", "MSH"]))
    if seg == "MSH":
        field = draw(st.integers(3, 21).filter(lambda n: n != 18))
    else:
        field = draw(st.integers(1, 30))
    text = f"{seg}-{field}"
    rep = draw(st.integers(1, 3))
    if rep > 1:
        text += f"[{rep}]"
    comp = draw(st.integers(0, 5))
    if comp:
        text += f".{comp}"
        sub = draw(st.integers(0, 3))
        if sub:
            text += f".{sub}"
    return text


def new_message(d: Delimiters, charset_name: str = "UNICODE UTF-8") -> Message:
    return Message.new(
        "ADT^A04",
        control_id="CTRL1",
        timestamp="20240102030405",
        sending=("APP", "FAC"),
        delimiters=d,
        charset_name=charset_name,
    )


@given(paths(), TEXT, DELIMITERS)
def test_set_then_read_back_through_er7(path: str, value: str, d: Delimiters) -> None:
    m = new_message(d)
    m.set(path, value)
    text = m.to_er7()
    back = parse_message(text)
    assert back.delimiters == d
    assert back.get(path) == value
    assert back.get("MSH-9.2") == "A04" or path.startswith("MSH-9")


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(paths(), TEXT), max_size=6), DELIMITERS)
def test_canonical_form_is_a_fixed_point(writes: list[tuple[str, str]], d: Delimiters) -> None:
    m = new_message(d)
    for path, value in writes:
        m.set(path, value)
    once = m.to_er7()
    assert parse_message(once).to_er7() == once
    # the last write to each path is what reads back
    last = dict(writes)
    back = parse_message(once)
    for path, value in last.items():
        if all(not _overlaps(path, other) for other in last if other != path):
            assert back.get(path) == value


def _overlaps(a: str, b: str) -> bool:
    """Whether writing path b could change what path a reads (same segment and field)."""
    return a.split(".")[0].split("[")[0] == b.split(".")[0].split("[")[0]


@given(paths(), TEXT, st.sampled_from(["\r", "\n", "\r\n"]))
def test_round_trip_through_bytes(path: str, value: str, terminator: str) -> None:
    m = new_message(Delimiters())
    m.set(path, value)
    data = m.to_bytes(terminator)
    back = parse_message(data)
    assert back.get(path) == value
    assert back.to_bytes() == m.to_bytes()


@given(paths(), LATIN1_TEXT)
def test_round_trip_through_latin1_bytes(path: str, value: str) -> None:
    m = new_message(Delimiters(), charset_name="8859/1")
    m.set(path, value)
    back = parse_message(b"\x0b" + m.to_bytes() + b"\x1c\r")
    assert back.charset == "latin-1"
    assert back.get(path) == value


@example("x\ufeff \t", "\r")
@example(" ", "\n")
@given(TEXT, st.sampled_from(["\r", "\n", "\r\n"]))
def test_value_at_the_very_end_of_the_message(value: str, terminator: str) -> None:
    """The last field of the last segment borders the framing that parsing strips."""
    m = new_message(Delimiters())
    m.set("ZZ9-2", value)
    text = m.to_er7(terminator)
    assert parse_message(text).get("ZZ9-2") == value
    assert parse_message(text[: -len(terminator)]).get("ZZ9-2") == value  # no final terminator
    framed = b"\x0b" + m.to_bytes(terminator) + b"\x1c\r"
    assert parse_message(framed).get("ZZ9-2") == value


RAW_FIELD = st.text(alphabet="ab|^~&\\ ", max_size=25)


@given(RAW_FIELD)
def test_canonical_trimming_keeps_every_value(raw: str) -> None:
    original = parse_message(f"{MSH}\rZX1|{raw}")
    canonical = original.to_er7()
    again = parse_message(canonical)
    assert again.to_er7() == canonical
    for field in range(1, 6):
        for rep in range(1, 4):
            for comp in range(1, 4):
                for sub in range(1, 4):
                    path = f"ZX1-{field}[{rep}].{comp}.{sub}"
                    assert again.get(path) == original.get(path), path
