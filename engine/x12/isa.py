"""The ISA interchange control header (X12.5; 005010): its fixed widths and the delimiters it names.

The ISA is the one segment read before its delimiters are known, so it is read by position:
the element separator is the 4th character, then sixteen elements of fixed width (ISA01-ISA16,
106 characters in all), ISA11 the repetition separator, ISA16 the component separator, and the
character after ISA16 the segment terminator. :func:`read_isa` reads it in these steps:

1. the element separator, and where each of the sixteen elements ends;
2. the widths (with ``strict=False`` an ISA of wrong widths is read by its separators instead);
3. the delimiters: segment terminator, ISA16, ISA11 (a letter there is the 4010 control
   standards identifier: no repetition separator);
4. ISA12 the version, then the control elements ISA13, ISA14, ISA15, ISA09 and ISA10.

A fault raises :class:`~engine.x12.errors.X12Error` with its TA105 note code (TA1 level).
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.x12.errors import X12Error
from engine.x12.segments import Delimiters, Segment

__all__ = ["ISA_LENGTH", "WHITESPACE", "IsaRead", "read_isa"]

#: what may stand between segments (line breaks, indentation) and never is a delimiter
WHITESPACE = " \t\r\n"
ISA_LENGTH = 106

#: ISA01-ISA16: (name, fixed width, TA105 note code for a fault in it)
_ISA_FIELDS: tuple[tuple[str, int, str], ...] = (
    ("authorization information qualifier", 2, "010"),
    ("authorization information", 10, "011"),
    ("security information qualifier", 2, "012"),
    ("security information", 10, "013"),
    ("interchange sender ID qualifier", 2, "005"),
    ("interchange sender ID", 15, "006"),
    ("interchange receiver ID qualifier", 2, "007"),
    ("interchange receiver ID", 15, "008"),
    ("interchange date", 6, "014"),
    ("interchange time", 4, "015"),
    ("repetition separator", 1, "022"),
    ("interchange control version number", 5, "017"),
    ("interchange control number", 9, "018"),
    ("acknowledgment requested", 1, "019"),
    ("interchange usage indicator", 1, "020"),
    ("component element separator", 1, "027"),
)


@dataclass(frozen=True, slots=True)
class IsaRead:
    """What :func:`read_isa` found: the segment, its delimiters, where the next segment starts
    (``end``), what was tolerated (``warnings``) and the faults a strict read would have raised."""

    isa: Segment
    delimiters: Delimiters
    end: int
    warnings: list[str]
    faults: list[X12Error]


def _isa_error(message: str, code: str, element: int | None = None) -> X12Error:
    return X12Error(
        message, segment_id="ISA", position=1, element=element, ack_code=code, ack_level="TA1"
    )


def read_isa(text: str, start: int, strict: bool = True) -> IsaRead:
    """The ISA at ``text[start:]``, the delimiters it names and where the next segment starts.

    With ``strict=False`` an ISA whose elements are not their fixed widths (a 14-character
    ISA08, as some senders pad) is read by its element separators, with a warning naming each
    element: the separators still say where each element ends, ISA16 is still one character
    and the terminator follows it."""
    sep = _element_separator(text, start)
    seps = _separator_positions(text, start, sep)
    values = [text[seps[k] + 1 : seps[k + 1]] for k in range(15)]
    values.append(text[seps[15] + 1 : seps[15] + 2])
    term = text[seps[15] + 2 : seps[15] + 3]
    end = seps[15] + 3
    warnings: list[str] = []
    faults: list[X12Error] = []
    _check_widths(values, end - start, strict, warnings, faults)
    delimiters = _delimiters(sep, values, term, warnings)
    _check_version(values[11], warnings)
    _check_control_elements(values)
    isa = Segment(["ISA", *values], 1, delimiters)
    return IsaRead(isa, delimiters, end, warnings, faults)


def _element_separator(text: str, start: int) -> str:
    """The character after ``ISA``: the element separator of the whole interchange."""
    if not text.startswith("ISA", start):
        found = text[start : start + 3]
        raise _isa_error(f"an interchange starts with ISA; found {found!r}", "022")
    sep = text[start + 3 : start + 4]
    if not sep or sep.isalnum() or sep in WHITESPACE:
        raise _isa_error(f"the element separator {sep!r} (after ISA) is not a delimiter", "026")
    return sep


def _separator_positions(text: str, start: int, sep: str) -> list[int]:
    """Where each of the sixteen elements starts (the separator before it), looked for within
    three ISA lengths so that data without a 16th separator is refused, not scanned to its end."""
    seps = [start + 3]
    limit = start + 3 * ISA_LENGTH
    while len(seps) < 16:
        nxt = text.find(sep, seps[-1] + 1, limit)
        if nxt < 0:
            raise _isa_error(
                f"ISA has {len(seps)} elements before the data ends or runs on; X12 fixes 16",
                "023" if limit >= len(text) else "022",
            )
        seps.append(nxt)
    return seps


def _check_widths(
    values: list[str], length: int, strict: bool, warnings: list[str], faults: list[X12Error]
) -> None:
    """ISA01-ISA16 at their fixed widths; leniently, wrong widths are noted and tolerated as long
    as ISA16 is one character (the terminator's place depends on it)."""
    if length == ISA_LENGTH and len(values[15]) == 1:
        return
    wrong = [
        f"ISA{k:02d} ({name}) is {len(v)} characters, must be {width}"
        for k, ((name, width, _), v) in enumerate(zip(_ISA_FIELDS, values, strict=True), 1)
        if len(v) != width
    ]
    code = next(
        (_ISA_FIELDS[k][2] for k, v in enumerate(values) if len(v) != _ISA_FIELDS[k][1]),
        "022",
    )
    message = f"ISA is {length} characters, X12 fixes it at {ISA_LENGTH}" + (
        ": " + "; ".join(wrong) if wrong else ""
    )
    if strict or len(values[15]) != 1 or not wrong:
        raise _isa_error(message, code)
    faults.append(_isa_error(message, code))
    warnings.append(f"segment 1 (ISA): {message}; read by its element separators")


def _delimiters(sep: str, values: list[str], term: str, warnings: list[str]) -> Delimiters:
    """The segment terminator, ISA16 and ISA11, each checked to be usable beside the others."""
    component = values[15]
    if not term:
        raise _isa_error("the data ends after ISA16; no segment terminator", "023", 16)
    if term.isalnum() or term in (sep, component):
        raise _isa_error(f"the segment terminator {term!r} (after ISA16) is not usable", "004", 16)
    if component.isalnum() or component in (sep, " "):
        raise _isa_error(f"ISA16 {component!r} is not a usable component separator", "027", 16)
    repetition = values[10]
    version = values[11]
    if repetition.isalnum():
        # 4010 and earlier: ISA11 is the control standards identifier ("U"), no repetitions
        if version >= "00501":
            warnings.append(
                f"segment 1 (ISA): ISA11 {repetition!r} is not a delimiter, so this {version} "
                "interchange has no repetition separator"
            )
        repetition = ""
    elif repetition in (sep, term) or repetition in WHITESPACE:
        raise _isa_error(f"ISA11 {repetition!r} is not a usable repetition separator", "022", 11)
    elif repetition == component:
        warnings.append(
            f"segment 1 (ISA): ISA11 and ISA16 are both {repetition!r}; repeating and composite "
            "elements are told apart by their definitions"
        )
    return Delimiters(sep, repetition, component, term)


def _check_version(version: str, warnings: list[str]) -> None:
    """ISA12: 00501 expected; another version is read as 00501, with a warning."""
    if version == "00401":
        # the 4010 ISA differs from 5010's only in ISA11 (see _delimiters); the transactions'
        # version is GS08's to say (a 5010 270 inside a 00401 envelope is common)
        warnings.append(
            "segment 1 (ISA): ISA12 '00401' is a 4010 envelope; its transactions are read as "
            "their GS08 says"
        )
    elif version != "00501":
        warnings.append(f"segment 1 (ISA): ISA12 {version!r} is not 00501; read as 00501")


def _check_control_elements(values: list[str]) -> None:
    """ISA13 control number, ISA14 acknowledgment requested, ISA15 usage, ISA09/ISA10 date and
    time (digits only: their calendars are not checked)."""
    if not (len(values[12]) == 9 and values[12].isdigit()):
        raise _isa_error(f"ISA13 {values[12]!r} is not a 9-digit control number", "018", 13)
    if values[13] not in ("0", "1"):
        raise _isa_error(f"ISA14 {values[13]!r} is not 0 or 1", "019", 14)
    if values[14] not in ("P", "T"):
        raise _isa_error(f"ISA15 {values[14]!r} is not P (production) or T (test)", "020", 15)
    if not values[8].isdigit():
        raise _isa_error(f"ISA09 {values[8]!r} is not a YYMMDD date", "014", 9)
    if not values[9].isdigit():
        raise _isa_error(f"ISA10 {values[9]!r} is not an HHMM time", "015", 10)
