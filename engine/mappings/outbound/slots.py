"""Where values go in the segment being written: its leaves (field, repetition, component,
subcomponent), written in layers, and what HL7 v2.5.1 lets each field hold.

A rule writes into a trial layer (:meth:`Slots.trial`) that is committed only when the rule
applies: its value fits, agrees with what is there, and its condition holds. A position
(:data:`Pos`) names an element at any depth; a key (:data:`Key`) one leaf. What fits where comes
from HL7 v2.5.1 itself (hl7apy's reference data, chapter 2.5.3 and 2A): a field that does not
repeat takes one element, and a component the field's datatype lacks (CWE-9 in a CE field) is not
written.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

from engine.hl7v2.path import parse_path

__all__ = [
    "Key",
    "Pos",
    "Shape",
    "Slots",
    "child",
    "key_of",
    "leaf",
    "loc",
    "put_parts",
    "shape_of",
]

#: a leaf of a segment: (field, repetition, component, subcomponent), all 1-based
Key = tuple[int, int, int, int]
#: where an element is written: (field, repetition[, component[, subcomponent]])
Pos = tuple[int, ...]
#: per field: (most repetitions, 0 unbounded; components, 0 any; subcomponents per component)
Shape = tuple[tuple[int, int, tuple[int, ...]], ...]


class Slots:
    """The leaves of one segment being written, in layers: a rule writes into a trial layer that
    is committed only when the rule applies (its value fits, agrees with what is there, and its
    condition holds)."""

    __slots__ = ("notes", "own", "parent", "shape")

    def __init__(self, parent: Slots | None = None, shape: Shape | None = None) -> None:
        self.own: dict[Key, str] = {}
        #: warnings about what this layer wrote (a code that reads back as another), kept only
        #: when the layer is committed: (kind, text)
        self.notes: list[tuple[str, str]] = []
        self.parent = parent
        self.shape: Shape | None = parent.shape if parent is not None else shape

    def get(self, key: Key) -> str:
        """The text at a leaf, in this layer or one below; ``""`` when none wrote it."""
        s: Slots | None = self
        while s is not None:
            v = s.own.get(key)
            if v is not None:
                return v
            s = s.parent
        return ""

    def put(self, key: Key, text: str) -> bool | None:
        """Write a leaf; False when it already holds a different text, None when the segment's
        HL7 definition has no such place (CWE-9 in a CE field)."""
        shape = self.shape
        if shape is not None:
            f, _, c, sub = key
            if f > len(shape):
                return None
            _, comps, subs = shape[f - 1]
            if comps and (c > comps or sub > subs[c - 1]):
                return None
        cur = self.get(key)
        if not cur:
            self.own[key] = text
            return True
        return cur == text

    def trial(self) -> Slots:
        """A new layer over this one."""
        return Slots(self)

    def commit(self) -> None:
        """Keep what this layer wrote (and its warnings) in the layer below."""
        assert self.parent is not None
        self.parent.own.update(self.own)
        self.parent.notes.extend(self.notes)

    def keys(self) -> set[Key]:
        """Every leaf written, in any layer."""
        out: set[Key] = set()
        s: Slots | None = self
        while s is not None:
            out.update(s.own)
            s = s.parent
        return out

    def max_rep(self, field_no: int) -> int:
        """The highest repetition of a field written so far (0: none)."""
        return max((k[1] for k in self.keys() if k[0] == field_no), default=0)

    def has(self, field_no: int, comp: int = 0) -> bool:
        """Is anything written in the field (in that component, when one is given)?"""
        return any(k[0] == field_no and (not comp or k[2] == comp) for k in self.keys())


def child(pos: Pos, i: int) -> Pos | None:
    """Part ``i`` of the element at ``pos``; below a subcomponent only part 1 exists."""
    if len(pos) < 4:
        return (*pos, i)
    return pos if i == 1 else None


def leaf(pos: Pos) -> Key:
    """The first leaf of the element at ``pos`` (component and subcomponent 1 when not named)."""
    full = (*pos, 1, 1, 1, 1)
    return (full[0], full[1], full[2], full[3])


def put_parts(slots: Slots, pos: Pos, parts: list[str]) -> bool | None:
    """Write parts (components, or subcomponents of a component) at ``pos``: True when at least
    one was written, False when one disagrees with what is there, None when nothing was."""
    placed: bool | None = None
    for i, text in enumerate(parts, start=1):
        if not text:
            continue
        p = child(pos, i)
        if p is None:
            continue  # a composite in a subcomponent: HL7 keeps only its first part (2.5.3)
        done = slots.put(leaf(p), text)
        if done is False:
            return False
        if done:
            placed = True
    return placed


def key_of(path: str) -> Key:
    """The leaf a terse path names (``PID-3.4``: field 3, repetition 1, component 4, sub 1)."""
    p = parse_path(path)
    return (p.field, p.repetition, p.component or 1, p.subcomponent or 1)


def loc(segment: str, pos: Pos) -> str:
    """``PID-5[2].7`` for a position in a segment."""
    if not pos:
        return segment
    out = f"{segment}-{pos[0]}"
    if len(pos) > 1 and pos[1] > 1:
        out += f"[{pos[1]}]"
    return out + "".join(f".{p}" for p in pos[2:])


@lru_cache(maxsize=256)
def shape_of(segment: str, version: str) -> Shape | None:
    """What each field of a segment can hold in HL7 ``version``: how often it repeats and how
    many components (and subcomponents) its datatype has (HL7 v2.5.1 chapter 2.5.3 and 2A), from
    hl7apy's reference data; None for a segment it does not know (a Z segment)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import hl7apy
        from hl7apy.exceptions import HL7apyException

        try:
            ref = hl7apy.load_reference(segment, "Segment", version)
        except HL7apyException:
            return None
    out: list[tuple[int, int, tuple[int, ...]]] = []
    for _, fref, (_, mx), _ in ref[1]:
        if fref is None or fref[0] != "sequence":
            comps = 0 if fref is not None and fref[2] == "varies" else 1
            out.append((max(mx, 0), comps, (1,)))
            continue
        subs = tuple(len(c[1][1]) if c[1][0] == "sequence" else 1 for c in fref[1])
        out.append((max(mx, 0), len(subs), subs))
    return tuple(out)
