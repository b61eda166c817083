"""Batch files (HL7 v2.5.1 section 2.10.3): FHS/BHS envelopes, counts, back-to-back messages."""

from __future__ import annotations

import pytest

from engine.errors import HL7DecodeError, HL7ParseError
from engine.hl7v2.batch import Batch, BatchGroup, iter_messages, parse_batch
from engine.hl7v2.codec import Message

FHS = "FHS|^~\\&|SENDAPP|SENDFAC|RCVAPP|RCVFAC|20240102030405||file-001"
BHS = "BHS|^~\\&|SENDAPP|SENDFAC|RCVAPP|RCVFAC|20240102030405"


def msg(n: int, *, charset: str = "", extra: tuple[str, ...] = ()) -> list[str]:
    """A small synthetic ADT^A04 (control ID MSG<n>), as a list of segment lines."""
    msh = f"MSH|^~\\&|SENDAPP|SENDFAC|RCVAPP|RCVFAC|20240102030405||ADT^A04|MSG{n}|P|2.5.1"
    if charset:
        msh += "||||||" + charset
    return [msh, f"PID|1||{n}^^^HOSP^MR||Testpatient^Patient{n}", *extra]


def join(*parts: str | list[str], sep: str = "\r") -> str:
    lines: list[str] = []
    for part in parts:
        lines.extend([part] if isinstance(part, str) else part)
    return sep.join(lines) + sep


def ids(messages: list[Message]) -> list[str]:
    return [m.control_id for m in messages]


def test_file_with_one_batch_of_three() -> None:
    data = join(FHS, BHS, msg(1), msg(2), msg(3), "BTS|3", "FTS|1")
    batch = parse_batch(data)
    assert batch.file_header is not None and batch.file_header.get(9) == "file-001"
    assert batch.file_trailer is not None and batch.file_trailer.get(1) == "1"
    assert len(batch.batches) == 1
    group = batch.batches[0]
    assert group.header is not None and group.header.get(3) == "SENDAPP"
    assert group.trailer is not None and group.trailer.get(1) == "3"
    assert ids(group.messages) == ["MSG1", "MSG2", "MSG3"]
    assert ids(batch.messages) == ["MSG1", "MSG2", "MSG3"]
    assert batch.messages[1].get("PID-5.2") == "Patient2"


def test_two_batches() -> None:
    data = join(FHS, BHS, msg(1), msg(2), "BTS|2", BHS, msg(3), "BTS|1", "FTS|2")
    batch = parse_batch(data)
    assert [ids(g.messages) for g in batch.batches] == [["MSG1", "MSG2"], ["MSG3"]]
    assert ids(batch.messages) == ["MSG1", "MSG2", "MSG3"]


def test_batches_without_file_envelope() -> None:
    batch = parse_batch(join(BHS, msg(1), "BTS|1", BHS, msg(2), "BTS|1"))
    assert batch.file_header is None and batch.file_trailer is None
    assert [ids(g.messages) for g in batch.batches] == [["MSG1"], ["MSG2"]]


def test_back_to_back_messages_without_envelope() -> None:
    batch = parse_batch(join(msg(1), msg(2), msg(3, extra=("NTE|1||note",))))
    assert batch == Batch(batches=[BatchGroup(messages=batch.messages)])
    assert ids(batch.messages) == ["MSG1", "MSG2", "MSG3"]
    assert batch.messages[2].get("NTE-3") == "note"


def test_file_envelope_around_messages_without_bhs() -> None:
    batch = parse_batch(join(FHS, msg(1), msg(2), "FTS|1"))
    assert len(batch.batches) == 1 and batch.batches[0].header is None
    assert ids(batch.messages) == ["MSG1", "MSG2"]


def test_empty_batches_and_empty_file() -> None:
    batch = parse_batch(join(FHS, BHS, "BTS|0", "FTS|1"))
    assert len(batch.batches) == 1 and batch.messages == []
    assert parse_batch(join(FHS, "FTS|0")).batches == []


def test_counts_that_are_not_valued_are_not_checked() -> None:
    batch = parse_batch(join(FHS, BHS, msg(1), msg(2), "BTS", "FTS||comment"))
    assert ids(batch.messages) == ["MSG1", "MSG2"]


