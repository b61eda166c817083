"""FHIR R4 → HL7v2 v2.5.1: the same segment and datatype maps as inbound, run in reverse.

One mapping, two directions: each rule that moves an HL7 element to a FHIR element is read back,
from the FHIR element to the HL7 element (rules with ``direction: in`` are skipped). For a rule:

* the FHIR value(s) at ``fhir`` are read; a list gives one HL7 repetition per element;
* ``wrap`` is undone: the element must fit the template, whose constants must match (an identifier
  wrap with type SS takes only identifiers of type SS), and what is at ``$value`` is written;
* ``type`` writes the value with the datatype map, recursively, into components and subcomponents;
  ``table`` writes the HL7 code (the outbound file's ``reverse``, the table's ``reverse``, the
  inverted ``map`` where the first HL7 code of a FHIR code wins, then ``reverse_default``), from
  the coding of a Coding or CodeableConcept whose system is the table's; ``transform`` writes what
  its outbound function gives; ``resource`` follows the reference into the input and writes that
  resource (PV1-7 from the Practitioner); ``build`` writes one element with another map of the
  same segment;
* a ``value`` rule is an inbound default and writes nothing, unless its ``when`` names codes: then
  an element equal to the constant writes the first of them (DG1-15 ``1`` for a principal
  diagnosis), the condition read backwards.

Who gets what. A list element goes to the first rule that takes it, and only to that one (PID-3,
PID-2, PID-4, PID-18 and PID-19 all read ``identifier[]``); rules whose ``wrap`` holds constants
are offered elements first, and an element that fits a wrap exactly (nothing in it the wrap would
drop) before one that fits loosely: an SSN read from PID-19 goes back to PID-19, one read from
PID-3 (with the display the identifier-type table gave it) back to PID-3, so a round trip keeps
the order. A single value goes to every rule that takes it (inbound, the first of those HL7
elements sets it, so they must agree). A rule naming a more specific path is offered its elements
before the rule naming the whole (``productOrService.coding[]`` before ``productOrService``). What
an element already wrote in the segment group (IN1-36) is not written again (IN2-61).

What fits where comes from HL7 v2.5.1 itself (hl7apy's reference data, chapter 2.5.3 and 2A): a
field that does not repeat takes one element, and a component the field's datatype lacks (CWE-9 in
a CE field) is not written. Two rules writing one place must agree, except that a code already
there that reads back as the same FHIR code stands (XTN-3 CP is a phone); a datatype or build value
with a part that disagrees is not written at all, so two practitioners' names are never merged.

``when`` conditions name HL7 siblings, so they are checked on what is written: rules without a
condition first, then the conditioned ones (an XTN value goes to component 4 when component 3 is
Internet, else to component 1); a sibling not written yet counts as what the map would write there.
A condition on an element no rule of the map writes is made true by writing its first listed
value (SCH-10 ``min`` for SCH-9 in minutes).

Which segments a message has, in which order and from which resources is data too:
:mod:`engine.mappings.outbound_spec` (``specs/outbound/*.yaml``).

References (FHIR R4 §2.3.0) resolve inside the input by fullUrl, ``Type/id``, ``#id`` or, for a
logical reference, the identifier. One to a resource outside the input does not stop the message:
a stand-in is made from what the reference carries (its identifier, else the id of ``Type/id``;
its display as the name), for a selection marked ``stand_in`` and for a ``resource`` rule when the
reference names the rule's type; a warning says so.

Warnings (``to_hl7(..., warnings=[])``), one line per kind of element, each naming the FHIR
element: the list elements no segment took, one line per list (``Coverage.class[1] (type
subgroup), [3] (type rxgroup): no place for them in IN1``), a code no table rule could write or
one written only approximately (name use ``old`` is U in v2.5.1), a stand-in, a required field
sent as the HL7 null ``""``. They are collected in the slots' layers, so what a rule tried and did
not write says nothing.

Incomplete: the maps have no HL7 place for a third given name or address line, which are dropped
without a warning, nor for HumanName.text beside a family name; elements below a list element
(``name[0].text``) are not checked for a place; one HL7 version (2.5.1) is written.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal
from zoneinfo import ZoneInfo

from engine.errors import ConfigError, ConversionError
from engine.hl7v2.codec import Message
from engine.hl7v2.path import parse_path
from engine.hl7v2.structure import structure_for
from engine.mappings.loader import MappingFiles
from engine.mappings.outbound_spec import (
    MapUse,
    OutboundMessage,
    Pick,
    Select,
    Step,
    TriggerChoice,
    load_outbound,
)
from engine.mappings.spec import CodeTable, Condition, Rule
from engine.mappings.transforms import TransformContext, get_transform

__all__ = ["OutboundMapper"]

#: a leaf of a segment: (field, repetition, component, subcomponent), all 1-based
Key = tuple[int, int, int, int]
#: where an element is written: (field, repetition[, component[, subcomponent]])
Pos = tuple[int, ...]


# -- the segment being written -------------------------------------------------------------------


class _Slots:
    """The leaves of one segment being written, in layers: a rule writes into a trial layer that
    is committed only when the rule applies (its value fits, agrees with what is there, and its
    condition holds)."""

    __slots__ = ("notes", "own", "parent", "shape")

    def __init__(self, parent: _Slots | None = None, shape: _Shape | None = None) -> None:
        self.own: dict[Key, str] = {}
        #: warnings about what this layer wrote (a code that reads back as another), kept only
        #: when the layer is committed: (kind, text)
        self.notes: list[tuple[str, str]] = []
        self.parent = parent
        self.shape: _Shape | None = parent.shape if parent is not None else shape

    def get(self, key: Key) -> str:
        s: _Slots | None = self
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

    def trial(self) -> _Slots:
        return _Slots(self)

    def commit(self) -> None:
        assert self.parent is not None
        self.parent.own.update(self.own)
        self.parent.notes.extend(self.notes)

    def keys(self) -> set[Key]:
        out: set[Key] = set()
        s: _Slots | None = self
        while s is not None:
            out.update(s.own)
            s = s.parent
        return out

    def max_rep(self, field_no: int) -> int:
        return max((k[1] for k in self.keys() if k[0] == field_no), default=0)

    def has(self, field_no: int, comp: int = 0) -> bool:
        return any(k[0] == field_no and (not comp or k[2] == comp) for k in self.keys())


def _child(pos: Pos, i: int) -> Pos | None:
    """Part ``i`` of the element at ``pos``; below a subcomponent only part 1 exists."""
    if len(pos) < 4:
        return (*pos, i)
    return pos if i == 1 else None


def _leaf(pos: Pos) -> Key:
    full = (*pos, 1, 1, 1, 1)
    return (full[0], full[1], full[2], full[3])


def _put_parts(slots: _Slots, pos: Pos, parts: list[str]) -> bool | None:
    """Write parts (components, or subcomponents of a component) at ``pos``: True when at least
    one was written, False when one disagrees with what is there, None when nothing was."""
    placed: bool | None = None
    for i, text in enumerate(parts, start=1):
        if not text:
            continue
        p = _child(pos, i)
        if p is None:
            continue  # a composite in a subcomponent: HL7 keeps only its first part (2.5.3)
        done = slots.put(_leaf(p), text)
        if done is False:
            return False
        if done:
            placed = True
    return placed


# -- reading FHIR --------------------------------------------------------------------------------


def _values(obj: Any, path: str) -> list[Any]:
    """Every value at a dotted path, through lists at any step."""
    cur = [obj]
    for step in path.split("."):
        step = step.removesuffix("[]")
        nxt: list[Any] = []
        for o in cur:
            for item in o if isinstance(o, list) else [o]:
                if isinstance(item, dict) and step in item:
                    v = item[step]
                    nxt.extend(v if isinstance(v, list) else [v])
        cur = nxt
    return [v for v in cur if v is not None and v != ""]


#: an element offered to rules: (owner id, key, index) for "given once only", and the value
_Item = tuple[tuple[int, str, int], Any]


def _items(obj: Any, steps: tuple[str, ...]) -> list[_Item]:
    cur: Any = obj
    for step in steps[:-1]:
        if isinstance(cur, list):
            cur = cur[0] if cur else None
        if not isinstance(cur, dict):
            return []
        cur = cur.get(step)
    if isinstance(cur, list):
        cur = cur[0] if cur else None
    if not isinstance(cur, dict):
        return []
    last = steps[-1]
    v = cur.get(last)
    if v is None or v == "" or v == [] or v == {}:
        return []
    if isinstance(v, list):
        return [((id(cur), last, i), e) for i, e in enumerate(v) if e not in (None, "", {}, [])]
    return [((id(cur), last, -1), v)]


def _holds_value(template: Any) -> bool:
    if isinstance(template, str):
        return template == "$value"
    if isinstance(template, dict):
        return any(_holds_value(v) for v in template.values())
    if isinstance(template, list):
        return any(_holds_value(v) for v in template)
    return False


def _has_constants(template: Any) -> bool:
    if isinstance(template, str):
        return not template.startswith("$")
    if isinstance(template, dict):
        return any(_has_constants(v) for v in template.values())
    if isinstance(template, list):
        return any(_has_constants(v) for v in template)
    return True


def _match(t: Any, v: Any, strict: bool, found: list[Any]) -> bool:
    if isinstance(t, str) and t.startswith("$"):
        if t == "$value":
            found.append(v)
        return True
    if isinstance(t, dict):
        if not isinstance(v, dict):
            return False
        for k, tv in t.items():
            if k not in v:
                if strict and k != "display" and not _holds_value(tv):
                    return False
                continue
            if not _match(tv, v[k], strict, found):
                return False
        return not (strict and any(k not in t for k in v))
    if isinstance(t, list):
        if not isinstance(v, list):
            return False
        for ti in t:
            for vi in v:
                got: list[Any] = []
                if _match(ti, vi, strict, got):
                    found.extend(got)
                    break
            else:
                return False
        return not strict or all(any(_match(ti, vi, True, []) for ti in t) for vi in v)
    return bool(t == v)


def _unwrap(template: Any, value: Any, strict: bool) -> tuple[bool, Any]:
    """Undo a ``wrap``: does ``value`` fit the template, and what is at ``$value``.

    Strict: the value is the template filled in, nothing more (a missing ``display`` aside): an
    identifier with a display in its type does not fit a wrap without one, which would drop it.
    Loose: the constants the value has match the template's."""
    found: list[Any] = []
    ok = _match(template, value, strict, found)
    return (ok and bool(found)), (found[0] if found else None)


