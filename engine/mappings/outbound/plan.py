"""What to write: the segment and datatype maps compiled in reverse, once per outbound message type.

Each rule that moves an HL7 element to a FHIR element is read back, from the FHIR element to the
HL7 element (rules with ``direction: in`` are skipped), into a :class:`CompiledRule`: where it
writes (field, component, subcomponent; whether and how often it repeats), how it writes a value
(:data:`Writer`, or :class:`Nested` for a datatype, a referred-to resource or a ``build``), its
``when`` condition (:data:`CondFn`) and which elements it takes (a ``wrap`` with constants, an
outbound file's ``pick``). A :class:`Plan` holds one map's rules grouped by the FHIR element they
read, and the order those groups are offered their elements; :mod:`.apply` runs it.

``table`` rules write the HL7 code (:func:`reverse_table`); a ``value`` rule writes only when its
``when`` names codes (:func:`flag_rule`); ``when`` conditions are checked on what is written
(:func:`condition`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, Literal

from engine.errors import ConfigError
from engine.hl7v2.path import parse_path
from engine.mappings.loader import MappingFiles
from engine.mappings.outbound.fhir import has_constants, match, shown, text_of
from engine.mappings.outbound.run import Run
from engine.mappings.outbound.slots import (
    Key,
    Pos,
    Shape,
    Slots,
    child,
    leaf,
    loc,
    put_parts,
    shape_of,
)
from engine.mappings.outbound_spec import Pick
from engine.mappings.spec import CodeTable, Condition, Rule
from engine.mappings.transforms import get_transform

__all__ = [
    "CompiledRule",
    "CondFn",
    "Group",
    "MapCompiler",
    "Nested",
    "Plan",
    "Seen",
    "Writer",
    "condition",
    "flag_rule",
    "reverse_table",
]

#: the elements already given to a rule: (owner id, key, index)
Seen = AbstractSet[tuple[int, str, int]]
#: (FHIR value, where, slots, run, elements already given) -> written (True), disagrees with
#: what is written there (False), or nothing to write (None)
Writer = Callable[[Any, Pos, Slots, Run, Seen], bool | None]
#: (slots, where the map writes, run, what the map would write there) -> holds?
CondFn = Callable[[Slots, Pos, Run, Callable[[Key], str] | None], bool]


@dataclass
class Plan:
    """A segment map (level field) or datatype map (level component), compiled for writing."""

    level: Literal["field", "component"]
    groups: list[Group] = field(default_factory=list)
    #: group indexes in the order they are offered their elements: a group whose path extends
    #: another's (``productOrService.coding`` of ``productOrService``) before it
    rounds: list[list[int]] = field(default_factory=list)


@dataclass(frozen=True)
class Nested:
    """A value written with another map: a datatype map (``type``), the resource a Reference
    points to (``type`` with ``resource``: PV1-7 from the Practitioner) or another segment map of
    the same segment (``build``, which names its own fields)."""

    plan: Plan
    #: follow the Reference to a resource of this type and write that
    resource: str | None = None
    build: bool = False


@dataclass
class CompiledRule:
    """One rule read backwards: where it writes, how, and which elements it takes."""

    order: int
    field: int
    comp: int
    sub: int
    repeats: bool
    max_rep: int  # 0: unbounded
    write: Writer | Nested
    cond: CondFn | None
    wrap: Any
    where: tuple[tuple[str, frozenset[str]], ...]
    conditioned: bool
    constrained: bool


@dataclass
class Group:
    """The rules of a map that read one FHIR element."""

    steps: tuple[str, ...]
    rules: list[CompiledRule] = field(default_factory=list)


class MapCompiler:
    """The segment and datatype maps compiled for writing one outbound message type (its HL7
    version, and its own ``reverse`` codes)."""

    def __init__(
        self, files: MappingFiles, version: str, reverse: Mapping[str, Mapping[str, str]]
    ) -> None:
        self.files = files
        self.version = version
        self.reverse = reverse
        self._dt_plans: dict[str, Plan] = {}
        self._seg_plans: dict[tuple[str, str], Plan] = {}

    def segment(self, name: str, picks: tuple[Pick, ...] = ()) -> Plan:
        """The plan of a segment map, with the outbound file's picks for it."""
        key = (name, "|".join(p.model_dump_json() for p in picks))
        plan = self._seg_plans.get(key)
        if plan is not None:
            return plan
        smap = self.files.segments[name]
        plan = Plan("field")
        self._seg_plans[key] = plan  # before the rules: a build may name its own map
        where = self.files.origin.get(f"segments/{name}", name)
        self._fill(plan, smap.rules, where, smap.segment, picks)
        return plan

    def datatype(self, name: str, origin: str) -> Plan:
        """The plan of a datatype map; ``origin`` names the rule that asks, for the error."""
        plan = self._dt_plans.get(name)
        if plan is not None:
            return plan
        dmap = self.files.datatypes.get(name)
        if dmap is None:
            raise ConfigError(f"{origin}: no datatype map named {name!r} (datatypes/{name}.yaml)")
        plan = Plan("component")
        self._dt_plans[name] = plan  # before the rules: a map may name itself
        self._fill(plan, dmap.rules, self.files.origin.get(f"datatypes/{name}", name), None, ())
        return plan

    # -- one map ---------------------------------------------------------------------------------

    def _fill(
        self,
        plan: Plan,
        rules: list[Rule],
        where: str,
        segment: str | None,
        picks: tuple[Pick, ...],
    ) -> None:
        level = plan.level
        written, whole = self._places(rules, level)
        shape = shape_of(segment, self.version) if segment else None
        groups: dict[tuple[str, ...], Group] = {}
        for i, rule in enumerate(rules):
            if rule.direction == "in":
                continue
            steps = tuple(s.removesuffix("[]") for s in rule.fhir.split("."))
            if rule.value is not None:
                flag = flag_rule(rule, i, level)
                if flag is not None:
                    groups.setdefault(steps, Group(steps)).rules.append(flag)
                continue
            group = groups.setdefault(steps, Group(steps))
            picked = self._picked(rule, steps, picks)
            cond = _when(rule, level, written, whole)
            group.rules.append(
                self._compile(rule, i, level, shape, cond, picked, f"{where}, rules[{i}]")
            )
        for g in groups.values():
            g.rules.sort(key=lambda r: (not r.constrained, r.order))
        plan.groups = list(groups.values())
        plan.rounds = _rounds(plan.groups)

    def _places(self, rules: list[Rule], level: str) -> tuple[set[int], bool]:
        """What a map writes (fields, or components; whether a rule writes the whole element),
        so that a condition on anything else may be made true."""
        written: set[int] = set()
        whole = False
        for r in rules:
            if level == "field":
                written.update(self._fields_of(r))
            elif r.component is None:
                whole = whole or r.value is None
            else:
                written.add(r.component)
        return written, whole

    def _picked(
        self, rule: Rule, steps: tuple[str, ...], picks: tuple[Pick, ...]
    ) -> tuple[tuple[str, frozenset[str]], ...]:
        """The ``where`` of the picks that name one of the rule's fields and its FHIR element."""
        where_pick: list[tuple[str, frozenset[str]]] = []
        for pick in picks:
            p = parse_path(pick.field)
            fields = {rule.field} if rule.field is not None else self._fields_of(rule)
            if p.field in fields and pick.fhir.removesuffix("[]") == ".".join(steps):
                where_pick += [(k, frozenset(v)) for k, v in pick.where.items()]
        return tuple(where_pick)

    def _compile(
        self,
        rule: Rule,
        order: int,
        level: str,
        shape: Shape | None,
        cond: CondFn | None,
        picked: tuple[tuple[str, frozenset[str]], ...],
        key: str,
    ) -> CompiledRule:
        fno = rule.field or 0
        repeats = level == "field" and rule.repeats and rule.build is None
        max_rep = shape[fno - 1][0] if repeats and shape and 0 < fno <= len(shape) else 0
        return CompiledRule(
            order=order,
            field=fno,
            comp=rule.component or (1 if rule.subcomponent else 0),
            sub=rule.subcomponent or 0,
            repeats=repeats,
            max_rep=max_rep,
            write=self._writer(rule, key),
            cond=cond,
            wrap=rule.wrap,
            where=picked,
            conditioned=cond is not None,
            constrained=bool(picked) or (rule.wrap is not None and has_constants(rule.wrap)),
        )

    def _fields_of(self, rule: Rule, depth: int = 0) -> set[int]:
        if rule.field is not None:
            return {rule.field}
        if rule.build is not None and depth < 4:
            sub = self.files.segments.get(rule.build)
            if sub is not None:
                return {f for r in sub.rules for f in self._fields_of(r, depth + 1)}
        return set()

    # -- how one rule writes ---------------------------------------------------------------------

    def _writer(self, rule: Rule, key: str) -> Writer | Nested:
        if rule.build is not None:
            if rule.build not in self.files.segments:
                raise ConfigError(f"{key}: no segment map named {rule.build!r}")
            return Nested(self.segment(rule.build), build=True)
        if rule.type:
            return Nested(self.datatype(rule.type, key), resource=rule.resource or None)
        if rule.table:
            return self._code_writer(rule, key)
        name = rule.transform or "text"
        if name == "text":
            return _write_text
        return _transform_writer(name)

    def _code_writer(self, rule: Rule, key: str) -> Writer:
        """A ``table`` rule: the HL7 code for the FHIR code, Coding or CodeableConcept."""
        tname = rule.table
        assert tname is not None
        table = self.files.tables.get(tname)
        if table is None:
            raise ConfigError(f"{key}: no code table named {tname!r} (tables/{tname}.yaml)")
        code_of = reverse_table(table, rule.as_, self.reverse.get(tname, {}))
        as_ = rule.as_
        hl7_table = f"HL7 table {table.hl7_table}" if table.hl7_table else "the HL7 table"
        version = self.version

        def write_code(value: Any, pos: Pos, slots: Slots, run: Run, seen: Seen) -> bool | None:
            code, approximate = code_of(value)
            said = shown(value)
            if code is None:
                if not run.quiet and said:
                    got = run.misses.setdefault(
                        run.path(), (f"{run.path()} {said}: no code for it in ", [])
                    )
                    where = f"{hl7_table} (tables/{tname}.yaml)"
                    if where not in got[1]:
                        got[1].append(where)
                return None
            done = put_parts(slots, pos, [code])
            if done is False and _reads_back(table, as_, slots.get(leaf(pos)), value):
                return True  # the code already there means the same (CP is a phone)
            if done and approximate:
                slots.notes.append(
                    (
                        f"approximate {run.path()} {said}",
                        f"{run.path()} {said}: {hl7_table} (v{version}) has no code that "
                        f"means it; {loc(run.segment, pos)} is {code}",
                    )
                )
            return done

        return write_code