@pytest.mark.parametrize("sep", ["\r", "\n", "\r\n"])
def test_terminators_bom_and_mllp(sep: str) -> None:
    text = join(FHS, BHS, msg(1), msg(2), "BTS|2", "FTS|1", sep=sep)
    data = b"\xef\xbb\xbf\x0b" + text.encode() + b"\x1c\r" + sep.encode() * 3
    assert ids(parse_batch(data).messages) == ["MSG1", "MSG2"]
    assert ids(list(iter_messages(data))) == ["MSG1", "MSG2"]


def test_each_message_is_decoded_in_its_own_charset() -> None:
    latin = join(msg(1, charset="8859/1")).encode().replace(b"Patient1", b"Ren\xe9e")
    utf8 = join(msg(2, charset="UNICODE UTF-8")).replace("Patient2", "Zoë").encode()
    data = join(FHS, BHS).encode() + latin + utf8 + join("BTS|2", "FTS|1").encode()
    names = [m.get("PID-5.2") for m in parse_batch(data).messages]
    assert names == ["Renée", "Zoë"]


def test_envelopes_read_their_own_delimiters() -> None:
    data = join("FHS#$%!?#FILEAPP#FAC$X", BHS, msg(1), "BTS|1", "FTS#1#done")
    batch = parse_batch(data)
    assert batch.file_header is not None and batch.file_trailer is not None
    assert batch.file_header.delimiters.field == "#"
    assert batch.file_header.get(3) == "FILEAPP"
    assert batch.file_header.get(4, comp=2) == "X"
    assert batch.file_trailer.get(2) == "done"


def test_bad_envelope_delimiters() -> None:
    with pytest.raises(HL7ParseError) as info:
        parse_batch(join("FHS|^~", msg(1), "FTS|1"))
    assert info.value.where == "FHS-2"
    with pytest.raises(HL7ParseError) as info:
        parse_batch(join("BHS", msg(1), "BTS|1"))
    assert info.value.where == "BHS-1"


# -- count checks ----------------------------------------------------------------------------


def test_bts_count_mismatch() -> None:
    with pytest.raises(HL7ParseError) as info:
        parse_batch(join(FHS, BHS, msg(1), msg(2), "BTS|3", "FTS|1"))
    assert info.value.where == "BTS-1"
    assert "3" in info.value.message and "2" in info.value.message
    assert "line 2" in info.value.message  # the BHS that opened the batch


def test_fts_count_mismatch() -> None:
    with pytest.raises(HL7ParseError) as info:
        parse_batch(join(FHS, BHS, msg(1), "BTS|1", BHS, msg(2), "BTS|1", "FTS|1"))
    assert info.value.where == "FTS-1"
    assert "says 1 batches" in info.value.message and "holds 2" in info.value.message


@pytest.mark.parametrize(("trailer", "where"), [("BTS|two", "BTS-1"), ("BTS|-1", "BTS-1")])
def test_count_that_is_not_a_number(trailer: str, where: str) -> None:
    with pytest.raises(HL7ParseError) as info:
        parse_batch(join(BHS, msg(1), trailer))
    assert info.value.where == where


# -- envelope structure errors ---------------------------------------------------------------


def test_bhs_without_bts_at_end_of_file() -> None:
    with pytest.raises(HL7ParseError) as info:
        parse_batch(join(BHS, msg(1), msg(2)))
    assert info.value.where == "end of file"
    assert "BHS at line 1 has no BTS" in info.value.message


def test_bhs_without_bts_before_the_next_bhs() -> None:
    with pytest.raises(HL7ParseError) as info:
        parse_batch(join(FHS, BHS, msg(1), BHS, msg(2), "BTS|1", "FTS|2"))
    assert info.value.where == "line 5 (BHS)"
    assert "line 2" in info.value.message


def test_bhs_without_bts_before_fts() -> None:
    with pytest.raises(HL7ParseError) as info:
        parse_batch(join(FHS, BHS, msg(1), "FTS|1"))
    assert info.value.where == "line 5 (FTS)"
    assert "no BTS" in info.value.message


def test_message_after_fts() -> None:
    with pytest.raises(HL7ParseError) as info:
        parse_batch(join(FHS, BHS, msg(1), "BTS|1", "FTS|1", msg(2)))
    assert info.value.where == "line 7"
    assert "FTS at line 6" in info.value.message


def test_envelope_after_fts() -> None:
    with pytest.raises(HL7ParseError) as info:
        parse_batch(join(FHS, "FTS|0", BHS, "BTS|0"))
    assert info.value.where == "line 3 (BHS)"


def test_fts_without_fhs() -> None:
    with pytest.raises(HL7ParseError) as info:
        parse_batch(join(BHS, msg(1), "BTS|1", "FTS|1"))
    assert info.value.where == "line 5 (FTS)"
    assert "without an FHS" in info.value.message


