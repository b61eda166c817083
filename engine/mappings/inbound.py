"""HL7v2 → FHIR R4: run the mapping files over a parsed message and assemble a transaction Bundle.

The rules are compiled once, at load, into small closures; per message the work is reading the
fields the rules name (the codec splits nothing else) and building dicts. fhir.resources validates
the output when asked (:func:`validate_bundle`): on in tests, a setting in production.

Bundle assembly (FHIR R4 §3.1.0.11 transactions, engine/mappings/entries.py): one entry per
resource; its ``fullUrl`` is derived from the resource's business identity (MRN, visit number,
member ID ... within the resources it is unique in), so the same patient has the same fullUrl in
every message; its ``request`` a conditional update on that identifier, else a PUT of the derived
id; references between resources use those fullUrls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from engine.errors import ConfigError, HL7ValidationError, UnsupportedMessageError
from engine.hl7v2.codec import Message, MessageType, Segment
from engine.mappings.compiler import Compiler, DatatypeFn, put, wrap
from engine.mappings.entries import full_url, scoped_key, transaction_entry
from engine.mappings.loader import MappingFiles
from engine.mappings.provenance import ElementSource, Trace, plan_origins
from engine.mappings.spec import CodeTable, Condition, MessageMap, RefSpec, ResourcePlan
from engine.mappings.transforms import TransformContext
from engine.mappings.unmapped import not_mapped

__all__ = ["InboundMapper"]


def _get(target: dict[str, Any], path: str) -> Any:
    obj: Any = target
    for step in path.split("."):
        step = step.removesuffix("[]")
        if isinstance(obj, list):
            obj = obj[0] if obj else None
        if not isinstance(obj, dict):
            return None
        obj = obj.get(step)
    if isinstance(obj, list):
        return obj[0] if obj else None
    return obj


#: a planned resource as made: its fullUrl, the resource, its plan, the position in the message
#: of its first segment, its business identifier
_Made = tuple[str, dict[str, Any], ResourcePlan, int, dict[str, Any] | None]


@dataclass
class _Run:
    """Per-message state: context, trigger, and resources made from fields (Practitioners ...)."""

    ctx: TransformContext
    trigger: str
    #: the segment IDs the message holds (for plans' ``lacks``)
    present: frozenset[str] = frozenset()
    #: id(segment) -> the fields a rule took a value from (the rest is reported as not mapped)
    used: dict[int, set[int]] = field(default_factory=dict)
    extra: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)  # key -> (url, res)
    #: where the traced functions note which rule wrote what (the workbench); None: not asked
    trace: Trace | None = None
    #: the fullUrls derived from a business identity (the same in every message), not from the
    #: message's control ID: only these may narrow another's identity (``identity_within``)
    stable: set[str] = field(default_factory=set)
    #: fullUrl -> the (search parameter, fullUrl) pairs its identity is narrowed by
    scopes: dict[str, list[tuple[str, str]]] = field(default_factory=dict)


class InboundMapper:
    """Compiled mapping files for HL7v2 → FHIR; ``trace``: compiled to say which rule made each
    element as well (:meth:`to_bundle_traced`; engine.mappings.provenance)."""

    def __init__(self, files: MappingFiles, *, trace: bool = False) -> None:
        self.files = files
        self.traced = trace
        site = files.site
        self._ctx_base = dict(
            identifier_systems=tuple(site.identifier_systems.items()),
            identifier_system_base=site.identifier_system_base,
        )
        self._compiler = Compiler(files, self._resource_maker, trace=trace)
        self._by_trigger: dict[tuple[str, str], MessageMap] = {}
        self._seg_ids = {name: smap.segment for name, smap in files.segments.items()}
        self._plan_conditions: dict[tuple[str, str], Callable[[Any, _Run], bool]] = {}
        self._plans = {
            mm.message: {p.name: p for p in mm.resources} for mm in files.messages.values()
        }
        #: (message, plan) -> [(path steps, target plans, wrap template, all)]
        self._refs: dict[tuple[str, str], list[tuple[tuple[str, ...], list[str], Any, bool]]] = {}
        self._scopes: dict[tuple[str, str], list[tuple[str, list[str]]]] = {}
        for mm in files.messages.values():
            for plan in mm.resources:
                entries = []
                for path, spec in plan.refs.items():
                    to = spec.to if isinstance(spec, RefSpec) else spec
                    entries.append(
                        (
                            _steps(path),
                            [to] if isinstance(to, str) else list(to),
                            spec.wrap if isinstance(spec, RefSpec) else None,
                            isinstance(spec, RefSpec) and spec.all,
                        )
                    )
                self._refs[(mm.message, plan.name)] = entries
                # identity_within: (search parameter, the plans its reference may point to);
                # the loader allows only plain references to plans made before this one
                by_path = {".".join(steps): targets for steps, targets, _w, _a in entries}
                self._scopes[(mm.message, plan.name)] = [
                    (param, by_path[path]) for param, path in plan.identity_within.items()
                ]
        self._contexts: dict[str, TransformContext] = {}
        for mm in files.messages.values():
            for trig in mm.triggers:
                self._by_trigger[(mm.message, trig)] = mm
            for plan in mm.resources:
                for seg in plan.segments:
                    smap = files.segments.get(seg)
                    if smap is None:
                        raise ConfigError(
                            f"{files.origin.get('messages/' + mm.message)}: resource "
                            f"{plan.name!r} names segment map {seg!r}; there is no "
                            f"segments/{seg}.yaml"
                        )
                    if smap.resource != plan.resource:
                        raise ConfigError(
                            f"{files.origin.get('segments/' + seg)}: maps {seg} to "
                            f"{smap.resource}, but {mm.message}'s {plan.name!r} builds "
                            f"{plan.resource}"
                        )
                    self._compiler.segment(seg)
                for path, tname in plan.trigger_values.items():
                    self._table(tname, f"messages/{mm.message}", f"trigger_values.{path}")
                if plan.each is not None and plan.each != self._seg_ids[plan.segments[0]]:
                    raise ConfigError(
                        f"{files.origin.get('messages/' + mm.message)}: resource {plan.name!r} "
                        f"repeats on {plan.each}, so its first segment map must map {plan.each}"
                    )
                cond = self._condition(plan.when)
                if cond is not None:
                    self._plan_conditions[(mm.message, plan.name)] = cond

    # -- compile -----------------------------------------------------------------------------

    def _table(self, name: str, origin: str, key: str) -> CodeTable:
        t = self.files.tables.get(name)
        if t is None:
            raise ConfigError(
                f"{self.files.origin.get(origin, origin)}, {key}: no code table named {name!r} "
                f"(tables/{name}.yaml)"
            )
        return t

    def _condition(self, c: Condition | None) -> Callable[[Segment, _Run], bool] | None:
        """A plan's ``when``, tested on its first (or anchor) segment and the message."""
        if c is None:
            return None
        allowed = set(c.in_) if c.in_ is not None else None
        denied = set(c.not_in or ())
        triggers = set(c.trigger) if c.trigger else None
        lacks = tuple(c.lacks or ())
        alternatives = [self._condition(sub) for sub in c.any or ()]

        def check(seg: Segment, run: _Run) -> bool:
            if triggers is not None and run.trigger not in triggers:
                return False
            if lacks and any(s in run.present for s in lacks):
                return False
            if alternatives and not any(alt(seg, run) for alt in alternatives if alt):
                return False
            if c.field is None:
                return True
            text = seg.get(c.field, 1, c.component or 1, c.subcomponent or 1)
            if allowed is not None and text not in allowed:
                return False
            if text in denied:
                return False
            return c.present is None or bool(text) == c.present

        return check

    def _resource_maker(self, resource_type: str, dt: DatatypeFn) -> Callable[..., Any]:
        """A rule with ``resource:`` makes a resource of its own (one per identity per message)
        and yields a reference to it."""

        def make(raw: str, p: str, q: str, d: Any, cs: str, run: _Run) -> Any:
            body = dt(raw, p, q, d, cs, run)
            if not body:
                return None
            key = _identity_key(body) or repr(sorted(body.items()))
            full = f"{resource_type}|{key}"
            existing = run.extra.get(full)
            if existing is None:
                url = full_url(resource_type, key)
                run.extra[full] = (url, {"resourceType": resource_type, **body})
                if run.trace is not None:
                    run.trace.alias(run.extra[full][1], body)
            else:
                url = existing[0]
            return {"reference": url}

        return make

    def source(self, name: str) -> str:
        """The generated Python code of a segment or datatype map (for mapping authors)."""
        for label in (f"segment {name}", f"datatype {name}"):
            if label in self._compiler.sources:
                return self._compiler.sources[label]
        raise ConfigError(f"no compiled map named {name!r}")

    # -- run ---------------------------------------------------------------------------------

    def message_map(self, message: Message, mtype: MessageType | None = None) -> MessageMap:
        mtype = mtype or message.type
        mm = self._by_trigger.get((mtype.code, mtype.trigger))
        if mm is None:
            known = any(m.message == mtype.code for m in self.files.messages.values())
            raise UnsupportedMessageError(
                f"unsupported message type {mtype.code}^{mtype.trigger}"
                + (
                    f" (supported {mtype.code} triggers: "
                    + ", ".join(sorted(t for (c, t) in self._by_trigger if c == mtype.code))
                    + ")"
                    if known
                    else ""
                ),
                where="MSH-9",
                code="201" if known else "200",
            )
        return mm

    def context_for(self, message: Message) -> TransformContext:
        site = self.files.site
        facility = message.msh.get(4)
        tz = site.facility_timezones.get(facility, site.timezone)
        ctx = self._contexts.get(tz)
        if ctx is None:
            ctx = TransformContext(timezone=tz, **self._ctx_base)  # type: ignore[arg-type]
            self._contexts[tz] = ctx
        return ctx

    def to_bundle_traced(
        self, message: Message, warnings: list[str] | None = None
    ) -> tuple[dict[str, Any], list[ElementSource]]:
        """:meth:`to_bundle`, and every element of it with the rules that made it (a mapper
        compiled with ``trace=True`` only: the workbench's)."""
        if not self.traced:
            raise ConfigError("this mapper was compiled without trace=True")
        trace = Trace()
        bundle = self.to_bundle(message, warnings, trace=trace)
        return bundle, trace.sources(bundle)

    def to_bundle(
        self, message: Message, warnings: list[str] | None = None, *, trace: Trace | None = None
    ) -> dict[str, Any]:
        """The FHIR transaction Bundle for one message (a dict ready for JSON); ``warnings``
        receives what the message carries that no mapping takes; ``trace`` (a traced mapper's)
        where each element came from.

        The stages, in order: make each plan's resources from its segments (with their
        fullUrls), link them by reference, keep those whose ``required`` elements are there
        (refusing the message when its main resource is not among them), then assemble the
        entries, the resources made from fields (``resource:`` rules) last."""
        mtype = message.type
        mm = self.message_map(message, mtype)
        positions = _positions(message)
        run = _Run(self.context_for(message), mtype.trigger, frozenset(positions), trace=trace)
        made, order = self._make_resources(message, mm, positions, run)
        self._link(mm, made, order)
        # ``required`` is checked once references are in (a Claim needs its Coverage)
        kept = [
            (url, res, plan, ident)
            for url, res, plan, _index, ident in order
            if not plan.required or all(_get(res, p) is not None for p in plan.required)
        ]
        if mm.main is not None and not any(plan.name == mm.main for _u, _r, plan, _i in kept):
            raise self._no_main(message, mm, order)
        entries = [
            transaction_entry(url, res, ident, run.scopes.get(url, ()))
            for url, res, plan, ident in kept
        ]
        entries += [
            transaction_entry(url, res, self._pick_identifier(res))
            for url, res in run.extra.values()
        ]
        if trace is not None:
            made_res = [res for _u, res, _p, _i in kept] + [res for _u, res in run.extra.values()]
            for entry, res in zip(entries, made_res, strict=True):
                trace.alias(entry["resource"], res)
            trace.planned = [plan_origins(self.files, mm, plan) for _u, _r, plan, _i in kept]
        if warnings is not None:
            warnings.extend(not_mapped(message, run.used, mm.ignore))
        return {"resourceType": "Bundle", "type": "transaction", "entry": entries}

    def _make_resources(
        self, message: Message, mm: MessageMap, positions: dict[str, list[int]], run: _Run
    ) -> tuple[dict[str, list[tuple[int, str]]], list[_Made]]:
        """Each plan's resources, one per group of its segments that its ``when`` allows and
        that gives it any data, in plan order; and per plan name the (position of the first
        segment, fullUrl) of each, for the references.

        The fullUrl comes from the business identity (FHIR R4 §3.1.0.11): the identifier, else
        the fullUrl of the plan named by ``key_from``, else the message's sender and control ID
        with the plan and its place."""
        msh = message.msh
        fallback_key = f"{msh.get(3)}|{msh.get(4)}|{msh.get(10)}"
        made: dict[str, list[tuple[int, str]]] = {}
        order: list[_Made] = []
        where = {id(seg): i for i, seg in enumerate(message.segments)}
        seg_ids = self._seg_ids
        segment_fns = self._compiler.segments
        for plan in mm.resources:
            plan_when = self._plan_conditions.get((mm.message, plan.name))
            for index, group in enumerate(_groups(message, positions, plan, seg_ids)):
                if plan_when is not None and not plan_when(group[0][1], run):
                    continue
                res: dict[str, Any] = {"resourceType": plan.resource}
                for map_name, seg in group:
                    segment_fns[map_name](seg, res, run)
                if len(res) == 1:
                    continue
                self._complete(res, plan, run.trigger)
                ident = self._pick_identifier(res) if plan.identity else None
                pos = where[id(group[0][1])]
                stable = True
                scope: list[tuple[str, str]] = []
                if ident is not None:
                    key = f"{ident.get('system', '')}|{ident['value']}"
                    if plan.identity_within:
                        scope = self._scope(mm, plan, pos, made, run.stable)
                        key = scoped_key(key, scope)
                elif plan.key_from is not None and made.get(plan.key_from):
                    key = f"{plan.name}|{made[plan.key_from][0][1]}"
                    stable = made[plan.key_from][0][1] in run.stable
                else:
                    key = f"{fallback_key}|{plan.name}|{index}"
                    stable = False
                url = full_url(plan.resource, key)
                if stable:
                    run.stable.add(url)
                if scope:
                    run.scopes[url] = scope
                made.setdefault(plan.name, []).append((pos, url))
                order.append((url, res, plan, pos, ident))
        return made, order

    def _scope(
        self,
        mm: MessageMap,
        plan: ResourcePlan,
        pos: int,
        made: dict[str, list[tuple[int, str]]],
        stable: set[str],
    ) -> list[tuple[str, str]]:
        """What the plan's identifier is unique within (``identity_within``): per search
        parameter, the fullUrl its reference will point to (:func:`_targets`, as
        :meth:`_link` chooses it later); "" when the message makes none, or one without a
        business identity (a payer without an ID, named after this message's control ID: it
        would make a new Coverage of every message). The same pairs narrow the entry's
        conditional URL (:attr:`_Run.scopes`)."""
        plans = self._plans[mm.message]
        out = []
        for param, targets in self._scopes[(mm.message, plan.name)]:
            chosen = _targets(plans, plan, pos, made, targets, False)
            out.append((param, ",".join(u for _i, u in chosen if u in stable)))
        return out

    def _complete(self, res: dict[str, Any], plan: ResourcePlan, trigger: str) -> None:
        """What a resource gets once its segments are mapped: identifiers made distinct, a
        Claim's lines numbered, the plan's codes by trigger event and its default values."""
        ids = res.get("identifier")
        if ids is not None and len(ids) > 1:
            res["identifier"] = _distinct(ids)
        if plan.resource == "Claim":
            _number_lines(res)
        tables = self.files.tables
        for path, tname in plan.trigger_values.items():
            code = tables[tname].map.get(trigger)
            if code is not None:
                put(res, _steps(path), code)
        for path, value in plan.values.items():
            # a default, never merged into what the segments set
            if _get(res, path) is None:
                put(res, _steps(path), value)

    def _link(
        self, mm: MessageMap, made: dict[str, list[tuple[int, str]]], order: list[_Made]
    ) -> None:
        """References between planned resources, each to what :func:`_targets` chooses."""
        plans = self._plans[mm.message]
        for _url, res, plan, pos, _ident in order:
            for steps, targets, wrap_tpl, every in self._refs[(mm.message, plan.name)]:
                for i, target_url in _targets(plans, plan, pos, made, targets, every):
                    ref_value: Any = {"reference": target_url}
                    if wrap_tpl:
                        ref_value = wrap(wrap_tpl, ref_value, i + 1)
                    put(res, steps, ref_value)

    def refusal(self, message: Message) -> HL7ValidationError | None:
        """Before the ACK: a message whose main resource cannot be made (an ADT without PID, an
        SIU without SCH or without anyone taking part, a DFT without FT1 or whose FT1s are all
        payments or uncoded), or None. Cheap: it looks at which segments are there, and runs the
        main plan's own maps only when the plan requires something; what only the whole mapping
        finds out (a birth date that does not exist) is an error of the stored message after
        the ACK."""
        mm = self.message_map(message)
        if mm.main is None:
            return None
        plan = self._plans[mm.message][mm.main]
        seg_id = self._seg_ids[plan.segments[0]]
        anchors = message.all(seg_id)
        if not anchors:
            return self._no_main(message, mm, [])
        # what the plan requires (a Claim's items, an Appointment's participants): its own maps
        # are run (a few segments, not the whole message), and a requirement met by a reference
        # holds when a segment the referred-to plan is made from is there (a PID for the patient)
        plans = self._plans[mm.message]

        def referred(path: str) -> bool:
            spec = plan.refs.get(path, plan.refs.get(f"{path}[]"))
            if spec is None:
                return False
            to = spec.to if isinstance(spec, RefSpec) else spec
            targets = [to] if isinstance(to, str) else to
            return any(
                message.segment(self._seg_ids[plans[t].segments[0]]) is not None for t in targets
            )

        unmet = [p for p in plan.required if not referred(p)]
        if not unmet:  # the usual SIU: its PID gives the Appointment a participant, no mapping
            return None
        positions = _positions(message)
        run = _Run(self.context_for(message), message.type.trigger, frozenset(positions))
        res: dict[str, Any] = {"resourceType": plan.resource}
        try:
            for name, seg in _groups(message, positions, plan, self._seg_ids)[0]:
                self._compiler.segments[name](seg, res, run)
        except HL7ValidationError as exc:
            return exc
        if all(_get(res, p) is not None for p in unmet):
            return None
        url = full_url(plan.resource, "refusal")
        return self._no_main(message, mm, [(url, res, plan, 0, None)])

    def _no_main(
        self,
        message: Message,
        mm: MessageMap,
        order: list[_Made],
    ) -> HL7ValidationError:
        """Why the message made no main resource (it is refused rather than half converted)."""
        plan = self._plans[mm.message][mm.main or ""]
        seg_id = self._seg_ids[plan.segments[0]]
        label = f"{mm.message}^{message.type.trigger}"
        made = [res for _u, res, p, _pos, _i in order if p.name == plan.name]
        if not message.all(seg_id):
            return HL7ValidationError(
                f"{label} has no {seg_id} segment: cannot make its {plan.resource}",
                where=seg_id,
                code="100",
            )
        if not made:
            cond = plan.when
            field_no = cond.field if cond is not None else None
            if field_no is not None:
                # the condition's field is named, not its value (it may be a patient's data)
                return HL7ValidationError(
                    f"{label} makes no {plan.resource}: {seg_id}-{field_no} does not allow it"
                    " (see the message map's 'when')",
                    where=f"{seg_id}-{field_no}",
                    code="101",
                )
            return HL7ValidationError(
                f"{label} makes no {plan.resource}: its {seg_id} carries no data for it",
                where=seg_id,
                code="101",
            )
        missing = [p for p in plan.required if _get(made[0], p) is None]
        return HL7ValidationError(
            f"{label} makes no {plan.resource}: it has no "
            + " and no ".join(f"{plan.resource}.{p}" for p in missing),
            where=seg_id,
            code="101",
        )

    def _pick_identifier(self, res: dict[str, Any]) -> dict[str, Any] | None:
        """The business identifier: a Patient's MRN (site.yaml ``mrn_type``), else the first."""
        ids = res.get("identifier")
        if not isinstance(ids, list) or not ids:
            return None
        if res["resourceType"] == "Patient":
            site = self.files.site
            for ident in ids:
                codings = ident.get("type", {}).get("coding", [])
                if any(c.get("code") == site.mrn_type for c in codings) and (
                    site.mrn_authority is None
                    or ident.get("system") == self._system_of(site.mrn_authority)
                ):
                    return dict(ident) if ident.get("value") else None
        first = ids[0]
        return first if isinstance(first, dict) and first.get("value") else None

    def _system_of(self, authority: str) -> str:
        return self.files.site.identifier_systems.get(
            authority, self.files.site.identifier_system_base + authority
        )


