"""X12 interchange envelopes: ISA/IEA, GS/GE and ST/SE (X12.5 and X12.6; 005010 control segments).

:func:`parse_interchanges` reads text or bytes into :class:`Interchange` → :class:`FunctionalGroup`
→ :class:`Transaction` → :class:`~engine.x12.segments.Segment`. It takes the delimiters from the
fixed-width ISA, read by :mod:`engine.x12.isa` (element separator = the 4th character, repetition
separator = ISA11, component separator = ISA16, segment terminator = the character after ISA16,
which may be ``~``, a line break or 0x1D), tolerates a UTF-8 byte order mark and white space
(CRLF or LF line breaks, tabs, indentation) between segments, and checks what the envelope
promises:

* the ISA is 106 characters (each of ISA01-ISA16 its fixed width), ISA13 nine digits;
* IEA01 = the number of GS, IEA02 = ISA13 (TA105 021, 001);
* GE01 = the number of ST in the group, GE02 = GS06 (AK905 5, 4);
* SE01 = the number of segments from ST to SE inclusive, SE02 = ST02 (IK502 4, 3).

A fault raises :class:`~engine.x12.errors.X12Error` naming the segment, its position and the
element: ``segment 16 (SE): SE01 says 22 segments, the transaction has 16``. With
``strict=False`` the count and control-number faults (SE01, SE02, GE01, GE02, GS06, IEA01,
IEA02) become ``Interchange.warnings`` instead, and ``Interchange.faults`` keeps each as the error
it would have been, for an acknowledgment that notes it (IK5/AK9/TA1 ``E``). A structure we
cannot follow (no ISA, a short ISA, an ST without SE, no IEA, data cut off) is refused either way.

Which to use: :func:`parse_interchanges` defaults to ``strict=True`` (a sender checking what it
built wants every fault raised); the readers of what a trading partner sent us
(:func:`engine.x12.x271.read_271`, :func:`engine.x12.fhir.interchange_to_fhir`) default to
``strict=False``, because payers do send 271s with a wrong SE01 and the answer inside is still
the answer (the oopfactory validation samples have SE01 22 for 5 to 29 segments).

Loops are not this module's business: the 270/271 readers derive them from HL levels.

:func:`build_interchange` writes an interchange around transaction bodies, computing SE01, GE01
and IEA01 and refusing data that contains a delimiter.

Incomplete: no security segments (S3S/S4S); ISA09/ISA10 are checked for digits, not calendars.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from engine.x12.errors import X12Error
from engine.x12.isa import WHITESPACE, read_isa
from engine.x12.segments import DEFAULT_DELIMITERS, Delimiters, Element, Segment, format_segment

__all__ = [
    "FunctionalGroup",
    "Interchange",
    "SegmentData",
    "Transaction",
    "build_interchange",
    "parse_interchange",
    "parse_interchanges",
]

_BOM = "\ufeff"


#: ST01 → the GS01 functional identifier code its group should carry
_FUNCTIONAL_IDS = {
    "270": "HS",
    "271": "HB",
    "276": "HR",
    "277": "HN",
    "278": "HI",
    "835": "HP",
    "837": "HC",
    "997": "FA",
    "999": "FA",
}


@dataclass(eq=False)
class Transaction:
    """One transaction set: ``segments`` runs from ST to SE inclusive."""

    segments: list[Segment]

    @property
    def st(self) -> Segment:
        return self.segments[0]

    @property
    def se(self) -> Segment:
        return self.segments[-1]

    @property
    def id(self) -> str:
        """ST01, the transaction set identifier code (``270``, ``271``, ``999``)."""
        return self.st.get(1)

    @property
    def control_number(self) -> str:
        """ST02."""
        return self.st.get(2)

    @property
    def convention(self) -> str:
        """ST03, the implementation convention reference (``005010X279A1``)."""
        return self.st.get(3)

    @property
    def body(self) -> list[Segment]:
        """The segments between ST and SE."""
        return self.segments[1:-1]


@dataclass(eq=False)
class FunctionalGroup:
    """GS, its transaction sets, GE."""

    gs: Segment
    transactions: list[Transaction]
    ge: Segment

    @property
    def functional_id(self) -> str:
        """GS01 (``HS`` eligibility inquiry, ``HB`` eligibility response, ``FA`` acknowledgment)."""
        return self.gs.get(1)

    @property
    def sender(self) -> str:
        """GS02, the application sender's code."""
        return self.gs.get(2)

    @property
    def receiver(self) -> str:
        """GS03, the application receiver's code."""
        return self.gs.get(3)

    @property
    def control_number(self) -> str:
        """GS06."""
        return self.gs.get(6)

    @property
    def version(self) -> str:
        """GS08 (``005010X279A1``)."""
        return self.gs.get(8)