def test_fhs_without_fts() -> None:
    with pytest.raises(HL7ParseError) as info:
        parse_batch(join(FHS, BHS, msg(1), "BTS|1"))
    assert info.value.where == "end of file"
    assert "no FTS" in info.value.message


def test_fhs_not_first() -> None:
    with pytest.raises(HL7ParseError) as info:
        parse_batch(join(BHS, "BTS|0", FHS, "FTS|1"))
    assert info.value.where == "line 3 (FHS)"


def test_bts_without_bhs() -> None:
    with pytest.raises(HL7ParseError) as info:
        parse_batch(join(msg(1), "BTS|1"))
    assert info.value.where == "line 3 (BTS)"


@pytest.mark.parametrize(
    ("parts", "line"),
    [
        ((BHS, msg(1), "BTS|1", msg(2)), 5),  # message after the batch
        ((msg(1), BHS, msg(2), "BTS|1"), 1),  # message before the first batch
    ],
)
def test_message_outside_a_batch(parts: tuple[str | list[str], ...], line: int) -> None:
    with pytest.raises(HL7ParseError) as info:
        parse_batch(join(*parts))
    assert info.value.where == f"line {line}"
    assert "outside any BHS" in info.value.message


def test_empty_input() -> None:
    for data in (b"", "", "\r\n\r\n", b"\xef\xbb\xbf\x0b\x1c\r"):
        with pytest.raises(HL7ParseError, match="no FHS, BHS or MSH"):
            parse_batch(data)
    assert list(iter_messages(b"")) == []


# -- message errors name their line ------------------------------------------------------


def test_bad_message_names_its_line() -> None:
    data = join(FHS, BHS, msg(1), msg(2, extra=("garbage here",)), "BTS|2", "FTS|1")
    with pytest.raises(HL7ParseError) as info:
        parse_batch(data)
    assert info.value.where == "message at line 5, segment 3"
    with pytest.raises(HL7ParseError) as info:
        list(iter_messages(data))
    assert info.value.where == "message at line 5, segment 3"


def test_text_before_the_first_message_names_its_line() -> None:
    with pytest.raises(HL7ParseError) as info:
        parse_batch("\r\nnot hl7\r" + join(msg(1)))
    assert info.value.where == "message at line 2, segment 1"
    assert "no MSH segment" in info.value.message


def test_undecodable_message_names_its_line() -> None:
    bad = join(msg(2, charset="ASCII")).encode().replace(b"Patient2", b"Ren\xe9e")
    data = join(msg(1)).encode() + b"\r\n" + bad
    with pytest.raises(HL7DecodeError) as info:
        parse_batch(data)
    assert info.value.where == "message at line 4, segment 2 (PID)"


def test_undecodable_envelope_names_its_line() -> None:
    data = join(FHS, BHS + "|Caf\xe9", msg(1), "BTS|1", "FTS|1").encode("latin-1")
    with pytest.raises(HL7DecodeError) as info:
        parse_batch(data)
    assert info.value.where == "line 2 (BHS)"
    assert parse_batch(data, default_charset="latin-1").batches[0].header is not None


# -- streaming -------------------------------------------------------------------------------


def test_iter_messages_is_lazy() -> None:
    data = join(msg(1), "MSH|", msg(3))
    it = iter_messages(data)
    assert next(it).control_id == "MSG1"  # read before the bad second message is reached
    with pytest.raises(HL7ParseError) as info:
        next(it)
    assert info.value.where == "message at line 3, MSH-2"


def test_iter_messages_skips_envelopes_without_checking_them() -> None:
    data = join(FHS, BHS, msg(1), msg(2), "BTS|99", "FTS|99")
    assert ids(list(iter_messages(data))) == ["MSG1", "MSG2"]
    with pytest.raises(HL7ParseError):
        parse_batch(data)


def test_large_file() -> None:
    count = 20_000
    body = b"".join(join(msg(n)).encode() for n in range(count))
    data = join(FHS, BHS).encode() + body + join(f"BTS|{count}", "FTS|1").encode()
    seen = 0
    last = ""
    for m in iter_messages(data):
        seen += 1
        last = m.control_id
    assert (seen, last) == (count, f"MSG{count - 1}")
    batch = parse_batch(data)
    assert len(batch.messages) == count
    assert batch.messages[12_345].get("PID-5.2") == "Patient12345"