def _number_lines(claim: dict[str, Any]) -> None:
    """Claim.item, careTeam and diagnosis need a sequence (1..1 in R4); the lines take theirs
    from the set ID (FT1-1, DG1-1), and a line sent without one is numbered after the others."""
    for key in ("item", "careTeam", "diagnosis"):
        lines = claim.get(key)
        if not lines or all("sequence" in line for line in lines):
            continue
        n = max((line["sequence"] for line in lines if "sequence" in line), default=0)
        for line in lines:
            if "sequence" not in line:
                n += 1
                line["sequence"] = n


def _distinct(ids: list[Any]) -> list[Any]:
    """Identifiers without repeats: one that says no more than an earlier one (the same value,
    in the same system or with none of its own, of the same type or with none) is the same
    identifier sent twice (PID-2 repeating PID-3 in messages from before v2.5 retired PID-2) and
    is left out. Identifiers that differ in type (an account number equal to the MRN) are kept.
    """
    out: list[Any] = []
    for ident in ids:
        if (
            isinstance(ident, dict)
            and ident.get("value")
            and any(_repeats(ident, earlier) for earlier in out)
        ):
            continue
        out.append(ident)
    return out


def _repeats(ident: dict[str, Any], earlier: Any) -> bool:
    if not isinstance(earlier, dict) or earlier.get("value") != ident["value"]:
        return False
    system, kind = ident.get("system"), ident.get("type")
    return (system is None or system == earlier.get("system")) and (
        kind is None or kind == earlier.get("type")
    )


