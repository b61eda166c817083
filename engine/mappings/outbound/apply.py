"""Writing: a plan applied to a resource, and one segment of the outbound file written and added.

Who gets what. A list element goes to the first rule that takes it, and only to that one (PID-3,
PID-2, PID-4, PID-18 and PID-19 all read ``identifier[]``); rules whose ``wrap`` holds constants
are offered elements first, and an element that fits a wrap exactly (nothing in it the wrap would
drop) before one that fits loosely. A single value goes to every rule that takes it (inbound, the
first of those HL7 elements sets it, so they must agree). A rule naming a more specific path is
offered its elements before the rule naming the whole. What an element already wrote in the
segment group (IN1-36) is not written again (IN2-61). Two rules writing one place must agree; a
datatype or build value with a part that disagrees is not written at all, so two practitioners'
names are never merged.

A segment step (:func:`write_segment`) runs its maps, then the outbound file's ``fill_from``,
``defaults``, ``default_from``, ``id_without``, ``skip_without``, ``requires`` and
``null_without``, and adds the segment to the message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.errors import ConversionError
from engine.hl7v2.codec import Message
from engine.hl7v2.path import parse_path
from engine.mappings.outbound.fhir import (
    Item,
    items_at,
    names_type,
    ref_label,
    unwrap,
    values_at,
    what,
)
from engine.mappings.outbound.plan import CompiledRule, Group, Nested, Plan, Seen
from engine.mappings.outbound.run import Run
from engine.mappings.outbound.select import State, map_use, resources
from engine.mappings.outbound.slots import Key, Pos, Slots, child, key_of, loc, put_parts, shape_of
from engine.mappings.outbound_spec import Step
from engine.mappings.transforms import get_transform

__all__ = ["Applied", "apply", "write_segment"]

#: whether anything was written, which list elements were, and whether an element was left out
#: because it disagreed with what its rule would have overwritten
Applied = tuple[bool, set[tuple[int, str, int]], bool]


def apply(plan: Plan, obj: Any, pos: Pos, slots: Slots, run: Run, seen: Seen) -> Applied:
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
    all_items = [items_at(obj, g.steps) for g in plan.groups]
    pending = [[it for it in items if it[0] not in seen] for items in all_items]
    would_write = _would_write(plan, all_items, pos, slots, run, seen)
    offer = _Offer(plan, obj, pos, slots, run, seen, would_write)
    for rnd in plan.rounds:
        for strict in (True, False):
            for conditioned in (False, True):
                for gi in rnd:
                    group = plan.groups[gi]
                    rules = [r for r in group.rules if r.conditioned == conditioned]
                    if rules and pending[gi]:
                        pending[gi] = offer.group(group, rules, pending[gi], strict)
    return offer.wrote, offer.taken, offer.conflict


def _would_write(
    plan: Plan, all_items: list[list[Item]], pos: Pos, slots: Slots, run: Run, seen: Seen
) -> Callable[[Key], str]:
    """What the map would write at a leaf were no condition checked (worked out once, quietly,
    on first use): a condition on a sibling not written yet reads this."""
    cache: list[Slots] = []

    def would_write(key: Key) -> str:
        if not cache:
            p = slots.trial()
            quiet, run.quiet = run.quiet, True
            for gi, g in enumerate(plan.groups):
                for _, value in all_items[gi]:
                    for r in g.rules:
                        inner = unwrap(r.wrap, value, False)[1] if r.wrap is not None else value
                        target = _targets(plan, r, pos, p)
                        if inner is None or not target:
                            continue
                        t = p.trial()
                        if write(r, inner, target[-1][0], t, run, seen):
                            t.commit()
            run.quiet = quiet
            cache.append(p)
        return cache[0].get(key)

    return would_write


class _Offer:
    """The elements of one resource or value offered to one plan's rules, and what came of it."""

    def __init__(
        self,
        plan: Plan,
        obj: Any,
        pos: Pos,
        slots: Slots,
        run: Run,
        seen: Seen,
        would_write: Callable[[Key], str],
    ) -> None:
        self.plan, self.obj, self.pos, self.slots, self.run = plan, obj, pos, slots, run
        self.seen = seen
        self.would_write = would_write
        #: rules that took a value (a rule that does not repeat takes one)
        self.used: set[int] = set()
        self.taken: set[tuple[int, str, int]] = set()
        self.accepted: set[tuple[int, str, int]] = set()
        self.wrote = False
        self.conflict = False

    def group(
        self, group: Group, rules: list[CompiledRule], pending: list[Item], strict: bool
    ) -> list[Item]:
        """Offer a group's pending elements to its rules; give those still to offer."""
        run = self.run
        left: list[Item] = []
        label = ".".join(group.steps)
        for item in pending:
            key, value = item
            now = self.seen | self.taken if self.taken else self.seen
            results: list[bool | None] = []
            run.where.append(label + _index_text(run, self.obj, group, key, value))
            try:
                for r in rules:
                    got = self._try(r, value, strict, now)
                    results.append(got)
                    if got and key[2] >= 0:
                        break  # a list element goes to one rule only
                if any(results):
                    run.wrote.add(run.path())
            finally:
                run.where.pop()
            if any(results):
                self.wrote = True
                self.accepted.add(key)
                if key[2] >= 0:
                    self.taken.add(key)
                    continue
            left.append(item)  # a single value stays offered to later rules
            if False in results and not strict and key not in self.accepted:
                self.conflict = True
        return left

    def _try(self, r: CompiledRule, value: Any, strict: bool, seen: Seen) -> bool | None:
        """Offer one FHIR value to one rule: True when the rule takes it (and it is written),
        False when the rule applies but the value disagrees with what is written, else None."""
        if not r.repeats and id(r) in self.used:
            return None
        if r.where and not all(
            any(isinstance(v, str) and v in allowed for v in values_at(value, path))
            for path, allowed in r.where
        ):
            return None
        inner = value
        if r.wrap is not None:
            ok, inner = unwrap(r.wrap, value, strict)
            if not ok:
                return None
        outcome: bool | None = None
        for target, new in _targets(self.plan, r, self.pos, self.slots):
            trial = self.slots.trial()
            done = write(r, inner, target, trial, self.run, seen)
            if done is None:
                continue
            if r.cond is not None and not r.cond(trial, self.pos, self.run, self.would_write):
                continue
            if done is False or (not new and trial.own):
                # an existing repetition takes the value only when it is identical
                outcome = False if new else outcome
                continue
            trial.commit()
            self.used.add(id(r))
            return True
        return outcome