@dataclass(eq=False)
class Interchange:
    """ISA, any TA1 acknowledgments, the functional groups, IEA.

    ``warnings`` lists what was tolerated (``segment 2 (GS): GS01 'XX' ...``), each naming the
    segment. ``faults`` holds the envelope faults among them (counts, control numbers) as the
    :class:`~engine.x12.errors.X12Error` a strict read would have raised, with the code an
    acknowledgment carries for each (see :mod:`engine.x12.acknowledge`).
    """

    isa: Segment
    groups: list[FunctionalGroup]
    iea: Segment
    delimiters: Delimiters
    ta1: list[Segment] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    faults: list[X12Error] = field(default_factory=list)

    @property
    def sender_qualifier(self) -> str:
        return self.isa.get(5)

    @property
    def sender_id(self) -> str:
        """ISA06 without its padding."""
        return self.isa.get(6).rstrip()

    @property
    def receiver_qualifier(self) -> str:
        return self.isa.get(7)

    @property
    def receiver_id(self) -> str:
        """ISA08 without its padding."""
        return self.isa.get(8).rstrip()

    @property
    def date(self) -> str:
        """ISA09, YYMMDD."""
        return self.isa.get(9)

    @property
    def time(self) -> str:
        """ISA10, HHMM."""
        return self.isa.get(10)

    @property
    def version(self) -> str:
        """ISA12 (``00501``)."""
        return self.isa.get(12)

    @property
    def control_number(self) -> str:
        """ISA13."""
        return self.isa.get(13)

    @property
    def ack_requested(self) -> bool:
        """ISA14 = 1: the sender asks for a TA1."""
        return self.isa.get(14) == "1"

    @property
    def usage(self) -> str:
        """ISA15: ``P`` production, ``T`` test."""
        return self.isa.get(15)

    def transactions(self) -> Iterator[Transaction]:
        for group in self.groups:
            yield from group.transactions

    def segments(self) -> Iterator[Segment]:
        """Every segment in order, ISA to IEA."""
        yield self.isa
        yield from self.ta1
        for group in self.groups:
            yield group.gs
            for tx in group.transactions:
                yield from tx.segments
            yield group.ge
        yield self.iea

    def to_x12(self, *, line_breaks: bool = False) -> str:
        """The interchange as text with its own delimiters; a line break after each segment
        when ``line_breaks`` (and the terminator is not itself one)."""
        d = self.delimiters
        sep = "\n" if line_breaks and d.segment not in "\r\n" else ""
        return "".join(seg.to_x12(d) + sep for seg in self.segments())


# -- reading -------------------------------------------------------------------------------------


def _decode(data: str | bytes) -> str:
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise X12Error(
                f"byte {exc.start} (0x{data[exc.start]:02X}) is not UTF-8/ASCII; X12 data is text",
                ack_code="022",
                ack_level="TA1",
            ) from exc
    else:
        text = data
    return text[1:] if text.startswith(_BOM) else text


#: segments that cannot be inside a transaction set: meeting one before SE means SE is missing
_CLOSERS = frozenset(("GE", "IEA", "ST", "GS", "ISA"))


