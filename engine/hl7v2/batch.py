"""HL7v2 batch files: many messages in one file (HL7 v2.5.1 chapter 2, section 2.10.3).

The batch protocol wraps messages in optional envelopes::

    [FHS]                 file header
    { [BHS]               batch header
      { MSH ... }         zero or more messages
      [BTS] }             batch trailer; BTS-1 = number of messages in the batch
    [FTS]                 file trailer;  FTS-1 = number of batches in the file

Files without any envelope (messages back to back, as many interfaces write them) are read too.
:func:`parse_batch` reads the whole file and checks its envelope; :func:`iter_messages` only yields
the messages, one at a time, for large files and for callers that do not care about envelopes.

FHS and BHS carry their own delimiters in FHS-1/FHS-2 and BHS-1/BHS-2 (sections 2.15.4, 2.15.2); BTS
and FTS are read with those of their header. Each message is decoded in the charset of its own
MSH-18; envelope segments have no charset field and are decoded in ``default_charset``.

Rules enforced here (the standard's grammar makes every envelope optional; a file that opens one
must close it, or it was cut short):

* FHS only as the first segment; FTS only as the last, and only after an FHS;
* every BHS is closed by a BTS before the next BHS, the FTS or the end of the file;
* in a file that uses BHS, every message is inside a BHS ... BTS;
* BTS-1, when valued, equals the number of messages in its batch; FTS-1, when valued, the number of
  batches (a file without BHS holds one batch).

Errors name the line of the file (1-based; CRLF counts as one terminator), so an operator can find
the message: ``message at line 41, segment 3: ...``.

Incomplete: BTS-3 (batch totals) is not checked; FHS-9/FHS-11 (file name, control ID) are not
interpreted.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from engine.errors import HL7DecodeError, HL7Error, HL7ParseError
from engine.hl7v2.codec import (
    Delimiters,
    Message,
    Segment,
    parse_message,
    split_messages,
    split_units,
)

__all__ = ["Batch", "BatchGroup", "iter_messages", "parse_batch"]


@dataclass
class BatchGroup:
    """One batch: BHS, its messages, BTS (``header``/``trailer`` None for a file without BHS)."""

    header: Segment | None = None
    trailer: Segment | None = None
    messages: list[Message] = field(default_factory=list)


@dataclass
class Batch:
    """A batch file: optional FHS/FTS around one or more batches."""

    file_header: Segment | None = None
    file_trailer: Segment | None = None
    batches: list[BatchGroup] = field(default_factory=list)

    @property
    def messages(self) -> list[Message]:
        """Every message of every batch, in file order."""
        return [m for group in self.batches for m in group.messages]


def iter_messages(data: bytes | str, *, default_charset: str = "utf-8") -> Iterator[Message]:
    """Yield each message of a file (batch envelopes skipped, not checked), parsing one at a time.

    Raises :class:`HL7ParseError` / :class:`HL7DecodeError` at the first message that cannot be
    read, naming its line in the file.
    """
    for line, text in split_messages(data):
        yield _parse_at(line, text, default_charset)


def parse_batch(data: bytes | str, *, default_charset: str = "utf-8") -> Batch:
    """Read a batch file (or back-to-back messages) and check its envelope and counts."""
    reader = _Reader(default_charset)
    for line, envelope, text in split_units(data):
        if envelope:
            reader.envelope(line, _decode_line(line, text, default_charset))
        else:
            reader.message(line, text)
    return reader.finish()


class _Reader:
    """The state of :func:`parse_batch` while it walks the units of a file."""

    def __init__(self, default_charset: str) -> None:
        self.charset = default_charset
        self.batch = Batch()
        self.open: BatchGroup | None = None  # the BHS ... BTS being read
        self.open_line = 0
        self.loose_line = 0  # line of the first message outside any BHS
        self.seen_bhs = False
        self.fts_line = 0
        self.started = False

    def envelope(self, line: int, text: str) -> None:
        tag = text[:3]
        where = f"line {line} ({tag})"
        if self.fts_line:
            raise HL7ParseError(
                f"{tag} after the FTS at line {self.fts_line}: FTS must be the last segment",
                where=where,
            )
        first = not self.started
        self.started = True
        if tag == "FHS":
            if not first:
                raise HL7ParseError("FHS must be the first segment of a batch file", where=where)
            d = Delimiters.from_header(text, where="FHS")
            self.batch.file_header = Segment(text, d, self.charset)
        elif tag == "BHS":
            self._close_check(where)
            if self.loose_line:
                raise HL7ParseError(self._loose_text(), where=f"line {self.loose_line}")
            d = Delimiters.from_header(text, where="BHS")
            self.open = BatchGroup(header=Segment(text, d, self.charset))
            self.open_line = line
            self.seen_bhs = True
            self.batch.batches.append(self.open)
        elif tag == "BTS":
            group = self.open
            if group is None or group.header is None:
                raise HL7ParseError("BTS without a BHS before it", where=where)
            group.trailer = Segment(text, group.header.delimiters, self.charset)
            _check_count(group.trailer, "BTS-1", len(group.messages), "messages", self.open_line)
            self.open = None
        else:  # FTS
            header = self.batch.file_header
            if header is None:
                raise HL7ParseError("FTS without an FHS at the start of the file", where=where)
            self._close_check(where)
            self.batch.file_trailer = Segment(text, header.delimiters, self.charset)
            self.fts_line = line
            _check_count(self.batch.file_trailer, "FTS-1", len(self.batch.batches), "batches", 1)

    def message(self, line: int, text: bytes | str) -> None:
        if self.fts_line:
            raise HL7ParseError(
                f"a message follows the FTS at line {self.fts_line}: FTS must be the last segment",
                where=f"line {line}",
            )
        self.started = True
        msg = _parse_at(line, text, self.charset)
        group = self.open
        if group is None:
            if self.seen_bhs:
                self.loose_line = line
                raise HL7ParseError(self._loose_text(), where=f"line {line}")
            if not self.loose_line:
                self.loose_line = line
                self.batch.batches.append(BatchGroup())
            group = self.batch.batches[-1]
        group.messages.append(msg)

    def finish(self) -> Batch:
        if not self.started:
            raise HL7ParseError("empty batch file: no FHS, BHS or MSH segment")
        self._close_check("end of file")
        if self.batch.file_header is not None and self.batch.file_trailer is None:
            raise HL7ParseError(
                "the file starts with FHS but has no FTS (file trailer): it may be cut short",
                where="end of file",
            )
        return self.batch

    def _close_check(self, where: str) -> None:
        if self.open is not None:
            raise HL7ParseError(
                f"the batch opened by the BHS at line {self.open_line} has no BTS (batch trailer)",
                where=where,
            )

    def _loose_text(self) -> str:
        return (
            f"the message at line {self.loose_line} is outside any BHS ... BTS batch, "
            "in a file that uses batch headers"
        )


def _check_count(trailer: Segment, where: str, actual: int, what: str, header_line: int) -> None:
    """Compare BTS-1 / FTS-1 (type NM) with the count found, when the sender valued it."""
    raw = trailer.get(1).strip()
    if not raw:
        return
    if not (raw.isascii() and raw.isdigit()):
        raise HL7ParseError(f"{raw!r} is not a count of {what}", where=where)
    declared = int(raw)
    if declared != actual:
        scope = "file" if where.startswith("FTS") else f"batch (BHS at line {header_line})"
        raise HL7ParseError(
            f"{where} says {declared} {what} but the {scope} holds {actual}", where=where
        )


def _decode_line(line: int, text: bytes | str, charset: str) -> str:
    if isinstance(text, str):
        return text
    try:
        return text.decode(charset)
    except UnicodeDecodeError as exc:
        raise HL7DecodeError(
            f"byte 0x{text[exc.start]:02X} is not valid {charset} (envelope segments are read in "
            "the default charset)",
            where=f"line {line} ({text[:3].decode('latin-1')})",
        ) from exc
    except LookupError as exc:
        raise HL7DecodeError(f"unknown default charset {charset!r}") from exc


def _parse_at(line: int, text: bytes | str, charset: str) -> Message:
    """Parse one message of a file; an error names the message's line in the file."""
    try:
        return parse_message(text, default_charset=charset)
    except HL7Error as exc:
        where = f"message at line {line}" + (f", {exc.where}" if exc.where else "")
        raise type(exc)(exc.message, where=where) from exc