def _index_text(run: Run, obj: Any, group: Group, key: tuple[int, str, int], value: Any) -> str:
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


def _targets(plan: Plan, r: CompiledRule, pos: Pos, slots: Slots) -> list[tuple[Pos, bool]]:
    """Where a rule may write: (position, whether it is a new repetition). A repeating field
    offers its existing repetitions (to be confirmed only by an identical value) and the next."""
    if plan.level == "component":
        target: Pos | None = pos
        if r.comp:
            target = child(pos, r.comp)
        if target is not None and r.sub:
            target = child(target, r.sub)
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


# -- one rule writing one value ------------------------------------------------------------------


def write(r: CompiledRule, value: Any, pos: Pos, slots: Slots, run: Run, seen: Seen) -> bool | None:
    """Write a value with a rule: True when written, False when it disagrees with what is
    written there, None when there is nothing to write."""
    how = r.write
    if not isinstance(how, Nested):
        return how(value, pos, slots, run, seen)
    if how.build:
        return _nested(apply(how.plan, value, (), slots, run, seen))
    if how.resource is not None:
        return _write_resource(how.plan, how.resource, value, pos, slots, run)
    return _nested(apply(how.plan, value, pos, slots, run, seen))


def _nested(result: Applied) -> bool | None:
    """A datatype or a build as one value: any part that disagrees with what is written rejects
    the whole (another practitioner's name is not merged into this one's)."""
    wrote, _, conflict = result
    return False if conflict else (True if wrote else None)


def _write_resource(
    plan: Plan, rtype: str, value: Any, pos: Pos, slots: Slots, run: Run
) -> bool | None:
    """Follow a Reference into the input and write the resource it points to with the rule's
    datatype map; one outside the input that names this type writes its stand-in (noted)."""
    target = run.index.resolve_ref(value)
    made = ""
    if target is None:
        # a rule's reference may be to one of several types (Claim.provider): only one that
        # names its type stands in
        got = run.index.stand_in(value, rtype, presume=False)
        if got is None:
            named = names_type(value)
            if not run.quiet and named in (None, rtype):
                why = "names no type" if named is None else "carries nothing"
                run.misses.setdefault(
                    run.path(),
                    (f"{run.path()} ({ref_label(value)}) is not in the input and {why}", [""]),
                )
            return None
        target, made = got
    if target.get("resourceType") != rtype:
        return None
    outer, run.where = run.where, [rtype]
    try:
        done = _nested(apply(plan, target, pos, slots, run, frozenset()))
    finally:
        run.where = outer
    if done and made:
        slots.notes.append(
            (
                f"stand-in {run.path()}",
                f"{run.path()} ({ref_label(value)}) is not in the input: "
                f"{loc(run.segment, pos)} is written from what the reference carries ({made})",
            )
        )
    return done


# -- one segment ---------------------------------------------------------------------------------


