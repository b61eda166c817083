"""One outbound conversion's running state: the trigger, the input, and the warnings collected.

Warnings, one line per kind of element, each naming the FHIR element: the list elements no segment
took, one line per list (``Coverage.class[1] (type subgroup), [3] (type rxgroup): no place for
them in IN1``), a code no table rule could write or one written only approximately, a stand-in, a
required field sent as the HL7 null ``""``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from engine.mappings.outbound.fhir import Index
from engine.mappings.transforms import TransformContext

__all__ = ["Run"]


@dataclass
class Run:
    """What the rules of one conversion share: the transform context, the trigger event, the
    input, where in the input and the message they are, and the warnings."""

    ctx: TransformContext
    trigger: str
    index: Index
    #: the segment being written and the FHIR element being offered (for warnings)
    segment: str = ""
    where: list[str] = field(default_factory=list)
    #: while the map only works out what it would write: no warnings
    quiet: bool = False
    #: warnings: kind -> [text, how many of that kind]
    notes: dict[str, list[Any]] = field(default_factory=dict)
    #: codes no table rule could write, by FHIR element, until a rule writes that element
    misses: dict[str, tuple[str, list[str]]] = field(default_factory=dict)
    #: FHIR elements some rule wrote
    wrote: set[str] = field(default_factory=set)
    #: the copies ``each: selection.list`` makes (one element each) -> the resource copied
    copies: dict[int, dict[str, Any]] = field(default_factory=dict)
    #: list elements offered to a segment's rules: id -> (FHIR element, segments), and taken
    offered: dict[int, tuple[str, list[str], Any]] = field(default_factory=dict)
    took: set[int] = field(default_factory=set)

    def note(self, kind: str, text: str) -> None:
        """One warning per kind of element: later ones of the same kind (another text) are
        counted; the same text again (a group selecting again) is not."""
        got = self.notes.get(kind)
        if got is None:
            self.notes[kind] = [text, {text}]
        else:
            got[1].add(text)

    def path(self) -> str:
        """The FHIR element being offered (``Patient.name[1]``)."""
        return ".".join(self.where)

    def note_unplaced(self) -> None:
        """One warning per list for the elements offered to segments that none took."""
        unplaced: dict[str, list[tuple[str, list[str]]]] = {}
        for eid, (element, segments, _) in self.offered.items():
            if eid not in self.took:
                list_path = element.split("[", 1)[0]
                unplaced.setdefault(list_path, []).append((element, segments))
        for list_path, items in unplaced.items():
            names = [items[0][0]] + ["[" + e.split("[", 1)[1] for e, _ in items[1:]]
            segs = "/".join(dict.fromkeys(s for _, ss in items for s in ss))
            them = "it" if len(items) == 1 else "them"
            self.note(f"unplaced {list_path}", f"{', '.join(names)}: no place for {them} in {segs}")

    def lines(self) -> list[str]:
        """The warnings, one line per kind (codes no rule wrote first noted here)."""
        for element, (text, tables) in self.misses.items():
            if element not in self.wrote:
                self.note(f"miss {_kind(element)}", text + " or ".join(tables) + "; left out")
        self.misses.clear()
        return [
            t if len(seen) == 1 else f"{t} (and {len(seen) - 1} more like it)"
            for t, seen in self.notes.values()
        ]


def _kind(element: str) -> str:
    """``Coverage.class (type rxgroup)`` for ``Coverage.class[2] (type rxgroup)``."""
    return re.sub(r"\[\d+\]", "", element)
