"""Terse paths that name one element of an HL7v2 message, as used in mapping files.

Grammar (1-based everywhere, as in the HL7 standard)::

    SEG[occurrence]-field[repetition].component.subcomponent

    PID-5           PID, field 5 (first repetition, whole)
    PID-3[2].4.1    PID-3, second repetition, component 4 (assigning authority), subcomponent 1
    IN1[2]-36       the second IN1 segment's field 36
    MSH-9.2         trigger event

Occurrence and repetition default to 1. A path that stops at the field or the component level
reads the *first* component / subcomponent of what it names when a single text is asked for, the
rule HL7 v2.5.1 section 2.A gives a receiver that expects a primitive and gets a composite.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

from engine.errors import HL7PathError

__all__ = ["Path", "parse_path"]

_PATH_RE = re.compile(
    r"^(?P<seg>[A-Z][A-Z0-9]{2})(?:\[(?P<occ>[1-9][0-9]*)\])?"
    r"(?:-(?P<field>[1-9][0-9]*)(?:\[(?P<rep>[1-9][0-9]*)\])?"
    r"(?:\.(?P<comp>[1-9][0-9]*)(?:\.(?P<sub>[1-9][0-9]*))?)?)?$"
)


class Path(NamedTuple):
    """A parsed terse path. ``field`` 0 means the whole segment; ``comp``/``sub`` 0 mean 'whole'."""

    segment: str
    occurrence: int
    field: int
    repetition: int
    component: int
    subcomponent: int

    def __str__(self) -> str:
        s = self.segment + (f"[{self.occurrence}]" if self.occurrence != 1 else "")
        if self.field:
            s += f"-{self.field}" + (f"[{self.repetition}]" if self.repetition != 1 else "")
            if self.component:
                s += f".{self.component}"
                if self.subcomponent:
                    s += f".{self.subcomponent}"
        return s


@lru_cache(maxsize=4096)
def parse_path(text: str) -> Path:
    """Parse ``PID-3[2].4.1`` into a :class:`Path`; raises :class:`HL7PathError` if malformed."""
    m = _PATH_RE.match(text.strip())
    if not m:
        raise HL7PathError(
            f"malformed path {text!r}: expected SEG[n]-field[rep].component.subcomponent, "
            "e.g. PID-3[2].4.1"
        )
    g = m.groupdict()
    return Path(
        g["seg"],
        int(g["occ"] or 1),
        int(g["field"] or 0),
        int(g["rep"] or 1),
        int(g["comp"] or 0),
        int(g["sub"] or 0),
    )