class _Reader:
    """Walks the segments of one interchange; ``fault`` raises or records per ``strict``."""

    def __init__(self, segments: list[Segment], strict: bool, warnings: list[str]) -> None:
        self.segments = segments
        self.i = 0
        self.strict = strict
        self.warnings = warnings
        self.faults: list[X12Error] = []

    def fault(self, seg: Segment, element: int, message: str, code: str, level: str) -> None:
        err = X12Error(
            message,
            segment_id=seg.id,
            position=seg.position,
            element=element,
            ack_code=code,
            ack_level=level,
        )
        if self.strict:
            raise err
        self.warnings.append(str(err))
        self.faults.append(err)

    def next(self, expected: str) -> Segment:
        if self.i >= len(self.segments):
            last = self.segments[-1] if self.segments else None
            raise X12Error(
                f"the data ends {'after this segment' if last else 'after the ISA'}; "
                f"expected {expected}",
                segment_id=last.id if last else None,
                position=last.position if last else None,
                ack_code="023",
                ack_level="TA1",
            )
        seg = self.segments[self.i]
        self.i += 1
        return seg

    def count(self, seg: Segment, element: int, noun: str, container: str, actual: int) -> None:
        value = seg.get(element)
        name = f"{seg.id}{element:02d}"
        code, level = {"SE": ("4", "IK5"), "GE": ("5", "AK9"), "IEA": ("021", "TA1")}[seg.id]
        if not value.isdigit():
            message = f"{name} {value!r} is not a count; the {container} has {actual} {noun}"
        elif int(value) != actual:
            message = f"{name} says {int(value)} {noun}, the {container} has {actual}"
        else:
            return
        self.fault(seg, element, message, code, level)

    def match(
        self, trailer: Segment, el: int, header: Segment, hel: int, code: str, level: str
    ) -> None:
        value, expected = trailer.get(el), header.get(hel)
        if value != expected:
            message = (
                f"{trailer.id}{el:02d} {value!r} does not match {header.id}{hel:02d} "
                f"{expected!r} (segment {header.position})"
            )
            self.fault(trailer, el, message, code, level)

    def transaction(self, st: Segment) -> Transaction:
        segs = [st]
        segments = self.segments
        while True:
            if self.i >= len(segments):
                self.next("SE")
            seg = segments[self.i]
            sid = seg.elements[0]
            if sid in _CLOSERS:
                raise X12Error(
                    f"transaction {st.get(1)} {st.get(2)!r} (segment {st.position}) has no SE "
                    f"before this {seg.id}",
                    segment_id=seg.id,
                    position=seg.position,
                    ack_code="2",
                    ack_level="IK5",
                )
            self.i += 1
            segs.append(seg)
            if sid == "SE":
                break
        se = segs[-1]
        self.count(se, 1, "segments", "transaction", len(segs))
        self.match(se, 2, st, 2, "3", "IK5")
        return Transaction(segs)

    def group(self, gs: Segment) -> FunctionalGroup:
        if not gs.get(6).isdigit():
            self.fault(gs, 6, f"GS06 {gs.get(6)!r} is not a group control number", "6", "AK9")
        transactions: list[Transaction] = []
        while True:
            seg = self.next("ST or GE")
            if seg.id == "ST":
                tx = self.transaction(seg)
                expected = _FUNCTIONAL_IDS.get(tx.id)
                if expected and gs.get(1) != expected:
                    self.warnings.append(
                        f"{gs.where()}: GS01 {gs.get(1)!r} is not {expected}, the functional "
                        f"identifier of a {tx.id}"
                    )
                if tx.convention and gs.get(8) and tx.convention != gs.get(8):
                    self.warnings.append(
                        f"{seg.where()}: ST03 {tx.convention!r} differs from GS08 {gs.get(8)!r}"
                    )
                transactions.append(tx)
            elif seg.id == "GE":
                self.count(seg, 1, "transaction sets", "group", len(transactions))
                self.match(seg, 2, gs, 6, "4", "AK9")
                return FunctionalGroup(gs, transactions, seg)
            else:
                raise X12Error(
                    f"expected ST or GE in the group that starts at {gs.where()}, found {seg.id}",
                    segment_id=seg.id,
                    position=seg.position,
                    ack_code="3",
                    ack_level="AK9",
                )


