"""The HL hierarchy of a 270 or 271 (005010X279A1, HL loops 2000A-2000D).

A 270/271 has no loop markers except HL: each HL opens a level (HL03 20 information source =
loop 2000A, 21 information receiver = 2000B, 22 subscriber = 2000C, 23 dependent = 2000D), names
its parent (HL02) and says whether children follow (HL04 1/0). :func:`hierarchy` cuts a
transaction body into those levels and links them; the readers then walk the segments of each
level to find its 2100 (NM1 name) and 2110 (EQ or EB) loops.

What does not add up (a parent that does not exist, a level under the wrong parent) raises
:class:`~engine.x12.errors.X12Error`; what can be read anyway (HL01 out of sequence, HL04 that
says "no children" when children follow) goes to ``warnings``.

:func:`eligibility_version` says which guide a 270/271 follows, from GS08 (and ST03 when sent):
005010X279A1, or 004010X092A1, which some payers still send. The 4010 guide has the same HL
levels, the same 2100/2110/2120 loops and the same segments (NM1, N3, N4, REF, DMG, INS, DTP,
TRN, AAA, EB, EQ, MSG, LS/LE) in the same places; what 5010 changed is mostly codes (EB03
without repetitions, since a 4010 ISA11 is the standards identifier ``U``, not a repetition
separator; some AAA03 and EB01 codes added or retired). So a 4010 transaction is read with the
5010 rules and a warning says so; any other version is refused, naming GS08.

Incomplete: 4010-only codes are shown as ``unknown code`` where the 5010 lists dropped them;
the 4010 2100C REF*SY (social security number) is kept as a reference like any REF.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.x12.envelope import FunctionalGroup, Transaction
from engine.x12.errors import X12Error
from engine.x12.segments import Segment

__all__ = ["LEVEL_LOOPS", "Level", "eligibility_version", "hierarchy"]

#: HL03 hierarchical level code → the loop it opens, and the HL03 its parent must have
LEVEL_LOOPS: dict[str, tuple[str, str | None]] = {
    "20": ("2000A", None),
    "21": ("2000B", "20"),
    "22": ("2000C", "21"),
    "23": ("2000D", "22"),
}


@dataclass(eq=False)
class Level:
    """One HL level: the HL segment, the segments after it up to the next HL, its children."""

    hl: Segment
    segments: list[Segment]
    parent: Level | None = None
    children: list[Level] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.hl.get(1)

    @property
    def code(self) -> str:
        """HL03: 20, 21, 22 or 23."""
        return self.hl.get(3)

    @property
    def loop(self) -> str:
        """``2000A`` ... ``2000D``."""
        return LEVEL_LOOPS[self.code][0]

    def ancestors(self) -> list[Level]:
        """From the information source down to this level's parent."""
        out: list[Level] = []
        node = self.parent
        while node is not None:
            out.append(node)
            node = node.parent
        return out[::-1]


def hierarchy(tx: Transaction, warnings: list[str]) -> list[Level]:
    """The HL levels of ``tx`` in order (the segments before the first HL, BHT, are skipped)."""
    levels: list[Level] = []
    by_id: dict[str, Level] = {}
    current: Level | None = None
    for seg in tx.body:
        if seg.id != "HL":
            if current is not None:
                current.segments.append(seg)
            continue
        code = seg.get(3)
        if code not in LEVEL_LOOPS:
            raise X12Error(
                f"HL03 {code!r} is not a 270/271 level (20, 21, 22, 23)",
                segment_id="HL",
                position=seg.position,
                element=3,
            )
        if seg.get(1) != str(len(levels) + 1):
            warnings.append(
                f"{seg.where()}: HL01 {seg.get(1)!r} is out of sequence "
                f"(expected {len(levels) + 1})"
            )
        parent_id = seg.get(2)
        expected_parent = LEVEL_LOOPS[code][1]
        parent: Level | None = None
        if expected_parent is None:
            if parent_id:
                warnings.append(f"{seg.where()}: HL02 {parent_id!r} on an information source")
        else:
            parent = by_id.get(parent_id)
            if parent is None or parent.code != expected_parent:
                raise X12Error(
                    f"HL02 {parent_id!r} names no level {expected_parent} before it, so this "
                    f"{LEVEL_LOOPS[code][0]} level has no parent",
                    segment_id="HL",
                    position=seg.position,
                    element=2,
                )
        current = Level(seg, [], parent)
        if parent is not None:
            if parent.hl.get(4) == "0":
                warnings.append(
                    f"{parent.hl.where()}: HL04 says no children, but HL {current.id} "
                    f"(segment {seg.position}) is its child"
                )
            parent.children.append(current)
        levels.append(current)
        by_id[current.id] = current
    for level in levels:
        if level.hl.get(4) == "1" and not level.children:
            warnings.append(f"{level.hl.where()}: HL04 says children follow, none do")
    return levels


def eligibility_version(group: FunctionalGroup, tx: Transaction, warnings: list[str]) -> str:
    """``"5010"`` or ``"4010"``: the guide ``tx`` follows, by ST03, else GS08 (4010 has no ST03).

    A 4010 (004010X092/004010X092A1) transaction adds a warning naming the version it was read
    as; another 005010 or 004010 convention (a 276 guide on a 271) adds a warning too; any
    other version raises :class:`X12Error` naming GS08 (999 AK905 2, functional group version
    not supported).
    """
    convention = tx.convention or group.version
    seg, number = (tx.st, 3) if tx.convention else (group.gs, 8)
    where, element = seg.where(), f"{seg.id}{number:02d}"
    base = convention[:6]
    if convention.startswith("005010X279"):
        return "5010"
    if base == "005010":
        warnings.append(
            f"{where}: {element} {convention!r} is not the eligibility guide 005010X279A1; "
            "read as 005010X279A1"
        )
        return "5010"
    if base == "004010":
        kind = "" if convention.startswith("004010X092") else " (not 004010X092A1)"
        warnings.append(
            f"{where}: {element} {convention!r}{kind}: a 4010 {tx.id}, read as 4010 with the "
            "005010X279A1 reader (same loops and segments; 4010-only codes show as unknown)"
        )
        return "4010"
    if not convention:
        warnings.append(
            f"{group.gs.where()}: GS08 is empty and the ST has no ST03; read as 005010X279A1"
        )
        return "5010"
    raise X12Error(
        f"{element} {convention!r}: X12 version {base} is not read; a {tx.id} is read as "
        "005010X279A1 or 004010X092A1",
        segment_id=seg.id,
        position=seg.position,
        element=number,
        ack_code="2",
        ack_level="AK9",
    )