def _text(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        text = str(value)
        return text or None
    return None


def _reads_back(table: CodeTable, as_: str, text: str, value: Any) -> bool:
    """Does the HL7 code ``text`` read back (inbound, through ``table``) as ``value``?"""
    fhir = table.map.get(text, table.default) if text else None
    if fhir is None:
        return False
    if as_ == "code":
        return _text(value) == fhir
    if not isinstance(value, dict):
        return False
    codings = value.get("coding") if as_ == "CodeableConcept" else [value]
    return any(isinstance(c, dict) and c.get("code") == fhir for c in codings or [])


# -- the input -----------------------------------------------------------------------------------

_TAIL_RE = re.compile(r"([A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


class _Index:
    """The input's resources and how references find them (FHIR R4 §3.1.0.11.2: by fullUrl, by
    ``Type/id``, or ``#id`` for contained resources; a logical reference, FHIR R4 §2.3.0.3, by
    the identifier of a resource of its type), and the stand-ins made for references to
    resources outside the input (:meth:`stand_in`)."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        entries: list[tuple[str | None, dict[str, Any]]] = []
        if data.get("resourceType") == "Bundle":
            for entry in data.get("entry") or []:
                res = entry.get("resource") if isinstance(entry, dict) else None
                if isinstance(res, dict) and isinstance(res.get("resourceType"), str):
                    entries.append((entry.get("fullUrl"), res))
        else:
            entries.append((None, dict(data)))
        self.resources = [r for _, r in entries]
        self._by: dict[str, dict[str, Any]] = {}
        for url, res in entries:
            keys: list[str] = []
            if isinstance(url, str) and url:
                keys.append(url)
                m = _TAIL_RE.search(url)
                if m:
                    keys.append(m.group(1))
            rid = res.get("id")
            if isinstance(rid, str) and rid:
                keys.append(f"{res['resourceType']}/{rid}")
            for k in keys:
                self._by.setdefault(k, res)
            for c in res.get("contained") or []:
                if isinstance(c, dict) and isinstance(c.get("id"), str):
                    self._by.setdefault("#" + c["id"], c)
        self._by_identifier: dict[tuple[str, str, str], dict[str, Any]] = {}
        for res in self.resources:
            for ident in res.get("identifier") or []:
                if isinstance(ident, dict) and isinstance(ident.get("value"), str):
                    key = (res["resourceType"], str(ident.get("system") or ""), ident["value"])
                    self._by_identifier.setdefault(key, res)
        self._stand_ins: dict[str, dict[str, Any]] = {}
        self._made: dict[str, str] = {}
        self._urls = {id(res): url for url, res in entries if isinstance(url, str)}

    def own_id(self, res: dict[str, Any]) -> str | None:
        """A resource's id: Resource.id, else the tail of its fullUrl (``urn:uuid:…``)."""
        rid = res.get("id")
        if isinstance(rid, str) and rid:
            return rid
        url = self._urls.get(id(res), "")
        tail = url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
        return tail or None

    def resolve(self, ref: Any) -> dict[str, Any] | None:
        if not isinstance(ref, str) or not ref:
            return None
        got = self._by.get(ref)
        if got is None:
            m = _TAIL_RE.search(ref)
            if m:
                got = self._by.get(m.group(1))
        return got if got is not None else self._stand_ins.get(ref)

    def resolve_ref(self, ref: Any) -> dict[str, Any] | None:
        """A Reference (dict) to what it points to in the input, or to its stand-in: by its
        ``reference``, else (a logical reference) by its identifier, among resources of its
        ``type`` when it has one."""
        if not isinstance(ref, dict):
            return None
        literal = ref.get("reference")
        if isinstance(literal, str) and literal:
            return self.resolve(literal)
        ident = ref.get("identifier")
        if not isinstance(ident, dict) or not isinstance(ident.get("value"), str):
            return None
        system, value = str(ident.get("system") or ""), ident["value"]
        rtype = ref.get("type")
        for (t, sys_, val), res in self._by_identifier.items():
            if sys_ == system and val == value and (not rtype or t == rtype):
                return res
        return self._stand_ins.get(_logical_key(ref))

    def stand_in(
        self, ref: Any, rtype: str, *, presume: bool = True
    ) -> tuple[dict[str, Any], str] | None:
        """A resource of type ``rtype`` made from a Reference to a resource outside the input,
        and what it was made from (for the warning); None when the reference names another
        type, names none and ``presume`` is false, or carries nothing to write. The same
        reference gives the same stand-in."""
        if not isinstance(ref, dict):
            return None
        literal = ref.get("reference") if isinstance(ref.get("reference"), str) else None
        m = _TAIL_RE.search(literal) if literal else None
        named = ref.get("type") or (m.group(1).split("/", 1)[0] if m else None)
        if named is not None and named != rtype:
            return None
        if named is None and (literal is not None or not presume):
            return None  # a urn:uuid:, a fragment, or a logical reference of unknown type
        key = literal or _logical_key(ref)
        known = self._stand_ins.get(key)
        if known is not None:
            return known, self._made[key]
        res: dict[str, Any] = {"resourceType": rtype}
        said: list[str] = []
        ident = ref.get("identifier")
        if isinstance(ident, dict) and ident.get("value"):
            res["identifier"] = [ident]
            said.append("its identifier")
        elif m is not None:
            res["identifier"] = [{"value": m.group(1).split("/", 1)[1]}]
            said.append("its id as the identifier")
        display = ref.get("display")
        if isinstance(display, str) and display.strip():
            res["name"] = [{"family": display}] if rtype in _PERSONS else display
            said.append("its display as the name")
        if not said:
            return None
        self._made[key] = " and ".join(said)
        self._stand_ins[key] = res
        return res, self._made[key]


#: resources whose name is a list of HumanName
_PERSONS = frozenset({"Patient", "Practitioner", "RelatedPerson", "Person"})


def _names_type(ref: Any) -> str | None:
    """The resource type a Reference names (its ``type``, else its ``Type/id``), if any."""
    if not isinstance(ref, dict):
        return None
    if isinstance(ref.get("type"), str):
        return str(ref["type"])
    literal = ref.get("reference")
    m = _TAIL_RE.search(literal) if isinstance(literal, str) else None
    return m.group(1).split("/", 1)[0] if m else None


def _logical_key(ref: dict[str, Any]) -> str:
    ident = ref.get("identifier") or {}
    return f"identifier|{ref.get('type') or ''}|{ident.get('system') or ''}|{ident.get('value')}"


def _ref_label(ref: Any) -> str:
    """How a warning names a reference: its literal reference, else its identifier or display."""
    if not isinstance(ref, dict):
        return "?"
    if isinstance(ref.get("reference"), str):
        return str(ref["reference"])
    ident = ref.get("identifier")
    if isinstance(ident, dict) and ident.get("value"):
        return f"identifier {ident.get('system') or ''}|{ident['value']}"
    return f"display {ref.get('display')!r}" if ref.get("display") else "no reference"


def _refs(res: Any, path: str) -> list[str]:
    """The reference strings at a path (``payor``, ``participant.actor``)."""
    out = []
    for v in _values(res, path):
        if isinstance(v, dict) and isinstance(v.get("reference"), str):
            out.append(v["reference"])
    return out


def _ref_objs(res: Any, path: str) -> list[tuple[Any, dict[str, Any]]]:
    """The References at a path, each with the element of the path's first step that holds it
    (the ``participant`` of ``participant.actor``): literal or logical (identifier) ones."""
    first, _, rest = path.partition(".")
    out: list[tuple[Any, dict[str, Any]]] = []
    for holder in _values(res, first):
        for v in _values(holder, rest) if rest else [holder]:
            if isinstance(v, dict) and (
                isinstance(v.get("reference"), str) or isinstance(v.get("identifier"), dict)
            ):
                out.append((holder, v))
    return out


# -- compiled rules ------------------------------------------------------------------------------

#: the elements already given to a rule: (owner id, key, index)
Seen = AbstractSet[tuple[int, str, int]]
#: (FHIR value, where, slots, run, elements already given) -> written (True), disagrees with
#: what is written there (False), or nothing to write (None)
Writer = Callable[[Any, Pos, _Slots, "_Run", Seen], bool | None]
#: (slots, where the map writes, run, what the map would write there) -> holds?
CondFn = Callable[[_Slots, Pos, "_Run", Callable[[Key], str] | None], bool]


@dataclass
class _Run:
    ctx: TransformContext
    trigger: str
    index: _Index
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
        return ".".join(self.where)

    def lines(self) -> list[str]:
        for element, (text, tables) in self.misses.items():
            if element not in self.wrote:
                self.note(f"miss {_kind(element)}", text + " or ".join(tables) + "; left out")
        self.misses.clear()
        return [
            t if len(seen) == 1 else f"{t} (and {len(seen) - 1} more like it)"
            for t, seen in self.notes.values()
        ]


@dataclass
class _CRule:
    order: int
    field: int
    comp: int
    sub: int
    repeats: bool
    max_rep: int  # 0: unbounded
    write: Writer
    cond: CondFn | None
    wrap: Any
    where: tuple[tuple[str, frozenset[str]], ...]
    conditioned: bool
    constrained: bool


@dataclass
class _Group:
    steps: tuple[str, ...]
    rules: list[_CRule] = field(default_factory=list)


@dataclass
class _Plan:
    """A segment map (level field) or datatype map (level component), compiled for writing."""

    level: Literal["field", "component"]
    groups: list[_Group] = field(default_factory=list)
    #: group indexes in the order they are offered their elements: a group whose path extends
    #: another's (``productOrService.coding`` of ``productOrService``) before it
    rounds: list[list[int]] = field(default_factory=list)


#: per field: (most repetitions, 0 unbounded; components, 0 any; subcomponents per component)
_Shape = tuple[tuple[int, int, tuple[int, ...]], ...]


@lru_cache(maxsize=256)
def _shape(segment: str, version: str) -> _Shape | None:
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


def _reverse_table(
    table: CodeTable, as_: str, override: Mapping[str, str]
) -> Callable[[Any], tuple[str | None, bool]]:
    """FHIR code (or Coding / CodeableConcept) → HL7 code: the outbound file's ``reverse``, the
    table's ``reverse``, the inverted ``map`` (the first HL7 code of a FHIR code), a plain code
    that already is one of the table's HL7 codes (an ISO alpha-3 country), then
    ``reverse_default``; and whether that code only approximates the FHIR one (a warning says so):
    the default, or an outbound file's code that reads back as another (name use old as U)."""
    inverse: dict[str, str] = {}
    for hl7, fhir in table.map.items():
        inverse.setdefault(fhir, hl7)
    inverse.update(table.reverse)
    inverse.update(override)
    default = table.reverse_default
    system, systems = table.system, table.systems
    known_systems = {s for s in (system, *systems.values()) if s}

    def rough(fhir: str) -> bool:
        return fhir in override and table.map.get(override[fhir], table.default) != fhir

    if as_ == "code":

        def from_code(value: Any) -> tuple[str | None, bool]:
            text = _text(value)
            if text is None:
                return None, False
            if text in inverse:
                return inverse[text], rough(text)
            if text in table.map:
                return text, False
            return default, default is not None

        return from_code

    def fits(code: str, sys_uri: Any) -> bool:
        """A coding's system is the table's (for this code), or it has none."""
        if not sys_uri or not known_systems:
            return True
        expected = systems.get(code, system)
        return sys_uri == expected if code in inverse and expected else sys_uri in known_systems

    def from_coding(value: Any) -> tuple[str | None, bool]:
        if not isinstance(value, dict):
            return None, False
        codings = value.get("coding") if as_ == "CodeableConcept" else [value]
        if not isinstance(codings, list):
            return None, False
        pairs = [
            (c["code"], c.get("system"))
            for c in codings
            if isinstance(c, dict) and isinstance(c.get("code"), str)
        ]
        for code, sys_uri in pairs:
            if code in inverse and fits(code, sys_uri):
                return inverse[code], rough(code)
        if default is not None and any(fits(code, sys_uri) for code, sys_uri in pairs):
            return default, True
        return None, False

    return from_coding


# -- compiling the maps in reverse ---------------------------------------------------------------


class _Compiler:
    """The segment and datatype maps compiled for writing one outbound message type (its HL7
    version, and its own ``reverse`` codes)."""

    def __init__(
        self, files: MappingFiles, version: str, reverse: Mapping[str, Mapping[str, str]]
    ) -> None:
        self.files = files
        self.version = version
        self.reverse = reverse
        self._dt_plans: dict[str, _Plan] = {}
        self._seg_plans: dict[tuple[str, str], _Plan] = {}

    def segment(self, name: str, picks: tuple[Pick, ...] = ()) -> _Plan:
        key = (name, "|".join(p.model_dump_json() for p in picks))
        plan = self._seg_plans.get(key)
        if plan is not None:
            return plan
        smap = self.files.segments[name]
        plan = _Plan("field")
        self._seg_plans[key] = plan  # before the rules: a build may name its own map
        where = self.files.origin.get(f"segments/{name}", name)
        self._fill(plan, smap.rules, where, smap.segment, picks)
        return plan

    def datatype(self, name: str, origin: str) -> _Plan:
        plan = self._dt_plans.get(name)
        if plan is not None:
            return plan
        dmap = self.files.datatypes.get(name)
        if dmap is None:
            raise ConfigError(f"{origin}: no datatype map named {name!r} (datatypes/{name}.yaml)")
        plan = _Plan("component")
        self._dt_plans[name] = plan  # before the rules: a map may name itself
        self._fill(plan, dmap.rules, self.files.origin.get(f"datatypes/{name}", name), None, ())
        return plan

    def _fill(
        self,
        plan: _Plan,
        rules: list[Rule],
        where: str,
        segment: str | None,
        picks: tuple[Pick, ...],
    ) -> None:
        level = plan.level
        # what the map writes, so that a condition on anything else may be made true
        written: set[int] = set()
        whole = False
        for r in rules:
            if level == "field":
                written.update(self._fields_of(r))
            elif r.component is None:
                whole = whole or r.value is None
            else:
                written.add(r.component)
        shape = _shape(segment, self.version) if segment else None
        groups: dict[tuple[str, ...], _Group] = {}
        for i, rule in enumerate(rules):
            if rule.direction == "in":
                continue
            steps = tuple(s.removesuffix("[]") for s in rule.fhir.split("."))
            if rule.value is not None:
                flag = _flag_rule(rule, i, level)
                if flag is not None:
                    groups.setdefault(steps, _Group(steps)).rules.append(flag)
                continue
            group = groups.get(steps)
            if group is None:
                group = groups[steps] = _Group(steps)
            where_pick: list[tuple[str, frozenset[str]]] = []
            for pick in picks:
                p = parse_path(pick.field)
                fields = {rule.field} if rule.field is not None else self._fields_of(rule)
                if p.field in fields and pick.fhir.removesuffix("[]") == ".".join(steps):
                    where_pick += [(k, frozenset(v)) for k, v in pick.where.items()]
            fno = rule.field or 0
            repeats = level == "field" and rule.repeats and rule.build is None
            max_rep = shape[fno - 1][0] if repeats and shape and 0 < fno <= len(shape) else 0
            cond = None
            if rule.when is not None:
                forcible = (
                    rule.when.field not in written
                    if level == "field"
                    else not whole and rule.when.component not in written
                )
                w = rule.when
                vacant = (
                    w.present is False
                    and w.in_ is None
                    and not w.not_in
                    and (w.field, w.component, w.subcomponent)
                    == (
                        rule.field if level == "field" else None,
                        rule.component,
                        rule.subcomponent,
                    )
                )
                cond = _condition(w, level, forcible, vacant=vacant)
            group.rules.append(
                _CRule(
                    order=i,
                    field=fno,
                    comp=rule.component or (1 if rule.subcomponent else 0),
                    sub=rule.subcomponent or 0,
                    repeats=repeats,
                    max_rep=max_rep,
                    write=self._writer(rule, f"{where}, rules[{i}]"),
                    cond=cond,
                    wrap=rule.wrap,
                    where=tuple(where_pick),
                    conditioned=cond is not None,
                    constrained=bool(where_pick)
                    or (rule.wrap is not None and _has_constants(rule.wrap)),
                )
            )
        for g in groups.values():
            g.rules.sort(key=lambda r: (not r.constrained, r.order))
        plan.groups = list(groups.values())
        height: dict[int, int] = {}

        def h(i: int) -> int:
            if i not in height:
                steps = plan.groups[i].steps
                below = [
                    j
                    for j, g in enumerate(plan.groups)
                    if len(g.steps) > len(steps) and g.steps[: len(steps)] == steps
                ]
                height[i] = 1 + max((h(j) for j in below), default=-1)
            return height[i]

        for i in range(len(plan.groups)):
            h(i)
        plan.rounds = [
            [i for i in range(len(plan.groups)) if height[i] == k]
            for k in range(max(height.values(), default=-1) + 1)
        ]

    def _fields_of(self, rule: Rule, depth: int = 0) -> set[int]:
        if rule.field is not None:
            return {rule.field}
        if rule.build is not None and depth < 4:
            sub = self.files.segments.get(rule.build)
            if sub is not None:
                return {f for r in sub.rules for f in self._fields_of(r, depth + 1)}
        return set()

    def _writer(self, rule: Rule, key: str) -> Writer:
        if rule.build is not None:
            if rule.build not in self.files.segments:
                raise ConfigError(f"{key}: no segment map named {rule.build!r}")
            sub = self.segment(rule.build)

            def write_build(
                value: Any, pos: Pos, slots: _Slots, run: _Run, seen: Seen
            ) -> bool | None:
                return _nested(_apply(sub, value, (), slots, run, seen))

            return write_build
        if rule.type:
            plan = self.datatype(rule.type, key)
            if rule.resource:
                rtype = rule.resource

                def write_resource(
                    value: Any, pos: Pos, slots: _Slots, run: _Run, seen: Seen
                ) -> bool | None:
                    target = run.index.resolve_ref(value)
                    made = ""
                    if target is None:
                        # a rule's reference may be to one of several types (Claim.provider):
                        # only one that names its type stands in
                        got = run.index.stand_in(value, rtype, presume=False)
                        if got is None:
                            named = _names_type(value)
                            if not run.quiet and named in (None, rtype):
                                why = "names no type" if named is None else "carries nothing"
                                run.misses.setdefault(
                                    run.path(),
                                    (
                                        f"{run.path()} ({_ref_label(value)}) is not in the input "
                                        f"and {why}",
                                        [""],
                                    ),
                                )
                            return None
                        target, made = got
                    if target.get("resourceType") != rtype:
                        return None
                    outer, run.where = run.where, [rtype]
                    try:
                        done = _nested(_apply(plan, target, pos, slots, run, frozenset()))
                    finally:
                        run.where = outer
                    if done and made:
                        slots.notes.append(
                            (
                                f"stand-in {run.path()}",
                                f"{run.path()} ({_ref_label(value)}) is not in the input: "
                                f"{_loc(run.segment, pos)} is written from what the reference "
                                f"carries ({made})",
                            )
                        )
                    return done

                return write_resource

            def write_datatype(
                value: Any, pos: Pos, slots: _Slots, run: _Run, seen: Seen
            ) -> bool | None:
                return _nested(_apply(plan, value, pos, slots, run, seen))

            return write_datatype
        if rule.table:
            tname = rule.table
            table = self.files.tables.get(rule.table)
            if table is None:
                raise ConfigError(
                    f"{key}: no code table named {rule.table!r} (tables/{rule.table}.yaml)"
                )
            code_of = _reverse_table(table, rule.as_, self.reverse.get(rule.table, {}))
            as_ = rule.as_
            hl7_table = f"HL7 table {table.hl7_table}" if table.hl7_table else "the HL7 table"
            version = self.version

            def write_code(
                value: Any, pos: Pos, slots: _Slots, run: _Run, seen: Seen
            ) -> bool | None:
                code, approximate = code_of(value)
                shown = _shown(value)
                if code is None:
                    if not run.quiet and shown:
                        got = run.misses.setdefault(
                            run.path(), (f"{run.path()} {shown}: no code for it in ", [])
                        )
                        where = f"{hl7_table} (tables/{tname}.yaml)"
                        if where not in got[1]:
                            got[1].append(where)
                    return None
                done = _put_parts(slots, pos, [code])
                if done is False and _reads_back(table, as_, slots.get(_leaf(pos)), value):
                    return True  # the code already there means the same (CP is a phone)
                if done and approximate:
                    slots.notes.append(
                        (
                            f"approximate {run.path()} {shown}",
                            f"{run.path()} {shown}: {hl7_table} (v{version}) has no code that "
                            f"means it; {_loc(run.segment, pos)} is {code}",
                        )
                    )
                return done

            return write_code
        name = rule.transform or "text"
        if name == "text":

            def write_text(
                value: Any, pos: Pos, slots: _Slots, run: _Run, seen: Seen
            ) -> bool | None:
                text = _text(value)
                return None if text is None else _put_parts(slots, pos, [text])

            return write_text
        out = get_transform(name).outbound

        def write_transform(
            value: Any, pos: Pos, slots: _Slots, run: _Run, seen: Seen
        ) -> bool | None:
            return _put_parts(slots, pos, out(value, run.ctx))

        return write_transform


def _shown(value: Any) -> str:
    """A FHIR code, Coding or CodeableConcept as a warning shows it: its code(s), quoted."""
    if isinstance(value, dict):
        got = value.get("coding")
        codings: list[Any] = got if isinstance(got, list) else [value]
        codes = [
            str(c["code"])
            for c in codings
            if isinstance(c, dict) and isinstance(c.get("code"), str)
        ]
        if codes:
            return "/".join(repr(c) for c in codes)
        return repr(value["text"]) if isinstance(value.get("text"), str) else ""
    text = _text(value)
    return repr(text) if text else ""


def _loc(segment: str, pos: Pos) -> str:
    """``PID-5[2].7`` for a position in a segment."""
    if not pos:
        return segment
    out = f"{segment}-{pos[0]}"
    if len(pos) > 1 and pos[1] > 1:
        out += f"[{pos[1]}]"
    return out + "".join(f".{p}" for p in pos[2:])


def _flag_rule(rule: Rule, order: int, level: str) -> _CRule | None:
    """A ``value`` rule read backwards: inbound it sets a constant when an HL7 element holds a
    code (``type: principal`` when DG1-15 is 1); outbound, an element equal to the constant
    writes that code. Only a condition naming codes (``in``) can be written."""
    c = rule.when
    if c is None or not c.in_ or (c.field is None and c.component is None):
        return None
    if level == "field" and c.field is None:
        return None
    const, code = rule.value, c.in_[0]

    def write_flag(value: Any, pos: Pos, slots: _Slots, run: _Run, seen: Seen) -> bool | None:
        return _put_parts(slots, pos, [code]) if _match(const, value, False, []) else None

    when_trigger = (
        _condition(Condition.model_validate({"trigger": c.trigger}), level, False)
        if c.trigger
        else None
    )
    return _CRule(
        order=order,
        field=c.field or 0 if level == "field" else 0,
        comp=c.component or (1 if c.subcomponent else 0),
        sub=c.subcomponent or 0,
        repeats=False,
        max_rep=0,
        write=write_flag,
        cond=when_trigger,
        wrap=None,
        where=(),
        conditioned=when_trigger is not None,
        constrained=True,
    )


def _nested(result: tuple[bool, set[tuple[int, str, int]], bool]) -> bool | None:
    """A datatype or a build as one value: any part that disagrees with what is written rejects
    the whole (another practitioner's name is not merged into this one's)."""
    wrote, _, conflict = result
    return False if conflict else (True if wrote else None)


# -- writing -------------------------------------------------------------------------------------


def _apply(
    plan: _Plan,
    obj: Any,
    pos: Pos,
    slots: _Slots,
    run: _Run,
    seen: Seen,
) -> tuple[bool, set[tuple[int, str, int]], bool]:
    """Write one resource (a segment map) or one FHIR datatype value (a datatype map at ``pos``);
    say whether anything was written, which list elements were, and whether an element was left
    out because it disagreed with what its rule would have overwritten.

    A list element goes to the first rule that takes it; a single value to every rule that takes
    it (inbound, the first of those HL7 elements sets it, so they must all agree). ``seen``: the
    elements already written elsewhere (by an earlier map of the same segment group: an
    identifier in IN1-36 is not repeated in IN2-61; by a more specific rule of the enclosing map:
    the FT1-7 charge code is not also CWE-4 of FT1-25)."""
    if not isinstance(obj, dict):
        return False, set(), False
    all_items = [_items(obj, g.steps) for g in plan.groups]
    pending = [[it for it in items if it[0] not in seen] for items in all_items]
    used: set[int] = set()
    taken: set[tuple[int, str, int]] = set()
    accepted: set[tuple[int, str, int]] = set()
    wrote = False
    conflict = False
    cache: list[_Slots] = []

    def would_write(key: Key) -> str:
        """What the map would write at ``key`` were no condition checked (computed once)."""
        if not cache:
            p = slots.trial()
            quiet, run.quiet = run.quiet, True
            for gi, g in enumerate(plan.groups):
                for _, value in all_items[gi]:
                    for r in g.rules:
                        inner = _unwrap(r.wrap, value, False)[1] if r.wrap is not None else value
                        target = _targets(plan, r, pos, p)
                        if inner is None or not target:
                            continue
                        t = p.trial()
                        if r.write(inner, target[-1][0], t, run, seen):
                            t.commit()
            run.quiet = quiet
            cache.append(p)
        return cache[0].get(key)

    for rnd in plan.rounds:
        for strict in (True, False):
            for conditioned in (False, True):
                for gi in rnd:
                    rules = [r for r in plan.groups[gi].rules if r.conditioned == conditioned]
                    if not rules or not pending[gi]:
                        continue
                    left: list[_Item] = []
                    label = ".".join(plan.groups[gi].steps)
                    for item in pending[gi]:
                        key, value = item
                        now = seen | taken if taken else seen
                        results = []
                        run.where.append(label + _index_text(run, obj, plan.groups[gi], key, value))
                        try:
                            for r in rules:
                                got = _try(
                                    plan, r, value, strict, pos, slots, run, used, now, would_write
                                )
                                results.append(got)
                                if got and key[2] >= 0:
                                    break  # a list element goes to one rule only
                            if any(results):
                                run.wrote.add(run.path())
                        finally:
                            run.where.pop()
                        if any(results):
                            wrote = True
                            accepted.add(key)
                            if key[2] >= 0:
                                taken.add(key)
                                continue
                        left.append(item)  # a single value stays offered to later rules
                        if False in results and not strict and key not in accepted:
                            conflict = True
                    pending[gi] = left
    return wrote, taken, conflict


def _index_text(run: _Run, obj: Any, group: _Group, key: tuple[int, str, int], value: Any) -> str:
    """``[2]`` for a list element, as the input numbers it (a copy made for ``each`` holds one
    element: its index is the one it has in the resource copied)."""
    if key[2] < 0:
        return ""
    original = run.copies.get(id(obj)) if len(run.where) <= 1 else None
    if original is not None and len(group.steps) == 1:
        for i, el in enumerate(original.get(group.steps[0]) or []):
            if el is value:
                return f"[{i}]"
    return f"[{key[2]}]"


def _targets(plan: _Plan, r: _CRule, pos: Pos, slots: _Slots) -> list[tuple[Pos, bool]]:
    """Where a rule may write: (position, whether it is a new repetition). A repeating field
    offers its existing repetitions (to be confirmed only by an identical value) and the next."""
    if plan.level == "component":
        target: Pos | None = pos
        if r.comp:
            target = _child(pos, r.comp)
        if target is not None and r.sub:
            target = _child(target, r.sub)
        return [] if target is None else [(target, True)]
    if r.field == 0:  # a build rule: its own map names the fields
        return [((), True)]
    tail = ((r.comp,) if r.comp else ()) + ((r.sub,) if r.sub else ())
    if not r.repeats:
        return [((r.field, 1, *tail), True)]
    n = slots.max_rep(r.field)
    out: list[tuple[Pos, bool]] = [((r.field, k, *tail), False) for k in range(1, n + 1)]
    if not r.max_rep or n < r.max_rep:
        out.append(((r.field, n + 1, *tail), True))
    return out


def _try(
    plan: _Plan,
    r: _CRule,
    value: Any,
    strict: bool,
    pos: Pos,
    slots: _Slots,
    run: _Run,
    used: set[int],
    seen: Seen,
    would_write: Callable[[Key], str],
) -> bool | None:
    """Offer one FHIR value to one rule: True when the rule takes it (and it is written), False
    when the rule applies but the value disagrees with what is written, else None."""
    if not r.repeats and id(r) in used:
        return None
    if r.where and not all(
        any(isinstance(v, str) and v in allowed for v in _values(value, path))
        for path, allowed in r.where
    ):
        return None
    inner = value
    if r.wrap is not None:
        ok, inner = _unwrap(r.wrap, value, strict)
        if not ok:
            return None
    outcome: bool | None = None
    for target, new in _targets(plan, r, pos, slots):
        trial = slots.trial()
        done = r.write(inner, target, trial, run, seen)
        if done is None:
            continue
        if r.cond is not None and not r.cond(trial, pos, run, would_write):
            continue
        if done is False or (not new and trial.own):
            # an existing repetition takes the value only when it is identical
            outcome = False if new else outcome
            continue
        trial.commit()
        used.add(id(r))
        return True
    return outcome


# -- the mapper ----------------------------------------------------------------------------------


@dataclass
class _State:
    """Per-message state while segments are written."""

    spec: OutboundMessage
    compiler: _Compiler
    run: _Run
    selected: dict[str, list[dict[str, Any]]]
    current: dict[str, dict[str, Any]]
    missing: dict[str, list[str]]
    specials: dict[str, str]
    counts: dict[str, int] = field(default_factory=dict)


class OutboundMapper:
    """Compiled mapping files for FHIR → HL7v2 (see the module docstring).

    ``messages``: the outbound files (:func:`engine.mappings.outbound_spec.load_outbound`); by
    default the built-in ones."""

    def __init__(
        self, files: MappingFiles, messages: Mapping[str, OutboundMessage] | None = None
    ) -> None:
        self.files = files
        if messages is None:
            # the loader's own ``outbound`` kind once it has one (site files layered), else ours
            messages = getattr(files, "outbound", None) or load_outbound()
        self.messages: dict[str, OutboundMessage] = dict(messages)
        site = files.site
        self._ctx = TransformContext(
            timezone=site.timezone,
            identifier_systems=tuple(site.identifier_systems.items()),
            identifier_system_base=site.identifier_system_base,
        )
        self._compilers: dict[str, _Compiler] = {}
        for spec in self.messages.values():
            where = f"outbound/{spec.message}.yaml"
            for tname in spec.reverse:
                if tname not in files.tables:
                    raise ConfigError(f"{where}, reverse: no code table named {tname!r}")
            compiler = _Compiler(files, spec.version, spec.reverse)
            self._compilers[spec.message] = compiler
            self._check_steps(spec, compiler, spec.segments)
            for t in spec.triggers:
                if not (t.structure or structure_for(spec.message, t.trigger)):
                    raise ConfigError(
                        f"{where}: trigger {t.trigger} has no message structure in HL7 table "
                        "0354; give 'structure'"
                    )

    def _check_steps(self, spec: OutboundMessage, compiler: _Compiler, steps: list[Step]) -> None:
        resources = {s.name: s.resource for s in spec.select}
        where = f"outbound/{spec.message}.yaml"
        for step in steps:
            if step.segments is not None:
                self._check_steps(spec, compiler, step.segments)
                continue
            own = step.from_ or (step.each or "").split(".", 1)[0] or None
            for use in step.maps:
                name, sel, accept, picks = _use(use)
                smap = self.files.segments.get(name)
                if smap is None:
                    raise ConfigError(
                        f"{where}: {step.segment} names segment map {name!r}; "
                        f"there is no segments/{name}.yaml"
                    )
                if smap.segment != step.segment:
                    raise ConfigError(
                        f"{where}: segment map {name!r} maps {smap.segment}, not {step.segment}"
                    )
                sel = sel or own
                if sel is None:
                    raise ConfigError(
                        f"{where}: {step.segment} map {name!r} reads no selection "
                        "(give the step 'from' or 'each', or the map 'from')"
                    )
                if resources[sel] != smap.resource and resources[sel] not in accept:
                    raise ConfigError(
                        f"{where}: segment map {name!r} reads a {smap.resource}, but selection "
                        f"{sel!r} holds {resources[sel]} resources"
                    )
                compiler.segment(name, picks)

    # -- messages --------------------------------------------------------------------------------

    def to_hl7(
        self,
        data: Mapping[str, Any],
        *,
        event: str | None = None,
        control_id: str,
        timestamp: str | datetime | None = None,
        message: str | None = None,
        receiving: tuple[str, str] = ("", ""),
        warnings: list[str] | None = None,
    ) -> Message:
        """Write one HL7v2 message from a FHIR Bundle (any type) or a single resource.

        ``warnings``, when given, receives a line for each thing the input holds that the message
        cannot carry (naming the FHIR element), so nothing is dropped without a word.

        ``event``: ``new`` (the default), ``update``, ``reschedule``, ``modify``, or a trigger
        event code (``A08``); ``message`` forces the message type when the input could make
        several (by default the outbound file with the highest priority whose anchor resource is
        in the input). ``timestamp`` is MSH-7 (an HL7 DTM or a datetime; now by default).
        Raises :class:`ConversionError` naming the FHIR element that is missing or wrong."""
        if not isinstance(data, Mapping) or not isinstance(data.get("resourceType"), str):
            raise ConversionError("not a FHIR resource or Bundle (no resourceType)")
        index = _Index(data)
        spec = self._spec_for(index, message)
        ts = _dtm(timestamp, self.files.site.timezone)
        run = _Run(self._ctx, "", index)
        state = _State(spec, self._compilers[spec.message], run, {}, {}, {}, {})
        for sel in spec.select:
            state.selected[sel.name] = self._select(sel, state)
        for sel in spec.select:
            if sel.required and not state.selected[sel.name]:
                raise ConversionError(self._missing_text(spec, sel, state))
        anchor = state.selected[spec.anchor]
        if not anchor:
            a = next(s for s in spec.select if s.name == spec.anchor)
            raise ConversionError(f"{spec.message} needs a {a.resource}: the input has none")
        for path in spec.resolve:
            name, _, rest = path.partition(".")
            sel = next(s for s in spec.select if s.name == name)
            for res in state.selected[name]:
                for ref in _refs(res, rest):
                    if index.resolve(ref) is None:
                        raise ConversionError(
                            f"{spec.message} needs every {sel.resource}.{rest} in the input: "
                            f"{ref} is not there"
                        )
        for req in spec.requires:
            sel = next(s for s in spec.select if s.name == req.select)
            got = state.selected[req.select]
            if not got or not _values(got[0], req.fhir):
                if (
                    got
                    and req.unless
                    and any(
                        any(_text(v) in allowed for v in _values(got[0], path))
                        for path, allowed in req.unless.items()
                    )
                ):
                    said = ", ".join(
                        f"{p} {'/'.join(str(v) for v in _values(got[0], p))}"
                        for p in req.unless
                        if _values(got[0], p)
                    )
                    run.note(
                        f"lacks {sel.resource}.{req.fhir}",
                        f"{sel.resource}.{req.fhir}: none ({said}), so {spec.message} "
                        f"{req.for_} is empty",
                    )
                    continue
                raise ConversionError(
                    f"{sel.resource}.{req.fhir} is required for {spec.message} {req.for_}"
                )
        choice = self._trigger(spec, anchor[0], event)
        run.trigger = choice.trigger
        structure = choice.structure or structure_for(spec.message, choice.trigger)
        site = self.files.site
        msg = Message.new(
            f"{spec.message}^{choice.trigger}^{structure}",
            control_id=control_id,
            timestamp=ts,
            version=spec.version,
            sending=(site.sending_application, site.sending_facility),
            receiving=receiving,
        )
        state.specials = {
            "$trigger": choice.trigger,
            "$timestamp": ts,
            "$control_id": control_id,
            "$sending_application": site.sending_application,
        }
        self._steps(spec.segments, state, msg, set())
        if warnings is not None:
            # one line per list: Coverage.class[1] (type subgroup), [3] (type rxgroup): ...
            unplaced: dict[str, list[tuple[str, list[str]]]] = {}
            for eid, (element, segments, _) in run.offered.items():
                if eid not in run.took:
                    list_path = element.split("[", 1)[0]
                    unplaced.setdefault(list_path, []).append((element, segments))
            for list_path, items in unplaced.items():
                names = [items[0][0]] + ["[" + e.split("[", 1)[1] for e, _ in items[1:]]
                segs = "/".join(dict.fromkeys(s for _, ss in items for s in ss))
                them = "it" if len(items) == 1 else "them"
                run.note(
                    f"unplaced {list_path}", f"{', '.join(names)}: no place for {them} in {segs}"
                )
            warnings.extend(run.lines())
        return msg

    def _spec_for(self, index: _Index, message: str | None) -> OutboundMessage:
        if message is not None:
            spec = self.messages.get(message)
            if spec is None:
                raise ConversionError(
                    f"no outbound file for {message} (have: {', '.join(sorted(self.messages))})"
                )
            return spec
        types = {r["resourceType"] for r in index.resources}
        best: OutboundMessage | None = None
        for spec in self.messages.values():
            anchor = next(s for s in spec.select if s.name == spec.anchor)
            if anchor.resource in types and (best is None or spec.priority > best.priority):
                best = spec
        for spec in self.messages.values() if best is None else ():
            if types & set(spec.also_from) and (best is None or spec.priority > best.priority):
                best = spec
        if best is None:
            wanted = sorted(
                {
                    next(s for s in m.select if s.name == m.anchor).resource
                    for m in self.messages.values()
                }
                | {t for m in self.messages.values() for t in m.also_from}
            )
            raise ConversionError(
                "nothing to write as HL7v2: the input has no "
                + " or ".join(wanted)
                + f" (it has {', '.join(sorted(types)) or 'no resources'})"
            )
        return best

    def _trigger(
        self, spec: OutboundMessage, anchor: dict[str, Any], event: str | None
    ) -> TriggerChoice:
        for t in spec.triggers:
            if event is not None and t.trigger == event:
                return t
        ev = event or "new"
        site_kind = self.files.site.outbound_adt
        for t in spec.triggers:
            if t.event is not None and ev not in t.event:
                continue
            if t.site is not None and site_kind not in t.site:
                continue
            if all(
                any(_text(v) in allowed for v in _values(anchor, path))
                for path, allowed in t.anchor.items()
            ):
                return t
        rtype = anchor["resourceType"]
        said = ", ".join(
            f"{rtype}.{p} " + ("/".join(str(v) for v in _values(anchor, p)) or "(none)")
            for p in sorted({p for t in spec.triggers for p in t.anchor})
        )
        raise ConversionError(
            f"no {spec.message} trigger event for the event {ev!r}"
            + (f" with {said}" if said else "")
            + f" (triggers: {', '.join(t.trigger for t in spec.triggers)})"
        )

    # -- selections ------------------------------------------------------------------------------

    def _select(self, sel: Select, state: _State) -> list[dict[str, Any]]:
        index = state.run.index
        out: list[dict[str, Any]] = []
        if not sel.via:
            out = [r for r in index.resources if r["resourceType"] == sel.resource]
        via = sel.via or (sel.or_via if not out else None)
        if via:
            out = self._via(sel, via, state)
        for path, target in sel.refers.items():
            targets = (
                [state.current[target]]
                if target in state.current
                else state.selected.get(target, [])
            )
            out = [
                r
                for r in out
                if any(
                    any(index.resolve_ref(ref) is t for t in targets)
                    for _, ref in _ref_objs(r, path)
                )
            ]
        for nv in sel.not_via:
            base, path = nv.split(".", 1)
            dropped = {
                id(index.resolve_ref(ref))
                for b in state.selected.get(base, [])
                for _, ref in _ref_objs(b, path)
            }
            out = [r for r in out if id(r) not in dropped]
        if sel.sort:
            sort_path = sel.sort

            def key(r: dict[str, Any]) -> tuple[bool, float, str]:
                vals = _values(r, sort_path)
                v = vals[0] if vals else None
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    return (False, float(v), "")
                return (v is None, 0.0, "" if v is None else str(v))

            out.sort(key=key)
        return out if sel.many else out[:1]

    def _via(self, sel: Select, via: str, state: _State) -> list[dict[str, Any]]:
        """The resources the references at ``via`` point to: those in the input first, then the
        stand-ins of references that name this type, then those of logical references (whose
        type is only presumed). A reference outside the input that makes no stand-in is
        remembered for the error and the warning."""
        index, run = state.run.index, state.run
        base, path = via.split(".", 1)
        base_sel = next(s for s in state.spec.select if s.name == base)
        bases = [state.current[base]] if base in state.current else state.selected.get(base, [])
        found: list[tuple[int, dict[str, Any], Any]] = []
        for b in bases:
            for holder, ref in _ref_objs(b, path):
                res = index.resolve_ref(ref)
                if res is not None:
                    if res.get("resourceType") == sel.resource:
                        found.append((0, res, holder))
                    continue
                element = f"{base_sel.resource}.{path}"
                made = index.stand_in(ref, sel.resource) if sel.stand_in else None
                if made is not None:
                    res, what = made
                    found.append((1 if ref.get("type") or ref.get("reference") else 2, res, holder))
                    run.note(
                        f"stand-in {element}",
                        f"{element} ({_ref_label(ref)}) is not in the input: the "
                        f"{sel.resource} is written from the reference ({what})",
                    )
                    continue
                literal = ref.get("reference")
                m = _TAIL_RE.search(literal) if isinstance(literal, str) else None
                named = ref.get("type") or (m.group(1).split("/", 1)[0] if m else None)
                if named in (None, sel.resource):
                    state.missing.setdefault(sel.name, []).append(_ref_label(ref))
                    if not sel.required:
                        run.note(
                            f"missing {element} {sel.resource}",
                            f"{element} ({_ref_label(ref)}) is not in the input: "
                            f"no {sel.resource} for it in the message",
                        )
        out: list[dict[str, Any]] = []
        for _, res, holder in sorted(found, key=lambda f: f[0]):
            if all(res is not o for o in out):
                out.append(res)
            if isinstance(holder, dict):
                run.took.add(id(holder))  # the participant that is the patient has its place
        return out

    def _resources(self, name: str, state: _State) -> list[dict[str, Any]]:
        if name in state.current:
            return [state.current[name]]
        sel = next(s for s in state.spec.select if s.name == name)
        depends = [sel.via.split(".", 1)[0]] if sel.via else []
        depends += list(sel.refers.values())
        if any(d in state.current for d in depends):
            return self._select(sel, state)
        return state.selected.get(name, [])

    def _missing_text(self, spec: OutboundMessage, sel: Select, state: _State) -> str:
        if sel.via:
            base, path = sel.via.split(".", 1)
            base_type = next(s.resource for s in spec.select if s.name == base)
            # references that may be to this type (``Patient/1``, or a urn:uuid: of any type)
            missing = [
                r
                for r in state.missing.get(sel.name, [])
                if not (m := _TAIL_RE.search(r)) or m.group(1).startswith(sel.resource + "/")
            ]
            if missing:
                return (
                    f"{spec.message} needs the {sel.resource} that {base_type}.{path} refers to, "
                    f"and the input does not have it ({', '.join(missing)})"
                )
            return f"{spec.message} needs a {sel.resource}: no {base_type}.{path} refers to one"
        text = f"{spec.message} needs a {sel.resource}"
        if sel.refers:
            text += " whose " + ", ".join(
                f"{p} refers to the " + next(s.resource for s in spec.select if s.name == t)
                for p, t in sel.refers.items()
            )
        return text + ": the input has none"

    # -- segments --------------------------------------------------------------------------------

    def _each(self, each: str, state: _State) -> Iterator[tuple[str, dict[str, Any]]]:
        name, _, path = each.partition(".")
        for res in self._resources(name, state):
            if not path:
                yield name, res
                continue
            elements = res.get(path)
            for el in elements if isinstance(elements, list) else []:
                copy = {**res, path: [el]}
                state.run.copies[id(copy)] = res
                yield name, copy

    def _steps(
        self,
        steps: list[Step],
        state: _State,
        msg: Message,
        given: set[tuple[int, str, int]],
    ) -> None:
        for step in steps:
            if step.segments is not None:
                assert step.each is not None
                for name, item in list(self._each(step.each, state)):
                    saved = dict(state.current)
                    state.current[name] = item
                    self._steps(step.segments, state, msg, set())
                    state.current = saved
            elif step.each is not None:
                for name, item in list(self._each(step.each, state)):
                    saved = dict(state.current)
                    state.current[name] = item
                    self._segment(step, state, msg, set())
                    state.current = saved
            else:
                self._segment(step, state, msg, given)

    def _segment(
        self,
        step: Step,
        state: _State,
        msg: Message,
        given: set[tuple[int, str, int]],
    ) -> None:
        assert step.segment is not None
        seg_id = step.segment
        slots = _Slots(shape=_shape(seg_id, state.spec.version))
        specials = {**state.specials, "$set_id": str(state.counts.get(seg_id, 0) + 1)}
        for path, value in step.set.items():
            slots.own[_key(path)] = specials.get(value, value)
        own = step.from_ or (step.each or "").split(".", 1)[0] or None
        wrote = False
        run = state.run
        run.segment = seg_id
        took: set[int] = set()
        for use in step.maps:
            name, sel, _accept, picks = _use(use)
            sel = sel or own
            assert sel is not None
            found = self._resources(sel, state)
            if not found:
                continue
            plan = state.compiler.segment(name, picks)
            first = found[0]
            run.where = [str(first.get("resourceType"))]
            done, taken, _ = _apply(plan, first, (), slots, run, given)
            given.update(taken)
            wrote = done or wrote
            took |= _offered(plan, first, taken, seg_id, run)
        if not wrote and not step.always:
            return
        for target, source in step.fill_from.items():
            t, src = parse_path(target), parse_path(source)
            if not slots.has(t.field, t.component):
                for k in list(slots.keys()):
                    if k[0] == src.field:
                        slots.own[(t.field, k[1], k[2], k[3])] = slots.get(k)
        for path, value in step.defaults.items():
            p = parse_path(path)
            if not slots.has(p.field, p.component):
                slots.own[_key(path)] = specials.get(value, value)
        mine = self._resources(own, state) if own else []
        res: dict[str, Any] | None = mine[0] if mine else None
        for path, dflt in step.default_from.items():
            p = parse_path(path)
            if res is None or slots.has(p.field, p.component):
                continue
            for fpath in dflt.fhir:
                got = _values(res, fpath)
                parts = get_transform(dflt.transform).outbound(got[0], run.ctx) if got else []
                if parts and _put_parts(slots, _key(path)[: 3 if p.component else 2], parts):
                    rtype = res.get("resourceType")
                    run.note(
                        f"default {path}",
                        f"{dflt.instead_of}: none; {path} is {rtype}.{fpath}",
                    )
                    break
        for path, element in step.id_without.items():
            p = parse_path(path)
            rid = state.run.index.own_id(res) if res is not None else None
            if rid and not slots.has(p.field, p.component):
                slots.own[_key(path)] = rid
                run.note(
                    f"id {path}",
                    f"{element}: none; {path} is the {res.get('resourceType') if res else ''}'s "
                    f"id ({rid}), which is not a business identifier",
                )
        for path in step.skip_without:
            p = parse_path(path)
            if not slots.has(p.field, p.component):
                run.took -= took  # left out with the segment
                return
        for path, element in step.requires.items():
            p = parse_path(path)
            if not slots.has(p.field, p.component):
                raise ConversionError(f"{element} is required for {state.spec.message} {path}")
        for path, element in step.null_without.items():
            p = parse_path(path)
            if not slots.has(p.field, p.component):
                slots.own[_key(path)] = '""'
                run.note(
                    f"null {path}",
                    f'{element}: none, and HL7 requires {path}: it is sent as the HL7 null ""',
                )
        for kind, text in slots.notes:
            run.note(kind, text)
        seg = msg.add(seg_id)
        for (f, r, c, s), text in sorted(slots.own.items()):
            seg.set(f, text, r, c, s)
        state.counts[seg_id] = state.counts.get(seg_id, 0) + 1


def _offered(plan: _Plan, res: dict[str, Any], taken: Seen, segment: str, run: _Run) -> set[int]:
    """Remember the list elements of ``res`` a segment map was offered (``Coverage.class[2]``)
    and those it took, so that what no segment took is reported; give those it took."""
    took: set[int] = set()
    for g in plan.groups:
        if len(g.steps) != 1:
            continue
        for key, value in _items(res, g.steps):
            if key[2] < 0 or not isinstance(value, dict):
                continue
            if key in taken and id(value) not in run.took:
                run.took.add(id(value))
                took.add(id(value))
            got = run.offered.get(id(value))
            if got is None:
                index = _index_text(run, res, g, key, value)
                element = f"{res.get('resourceType')}.{g.steps[0]}{index}{_what(value)}"
                run.offered[id(value)] = (element, [segment], value)
            elif segment not in got[1]:
                got[1].append(segment)
    return took


def _what(value: dict[str, Any]) -> str:
    """`` (type rxgroup)``: what tells one element of a list from another, for a warning."""
    for path in ("type.coding.code", "type.text", "use", "system", "code.coding.code"):
        got = [v for v in _values(value, path) if isinstance(v, str)]
        if got:
            return f" ({path.split('.', 1)[0]} {got[0]})"
    return ""


def _kind(element: str) -> str:
    """``Coverage.class (type rxgroup)`` for ``Coverage.class[2] (type rxgroup)``."""
    return re.sub(r"\[\d+\]", "", element)


def _use(use: MapUse | str) -> tuple[str, str | None, list[str], tuple[Pick, ...]]:
    if isinstance(use, str):
        return use, None, [], ()
    return use.map, use.from_, use.accept, tuple(use.pick)


def _key(path: str) -> Key:
    p = parse_path(path)
    return (p.field, p.repetition, p.component or 1, p.subcomponent or 1)


def _condition(c: Condition, level: str, forcible: bool, *, vacant: bool = False) -> CondFn:
    """A ``when`` checked on what has been written (see the module docstring). ``vacant``: the
    condition is that the rule's own place is empty (``{component: 1, present: false}`` on a
    rule writing component 1), checked on what was there before the rule wrote: the rule writes
    only where no other rule did (XPN-1 from HumanName.text when there is no family name)."""
    allowed = set(c.in_) if c.in_ is not None else None
    first = c.in_[0] if c.in_ else None
    denied = set(c.not_in or ())
    triggers = set(c.trigger) if c.trigger else None
    # ``any``: one of these must hold as well, each checked on what has been written (never
    # forced: writing a code to make an alternative true would be a guess)
    alternatives = [_condition(sub, level, False) for sub in c.any or ()]

    def where(pos: Pos) -> Key | None:
        if level == "field":
            return (c.field or 1, 1, c.component or 1, c.subcomponent or 1)
        p: Pos | None = pos
        if c.component is not None:
            p = _child(pos, c.component)
        if p is not None and c.subcomponent is not None:
            p = _child(p, c.subcomponent)
        return _leaf(p) if p is not None else None

    def check(slots: _Slots, pos: Pos, run: _Run, would_write: Callable[[Key], str] | None) -> bool:
        if triggers is not None and run.trigger not in triggers:
            return False
        if alternatives and not any(a(slots, pos, run, would_write) for a in alternatives):
            return False
        if c.field is None and c.component is None:
            return True
        key = where(pos)
        if key is None:
            return c.present is False or (allowed is None and c.present is None)
        if vacant:
            return not (slots.parent or slots).get(key)
        text = slots.get(key)
        if not text and forcible:
            if first and first not in denied:
                slots.put(key, first)
                text = first
        elif not text and would_write is not None:
            text = would_write(key)
        if allowed is not None and text not in allowed:
            return False
        if text in denied:
            return False
        return c.present is None or bool(text) == c.present

    return check


def _dtm(ts: str | datetime | None, tz: str) -> str:
    if ts is None:
        ts = datetime.now(ZoneInfo(tz))
    if isinstance(ts, datetime):
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=ZoneInfo(tz))
        return ts.strftime("%Y%m%d%H%M%S%z")
    return ts