#: segment IDs already found well-formed (X12 has a few hundred; a cache saves the checks)
_GOOD_IDS: set[str] = set()


def _segment_id_ok(sid: str) -> bool:
    if sid in _GOOD_IDS:
        return True
    ok = _well_formed(sid)
    if ok:
        _GOOD_IDS.add(sid)
    return ok


def _well_formed(sid: str) -> bool:
    return (
        2 <= len(sid) <= 3
        and sid.isascii()
        and sid.isalnum()
        and sid[0].isalpha()
        and (sid.isupper())
    )


def _split_segments(text: str, pos: int, d: Delimiters) -> tuple[list[Segment], int]:
    """The segments after the ISA up to and including the IEA (numbered from 2, the ISA being
    1), and where the text after that IEA starts."""
    pieces = text[pos:].split(d.segment)
    segments: list[Segment] = []
    position = 1
    consumed = pos
    element = d.element
    for piece in pieces:
        consumed += len(piece) + 1
        stripped = piece.lstrip(WHITESPACE)
        if not stripped:
            continue
        position += 1
        elements = stripped.split(element)
        sid = elements[0]
        if sid not in _GOOD_IDS and not _segment_id_ok(sid):
            raise X12Error(
                f"{sid[:20]!r} is not a segment ID (2-3 upper-case letters and digits)",
                position=position,
                ack_code="022",
                ack_level="TA1",
            )
        segments.append(Segment(elements, position, d))
        if sid == "IEA":
            break
    return segments, min(consumed, len(text))


def _parse_one(text: str, start: int, strict: bool) -> tuple[Interchange, int]:
    header = read_isa(text, start, strict)
    isa, d, warnings = header.isa, header.delimiters, header.warnings
    segments, consumed = _split_segments(text, header.end, d)
    reader = _Reader(segments, strict, warnings)
    reader.faults.extend(header.faults)
    ta1: list[Segment] = []
    groups: list[FunctionalGroup] = []
    while True:
        seg = reader.next("GS, TA1 or IEA")
        if seg.id == "GS":
            groups.append(reader.group(seg))
        elif seg.id == "TA1" and not groups:
            ta1.append(seg)
        elif seg.id == "TA1":
            reader.fault(
                seg,
                1,
                "a TA1 after a functional group; X12 puts TA1s between the ISA and the first GS",
                "024",
                "TA1",
            )
            ta1.append(seg)
        elif seg.id == "IEA":
            break
        else:
            raise X12Error(
                f"expected GS, TA1 or IEA at interchange level, found {seg.id}",
                segment_id=seg.id,
                position=seg.position,
                ack_code="024",
                ack_level="TA1",
            )
    reader.count(seg, 1, "functional groups", "interchange", len(groups))
    reader.match(seg, 2, isa, 13, "001", "TA1")
    interchange = Interchange(isa, groups, seg, d, ta1, warnings, reader.faults)
    return interchange, consumed


def parse_interchanges(data: str | bytes, *, strict: bool = True) -> list[Interchange]:
    """Every interchange in ``data`` (a file may hold several ISA ... IEA in a row)."""
    text = _decode(data)
    out: list[Interchange] = []
    pos = 0
    n = len(text)
    while True:
        while pos < n and text[pos] in WHITESPACE:
            pos += 1
        if pos >= n:
            break
        if out and not text.startswith("ISA", pos):
            raise X12Error(
                f"data after IEA ({out[-1].iea.where()}) is not another interchange: "
                f"{text[pos : pos + 20]!r}",
                ack_code="022",
                ack_level="TA1",
            )
        interchange, pos = _parse_one(text, pos, strict)
        out.append(interchange)
    if not out:
        raise X12Error("no interchange: the data is empty", ack_code="023", ack_level="TA1")
    return out


