"""X12 segments and the four delimiters (X12.5/X12.6, as profiled by 005010 implementation guides).

An interchange names its own delimiters in the fixed-width ISA segment: the element separator is the
character after ``ISA``, the repetition separator is ISA11, the component (sub-element) separator is
ISA16 and the segment terminator is the character after ISA16. A :class:`Segment` keeps each
element's text as sent; :meth:`Segment.repetitions` and :meth:`Segment.components` split it on
demand, because only the reader knows whether an element repeats (EB03) or is a composite (EB13).
That is also why an interchange whose ISA11 and ISA16 are the same character (some published
examples use ``^`` for both) still reads correctly: the element's definition says which split
applies.

Elements are numbered as the guides number them: ``seg.get(1)`` is ``SE01``; ``seg.elements[0]``
is the segment ID.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from engine.x12.errors import X12Error

__all__ = [
    "DEFAULT_DELIMITERS",
    "Delimiters",
    "Element",
    "Segment",
    "format_segment",
    "read_d8",
]


@dataclass(frozen=True, slots=True)
class Delimiters:
    """The four X12 delimiters; ``repetition`` is ``""`` when the interchange has none.

    A 4010-style ISA (ISA11 ``U``, the interchange control standards identifier) has no repetition
    separator; 005010 made ISA11 the repetition separator.
    """

    element: str = "*"
    repetition: str = "^"
    component: str = ":"
    segment: str = "~"

    def all(self) -> str:
        """Every delimiter character, for checking that data does not contain one."""
        return self.element + self.repetition + self.component + self.segment


#: What the builders write: ``*`` elements, ``^`` repetitions, ``:`` components, ``~`` segments.
DEFAULT_DELIMITERS = Delimiters()


class Segment:
    """One segment: ``elements[0]`` is the ID, ``elements[n]`` is element ``n`` as sent.

    ``position`` is the segment's number in its interchange (ISA = 1); 0 for a built segment.
    """

    __slots__ = ("delimiters", "elements", "position")

    def __init__(
        self, elements: list[str], position: int = 0, delimiters: Delimiters = DEFAULT_DELIMITERS
    ) -> None:
        self.elements = elements
        self.position = position
        self.delimiters = delimiters

    @property
    def id(self) -> str:
        return self.elements[0]

    def __len__(self) -> int:
        """The number of elements sent (the ID not counted)."""
        return len(self.elements) - 1

    def get(self, n: int) -> str:
        """Element ``n`` (1-based) as sent, ``""`` when absent."""
        elements = self.elements
        return elements[n] if n < len(elements) else ""

    def repetitions(self, n: int) -> list[str]:
        """The repetitions of element ``n`` (``EB03`` ``1^33^35`` → three); ``[]`` when empty."""
        value = self.get(n)
        if not value:
            return []
        rep = self.delimiters.repetition
        return [r for r in value.split(rep) if r] if rep else [value]

    def components(self, n: int) -> list[str]:
        """The components of composite element ``n`` (``EB13`` ``HC:99213`` → two)."""
        value = self.get(n)
        return value.split(self.delimiters.component) if value else []

    def component(self, n: int, k: int) -> str:
        """Component ``k`` (1-based) of element ``n``, ``""`` when absent."""
        parts = self.components(n)
        return parts[k - 1] if k <= len(parts) else ""

    def where(self) -> str:
        """``segment 14 (SE)``: how errors and warnings name this segment."""
        return f"segment {self.position} ({self.id})"

    def to_x12(self, delimiters: Delimiters | None = None) -> str:
        """The segment as text with its terminator, with its own (or the given) delimiters."""
        d = delimiters or self.delimiters
        return d.element.join(self.elements) + d.segment

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Segment) and other.elements == self.elements

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __repr__(self) -> str:
        return f"Segment({self.to_x12()!r}, position={self.position})"


#: A value for :func:`format_segment`: a simple element (``str``), a composite (``tuple`` of
#: components) or a repeating element (``list`` of repetitions).
Element = str | tuple[str, ...] | list[str]


def _check(value: str, delimiters: Delimiters, segment_id: str, n: int) -> str:
    for ch in value:
        if ch in delimiters.all() or ch < " ":
            shown = repr(ch)
            raise X12Error(
                f"{segment_id}{n:02d} {value!r} contains {shown}, "
                + ("a delimiter" if ch in delimiters.all() else "a control character"),
                segment_id=segment_id,
                element=n,
            )
    return value


def _trim(values: Sequence[str]) -> list[str]:
    out = list(values)
    while out and not out[-1]:
        out.pop()
    return out


def format_segment(
    segment_id: str, elements: Sequence[Element], delimiters: Delimiters = DEFAULT_DELIMITERS
) -> str:
    """One segment as text, trailing empty elements (and components) dropped as X12 requires.

    Raises :class:`X12Error` naming the element when a value contains a delimiter or a control
    character: data never leaks into the syntax.
    """
    parts = [segment_id]
    for n, value in enumerate(elements, start=1):
        if isinstance(value, str):
            parts.append(_check(value, delimiters, segment_id, n))
        elif isinstance(value, tuple):
            comps = [_check(c, delimiters, segment_id, n) for c in value]
            parts.append(delimiters.component.join(_trim(comps)))
        else:
            reps = [_check(r, delimiters, segment_id, n) for r in value if r]
            parts.append(delimiters.repetition.join(reps))
    return delimiters.element.join(_trim(parts)) + delimiters.segment


def read_d8(seg: Segment, element: int, value: str) -> date:
    """A CCYYMMDD date (X12 format qualifier D8); spaces around it (senders padding a
    fixed-width field) are ignored. Raises :class:`X12Error` naming the segment and element."""
    value = value.strip()
    if len(value) == 8 and value.isdigit():
        try:
            return date(int(value[:4]), int(value[4:6]), int(value[6:]))
        except ValueError:
            pass
    raise X12Error(
        f"{seg.id}{element:02d} {value!r} is not a CCYYMMDD date",
        segment_id=seg.id,
        position=seg.position,
        element=element,
    )