def _write_text(value: Any, pos: Pos, slots: Slots, run: Run, seen: Seen) -> bool | None:
    """A primitive written as it is."""
    text = text_of(value)
    return None if text is None else put_parts(slots, pos, [text])


def _transform_writer(name: str) -> Writer:
    """A ``transform`` rule: the parts its outbound function gives."""
    out = get_transform(name).outbound

    def write_transform(value: Any, pos: Pos, slots: Slots, run: Run, seen: Seen) -> bool | None:
        return put_parts(slots, pos, out(value, run.ctx))

    return write_transform


def _rounds(groups: list[Group]) -> list[list[int]]:
    """Group indexes by height: a group whose path extends another's comes a round before it."""
    height: dict[int, int] = {}

    def h(i: int) -> int:
        if i not in height:
            steps = groups[i].steps
            below = [
                j
                for j, g in enumerate(groups)
                if len(g.steps) > len(steps) and g.steps[: len(steps)] == steps
            ]
            height[i] = 1 + max((h(j) for j in below), default=-1)
        return height[i]

    for i in range(len(groups)):
        h(i)
    return [
        [i for i in range(len(groups)) if height[i] == k]
        for k in range(max(height.values(), default=-1) + 1)
    ]


# -- codes ---------------------------------------------------------------------------------------