def parse_interchange(data: str | bytes, *, strict: bool = True) -> Interchange:
    """The one interchange in ``data``; refuses data holding more than one."""
    interchanges = parse_interchanges(data, strict=strict)
    if len(interchanges) > 1:
        raise X12Error(
            f"the data holds {len(interchanges)} interchanges; expected one",
            ack_code="022",
            ack_level="TA1",
        )
    return interchanges[0]


# -- building ------------------------------------------------------------------------------------

#: A segment to build: its ID and its elements (see :data:`~engine.x12.segments.Element`).
SegmentData = tuple[str, Sequence[Element]]


def build_interchange(
    transactions: Sequence[Sequence[SegmentData]],
    *,
    transaction_set: str,
    convention: str,
    functional_id: str,
    sender_id: str,
    receiver_id: str,
    control_number: int,
    now: datetime,
    sender_qualifier: str = "ZZ",
    receiver_qualifier: str = "ZZ",
    usage: str = "P",
    ack_requested: bool = False,
    delimiters: Delimiters = DEFAULT_DELIMITERS,
) -> str:
    """An interchange of one functional group holding ``transactions`` (bodies, ST/SE added).

    ISA13 and GS06 are ``control_number`` (1 to 999,999,999); ST02 counts from ``0001``. SE01,
    GE01 and IEA01 are computed. ISA06/ISA08 are padded to their fixed 15 characters.
    """
    _check_envelope_ids(
        control_number, sender_qualifier, sender_id, receiver_qualifier, receiver_id
    )
    if usage not in ("P", "T"):
        raise X12Error(f"ISA15 {usage!r} is not P or T", segment_id="ISA")
    d = delimiters
    isa_elements: list[Element] = [
        "00",
        " " * 10,
        "00",
        " " * 10,
        sender_qualifier,
        sender_id.ljust(15),
        receiver_qualifier,
        receiver_id.ljust(15),
        now.strftime("%y%m%d"),
        now.strftime("%H%M"),
        d.repetition,
        "00501",
        f"{control_number:09d}",
        "1" if ack_requested else "0",
        usage,
        d.component,
    ]
    gs_elements: list[Element] = [
        functional_id,
        sender_id,
        receiver_id,
        now.strftime("%Y%m%d"),
        now.strftime("%H%M"),
        str(control_number),
        "X",
        convention,
    ]
    out = [
        # ISA11/ISA16 *are* delimiters: written as they are, not escaped or refused
        format_segment("ISA", isa_elements, Delimiters(d.element, "", "", d.segment)),
        format_segment("GS", gs_elements, d),
    ]
    for n, body in enumerate(transactions, start=1):
        st02 = f"{n:04d}"
        out.append(format_segment("ST", [transaction_set, st02, convention], d))
        out.extend(format_segment(sid, elements, d) for sid, elements in body)
        out.append(format_segment("SE", [str(len(body) + 2), st02], d))
    out.append(format_segment("GE", [str(len(transactions)), str(control_number)], d))
    out.append(format_segment("IEA", ["1", f"{control_number:09d}"], d))
    return "".join(out)


def _check_envelope_ids(
    control_number: int,
    sender_qualifier: str,
    sender_id: str,
    receiver_qualifier: str,
    receiver_id: str,
) -> None:
    """ISA13 within 1 to 999,999,999, and ISA05-ISA08 within their fixed widths."""
    if not 0 < control_number <= 999_999_999:
        raise X12Error(f"control number {control_number} is not 1 to 999999999", segment_id="ISA")
    for name, value, width in (
        ("ISA05", sender_qualifier, 2),
        ("ISA06", sender_id, 15),
        ("ISA07", receiver_qualifier, 2),
        ("ISA08", receiver_id, 15),
    ):
        if not value or len(value) > width:
            raise X12Error(f"{name} {value!r} must be 1 to {width} characters", segment_id="ISA")