def _targets(
    plans: dict[str, ResourcePlan],
    plan: ResourcePlan,
    pos: int,
    made: dict[str, list[tuple[int, str]]],
    targets: list[str],
    every: bool,
) -> list[tuple[int, str]]:
    """(index, fullUrl) of what a reference of ``plan``'s resource (made at segment ``pos``)
    points to, from the first target plan that made any:

    - to a plan repeating on the same segment: the resource of the same group (a Coverage
      and its payer), or none;
    - else the nearest one before (a merge's prior patient and the PID it follows), or the
      first one (a Claim's patient); ``all`` refers to every one."""
    for target in targets:
        got = made.get(target)
        if not got:
            continue
        if every:
            return [(i, u) for i, (_p, u) in enumerate(got)]
        tplan = plans[target]
        if tplan.each is not None and tplan.each == plan.each:
            same = [(i, u) for i, (p, u) in enumerate(got) if p == pos][:1]
            if same:
                return same
            continue
        before = [i for i, (p, _u) in enumerate(got) if p <= pos]
        i = before[-1] if before else 0
        return [(i, got[i][1])]
    return []


@lru_cache(maxsize=1024)
def _steps(path: str) -> tuple[str, ...]:
    return tuple(path.split("."))


def _positions(message: Message) -> dict[str, list[int]]:
    """Segment ID -> its positions in the message."""
    out: dict[str, list[int]] = {}
    for i, seg in enumerate(message.segments):
        out.setdefault(seg.name, []).append(i)
    return out