def write_segment(step: Step, state: State, msg: Message, given: set[tuple[int, str, int]]) -> None:
    """Write one segment step into ``msg`` (or leave it out: no data and not ``always``, or a
    ``skip_without`` field empty). ``given``: the list elements earlier segments of the group
    took. Raises :class:`ConversionError` when a ``requires`` field stays empty."""
    assert step.segment is not None
    seg_id = step.segment
    slots = Slots(shape=shape_of(seg_id, state.spec.version))
    specials = {**state.specials, "$set_id": str(state.counts.get(seg_id, 0) + 1)}
    for path, value in step.set.items():
        slots.own[key_of(path)] = specials.get(value, value)
    own = step.from_ or (step.each or "").split(".", 1)[0] or None
    run = state.run
    run.segment = seg_id
    wrote, took = _write_maps(step, own, state, slots, given)
    if not wrote and not step.always:
        return
    _fill_empty(step, slots, specials)
    mine = resources(own, state) if own else []
    res: dict[str, Any] | None = mine[0] if mine else None
    _fill_from_resource(step, slots, res, run)
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
            slots.own[key_of(path)] = '""'
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


def _write_maps(
    step: Step, own: str | None, state: State, slots: Slots, given: set[tuple[int, str, int]]
) -> tuple[bool, set[int]]:
    """Apply the step's maps, each to the first resource of its selection; say whether any
    wrote, and which list elements they took (given back if the segment is left out)."""
    run = state.run
    wrote = False
    took: set[int] = set()
    for use in step.maps:
        name, sel, _accept, picks = map_use(use)
        sel = sel or own
        assert sel is not None
        found = resources(sel, state)
        if not found:
            continue
        plan = state.compiler.segment(name, picks)
        first = found[0]
        run.where = [str(first.get("resourceType"))]
        done, taken, _ = apply(plan, first, (), slots, run, given)
        given.update(taken)
        wrote = done or wrote
        took |= _offered(plan, first, taken, step.segment or "", run)
    return wrote, took


def _fill_empty(step: Step, slots: Slots, specials: dict[str, str]) -> None:
    """``fill_from`` (a field copied into another the maps left empty), then ``defaults``."""
    for target, source in step.fill_from.items():
        t, src = parse_path(target), parse_path(source)
        if not slots.has(t.field, t.component):
            for k in list(slots.keys()):
                if k[0] == src.field:
                    slots.own[(t.field, k[1], k[2], k[3])] = slots.get(k)
    for path, value in step.defaults.items():
        p = parse_path(path)
        if not slots.has(p.field, p.component):
            slots.own[key_of(path)] = specials.get(value, value)


def _fill_from_resource(step: Step, slots: Slots, res: dict[str, Any] | None, run: Run) -> None:
    """``default_from`` (other FHIR elements of the step's resource) and ``id_without`` (the
    resource's own id) for fields the maps left empty, each with a warning."""
    for path, dflt in step.default_from.items():
        p = parse_path(path)
        if res is None or slots.has(p.field, p.component):
            continue
        for fpath in dflt.fhir:
            got = values_at(res, fpath)
            parts = get_transform(dflt.transform).outbound(got[0], run.ctx) if got else []
            if parts and put_parts(slots, key_of(path)[: 3 if p.component else 2], parts):
                rtype = res.get("resourceType")
                run.note(f"default {path}", f"{dflt.instead_of}: none; {path} is {rtype}.{fpath}")
                break
    for path, element in step.id_without.items():
        p = parse_path(path)
        rid = run.index.own_id(res) if res is not None else None
        if rid and not slots.has(p.field, p.component):
            slots.own[key_of(path)] = rid
            run.note(
                f"id {path}",
                f"{element}: none; {path} is the {res.get('resourceType') if res else ''}'s "
                f"id ({rid}), which is not a business identifier",
            )


def _offered(plan: Plan, res: dict[str, Any], taken: Seen, segment: str, run: Run) -> set[int]:
    """Remember the list elements of ``res`` a segment map was offered (``Coverage.class[2]``)
    and those it took, so that what no segment took is reported; give those it took."""
    took: set[int] = set()
    for g in plan.groups:
        if len(g.steps) != 1:
            continue
        for key, value in items_at(res, g.steps):
            if key[2] < 0 or not isinstance(value, dict):
                continue
            if key in taken and id(value) not in run.took:
                run.took.add(id(value))
                took.add(id(value))
            got = run.offered.get(id(value))
            if got is None:
                index = _index_text(run, res, g, key, value)
                element = f"{res.get('resourceType')}.{g.steps[0]}{index}{what(value)}"
                run.offered[id(value)] = (element, [segment], value)
            elif segment not in got[1]:
                got[1].append(segment)
    return took