def _reads_back(table: CodeTable, as_: str, text: str, value: Any) -> bool:
    """Does the HL7 code ``text`` read back (inbound, through ``table``) as ``value``?"""
    fhir = table.map.get(text, table.default) if text else None
    if fhir is None:
        return False
    if as_ == "code":
        return text_of(value) == fhir
    if not isinstance(value, dict):
        return False
    codings = value.get("coding") if as_ == "CodeableConcept" else [value]
    return any(isinstance(c, dict) and c.get("code") == fhir for c in codings or [])


def reverse_table(
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
            text = text_of(value)
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


# -- value rules and conditions ------------------------------------------------------------------


def flag_rule(rule: Rule, order: int, level: str) -> CompiledRule | None:
    """A ``value`` rule read backwards: inbound it sets a constant when an HL7 element holds a
    code (``type: principal`` when DG1-15 is 1); outbound, an element equal to the constant
    writes that code. Only a condition naming codes (``in``) can be written."""
    c = rule.when
    if c is None or not c.in_ or (c.field is None and c.component is None):
        return None
    if level == "field" and c.field is None:
        return None
    const, code = rule.value, c.in_[0]

    def write_flag(value: Any, pos: Pos, slots: Slots, run: Run, seen: Seen) -> bool | None:
        return put_parts(slots, pos, [code]) if match(const, value, False, []) else None

    when_trigger = (
        condition(Condition.model_validate({"trigger": c.trigger}), level, False)
        if c.trigger
        else None
    )
    return CompiledRule(
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


def _when(rule: Rule, level: str, written: set[int], whole: bool) -> CondFn | None:
    """A rule's ``when`` compiled: forcible when no rule of the map writes the element it names,
    vacant when it asks that the rule's own place be empty (see :func:`condition`)."""
    w = rule.when
    if w is None:
        return None
    forcible = (
        w.field not in written if level == "field" else not whole and w.component not in written
    )
    vacant = (
        w.present is False
        and w.in_ is None
        and not w.not_in
        and (w.field, w.component, w.subcomponent)
        == (rule.field if level == "field" else None, rule.component, rule.subcomponent)
    )
    return condition(w, level, forcible, vacant=vacant)


def condition(c: Condition, level: str, forcible: bool, *, vacant: bool = False) -> CondFn:
    """A ``when`` checked on what has been written: rules without a condition are offered their
    elements first, and a sibling not written yet counts as what the map would write there.
    ``forcible``: no rule of the map writes the element named, so the condition is made true by
    writing its first listed value (SCH-10 ``min`` for SCH-9 in minutes). ``vacant``: the
    condition is that the rule's own place is empty (``{component: 1, present: false}`` on a
    rule writing component 1), checked on what was there before the rule wrote: the rule writes
    only where no other rule did (XPN-1 from HumanName.text when there is no family name)."""
    allowed = set(c.in_) if c.in_ is not None else None
    first = c.in_[0] if c.in_ else None
    denied = set(c.not_in or ())
    triggers = set(c.trigger) if c.trigger else None
    # ``any``: one of these must hold as well, each checked on what has been written (never
    # forced: writing a code to make an alternative true would be a guess)
    alternatives = [condition(sub, level, False) for sub in c.any or ()]

    def where(pos: Pos) -> Key | None:
        if level == "field":
            return (c.field or 1, 1, c.component or 1, c.subcomponent or 1)
        p: Pos | None = pos
        if c.component is not None:
            p = child(pos, c.component)
        if p is not None and c.subcomponent is not None:
            p = child(p, c.subcomponent)
        return leaf(p) if p is not None else None

    def check(slots: Slots, pos: Pos, run: Run, would_write: Callable[[Key], str] | None) -> bool:
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