def _groups(
    message: Message,
    positions: dict[str, list[int]],
    plan: ResourcePlan,
    seg_ids: dict[str, str],
) -> list[list[tuple[str, Segment]]]:
    """The segments each resource of a plan is built from, as (segment map name, segment)."""
    segments = message.segments
    if plan.each is None:
        # one resource from every occurrence of the listed segments, in the plan's order
        if seg_ids[plan.segments[0]] not in positions:
            return []
        group: list[tuple[str, Segment]] = []
        for name in plan.segments:
            group.extend((name, segments[i]) for i in positions.get(seg_ids[name], ()))
        return [group]
    anchors = positions.get(plan.each)
    if not anchors:
        return []
    by_id: dict[str, list[str]] = {}
    for name in plan.segments:
        by_id.setdefault(seg_ids[name], []).append(name)
    groups: list[list[tuple[str, Segment]]] = []
    current: list[tuple[str, Segment]] | None = None
    for seg in segments[anchors[0] :]:
        if seg.name == plan.each:
            current = [(name, seg) for name in by_id.get(seg.name, ())]
            groups.append(current)
        elif current is not None and seg.name in by_id:
            current.extend((name, seg) for name in by_id[seg.name])
        elif current is not None and seg.name in _GROUP_ENDERS:
            current = None
        elif current is None and groups and seg.name in by_id and seg.name[0] == "Z":
            # a site's Z-segment, sent at the end of the message, belongs to the last group
            groups[-1].extend((name, seg) for name in by_id[seg.name])
    return groups


#: segments that end a repeating group (a new IN1 group does not swallow a later PV1's companions)
_GROUP_ENDERS = frozenset({"PID", "PV1", "IN1", "FT1", "NK1", "SCH", "RGS", "MRG", "GT1"})


def _identity_key(res: dict[str, Any]) -> str | None:
    ids = res.get("identifier")
    if isinstance(ids, list) and ids:
        first = ids[0]
        if isinstance(first, dict) and first.get("value"):
            return f"{first.get('system', '')}|{first['value']}"
    return None
