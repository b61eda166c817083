"""HL7v2 → FHIR R4: run the mapping files over a parsed message and assemble a transaction Bundle.

The rules are compiled once, at load, into small closures; per message the work is reading the
fields the rules name (the codec splits nothing else) and building dicts. fhir.resources validates
the output when asked (:func:`validate_bundle`): on in tests, a setting in production.

Bundle assembly (FHIR R4 §3.1.0.11 transactions):

* one entry per resource; ``fullUrl`` is ``urn:uuid:`` + a UUID derived from the resource's business
  identity (MRN, visit number, member ID ...), so the same patient has the same fullUrl in every
  message;
* ``request`` is a conditional update on the business identifier
  (``PUT Patient?identifier=system|value``) when there is one; otherwise a PUT of that derived id
  (``PUT RelatedPerson/<uuid>``), which is idempotent too;
* references between resources use those fullUrls.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from engine.errors import ConfigError, UnsupportedMessageError
from engine.hl7v2.codec import Delimiters, Message, Segment
from engine.hl7v2.escape import unescape
from engine.mappings.loader import MappingFiles
from engine.mappings.spec import CodeTable, Condition, MessageMap, RefSpec, ResourcePlan, Rule
from engine.mappings.transforms import TransformContext, get_transform

__all__ = ["InboundMapper", "Node"]

_NS = uuid.UUID("6f1c0e52-2f43-4b8e-9a57-3c1e2a3f5b10")

# -- a uniform view of one level of an HL7 element -------------------------------------------


class Node:
    """An HL7 element at one level: a field repetition (parts = components) or a component
    (parts = subcomponents). ``text(i)`` is part i unescaped, first sub-part only."""

    __slots__ = ("raw", "_seps", "_d", "_cs", "_parts")

    def __init__(self, raw: str, seps: str, d: Delimiters, cs: str) -> None:
        self.raw = raw
        self._seps = seps  # separators from this level down, e.g. "^&" or "&"
        self._d = d
        self._cs = cs
        self._parts: list[str] | None = None

    def parts(self) -> list[str]:
        p = self._parts
        if p is None:
            p = self.raw.split(self._seps[0]) if self._seps else [self.raw]
            self._parts = p
        return p

    def raw_part(self, i: int) -> str:
        p = self.parts()
        return p[i - 1] if i <= len(p) else ""

    def text(self, i: int = 1) -> str:
        v = self.raw_part(i)
        if len(self._seps) > 1 and self._seps[1] in v:
            v = v.split(self._seps[1], 1)[0]
        if v and self._d.escape in v:
            v = unescape(v, self._d.key, self._cs)
        return v

    def child(self, i: int) -> Node:
        return Node(self.raw_part(i), self._seps[1:], self._d, self._cs)

    def texts(self) -> list[str]:
        """Every part unescaped (for transforms that read several parts, e.g. HD)."""
        d, cs = self._d, self._cs
        out = []
        for v in self.parts():
            if len(self._seps) > 1 and self._seps[1] in v:
                v = v.split(self._seps[1], 1)[0]
            out.append(unescape(v, d.key, cs) if v and d.escape in v else v)
        return out


def _field_nodes(seg: Segment, field_no: int, repeat: bool) -> list[Node]:
    reps = seg.repetitions(field_no)
    if not reps:
        return []
    d = seg.delimiters
    seps = d.component + d.subcomponent
    cs = seg._cs
    if not repeat:
        reps = reps[:1]
    return [Node(r.raw, seps, d, cs) for r in reps if r.raw]


# -- writing into FHIR dicts -----------------------------------------------------------------


def _put(target: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    obj = target
    for step in path[:-1]:
        nxt = obj.get(step)
        if nxt is None:
            nxt = obj[step] = {}
        obj = nxt
    last = path[-1]
    if last.endswith("[]"):
        obj.setdefault(last[:-2], []).append(value)
    elif last not in obj:
        obj[last] = value
    elif isinstance(obj[last], dict) and isinstance(value, dict):
        for k, v in value.items():
            obj[last].setdefault(k, v)


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


def _wrap(template: Any, value: Any, index: int = 1) -> Any:
    """Put ``value`` into a fixed JSON shape at ``$value`` (``$index``, ``$first``: see RefSpec)."""
    if isinstance(template, str):
        if template == "$value":
            return value
        if template == "$index":
            return index
        if template == "$first":
            return index == 1
        return template
    if isinstance(template, dict):
        return {k: _wrap(v, value, index) for k, v in template.items()}
    if isinstance(template, list):
        return [_wrap(v, value, index) for v in template]
    return template


# -- compiling rules -------------------------------------------------------------------------

#: a compiled rule: (source node or segment, output resource, run state) -> None
Apply = Callable[[Any, dict[str, Any], "_Run"], None]


@dataclass
class _Run:
    """Per-message state: context, trigger, and resources made from fields (Practitioners ...)."""

    ctx: TransformContext
    trigger: str
    extra: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)  # key -> (url, res)


def _table_fn(table: CodeTable, as_: str) -> Callable[[str], Any]:
    mapping, default, system, display = table.map, table.default, table.system, table.display
    systems = table.systems

    def code_of(text: str) -> Any:
        code = mapping.get(text, default) if text else None
        if code is None:
            return None
        if as_ == "code":
            return code
        coding: dict[str, Any] = {"code": code}
        sys_uri = systems.get(code, system)
        if sys_uri:
            coding = {"system": sys_uri, "code": code}
        if code in display:
            coding["display"] = display[code]
        return coding if as_ == "Coding" else {"coding": [coding]}

    return code_of


class InboundMapper:
    """Compiled mapping files for HL7v2 → FHIR."""

    def __init__(self, files: MappingFiles) -> None:
        self.files = files
        site = files.site
        self._ctx_base = dict(
            identifier_systems=tuple(site.identifier_systems.items()),
            identifier_system_base=site.identifier_system_base,
        )
        self._dt_cache: dict[str, Callable[[Node, _Run], dict[str, Any] | None]] = {}
        self._seg_cache: dict[str, list[Apply]] = {}
        self._by_trigger: dict[tuple[str, str], MessageMap] = {}
        self._seg_ids = {name: smap.segment for name, smap in files.segments.items()}
        self._plan_conditions: dict[tuple[str, str], Callable[[Any, _Run], bool]] = {}
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
                    self._segment(seg)
                for path, tname in plan.trigger_values.items():
                    self._table(tname, f"messages/{mm.message}", f"trigger_values.{path}")
                if plan.each is not None and plan.each != self._seg_ids[plan.segments[0]]:
                    raise ConfigError(
                        f"{files.origin.get('messages/' + mm.message)}: resource {plan.name!r} "
                        f"repeats on {plan.each}, so its first segment map must map {plan.each}"
                    )
                cond = self._condition(plan.when, "field")
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

    def _datatype(self, name: str, origin: str) -> Callable[[Node, _Run], dict[str, Any] | None]:
        fn = self._dt_cache.get(name)
        if fn is not None:
            return fn
        dmap = self.files.datatypes.get(name)
        if dmap is None:
            raise ConfigError(f"{origin}: no datatype map named {name!r} (datatypes/{name}.yaml)")
        where = self.files.origin.get(f"datatypes/{name}", name)
        self._dt_cache[name] = lambda n, r: None  # recursion guard
        rules = [
            self._compile(rule, where, f"rules[{i}]", level="component")
            for i, rule in enumerate(dmap.rules)
            if rule.direction != "out"
        ]

        def build(node: Node, run: _Run) -> dict[str, Any] | None:
            out: dict[str, Any] = {}
            for apply in rules:
                apply(node, out, run)
            return out or None

        self._dt_cache[name] = build
        return build

    def _segment(self, name: str) -> list[Apply]:
        got = self._seg_cache.get(name)
        if got is not None:
            return got
        smap = self.files.segments[name]
        where = self.files.origin.get(f"segments/{name}", name)
        compiled = [
            self._compile(rule, where, f"rules[{i}]", level="field")
            for i, rule in enumerate(smap.rules)
            if rule.direction != "out"
        ]
        self._seg_cache[name] = compiled
        return compiled

    def _compile(self, rule: Rule, where: str, key: str, *, level: str) -> Apply:
        path = tuple(rule.fhir.split("."))
        where_key = f"{where}, {key}"
        if rule.value is not None:
            const = rule.value
            cond = self._condition(rule.when, level)

            def apply_const(src: Any, out: dict[str, Any], run: _Run) -> None:
                if cond is None or cond(src, run):
                    _put(out, path, const)

            return apply_const

        if rule.build is not None:
            if level != "field":
                raise ConfigError(f"{where_key}: 'build' is for segment maps only")
            sub_name = rule.build
            if sub_name not in self.files.segments:
                raise ConfigError(f"{where_key}: no segment map named {sub_name!r}")
            sub_rules = self._segment(sub_name)
            bcond = self._condition(rule.when, level)
            bwrap = rule.wrap

            def apply_build(seg: Segment, out: dict[str, Any], run: _Run) -> None:
                if bcond is not None and not bcond(seg, run):
                    return
                part: dict[str, Any] = {}
                for apply in sub_rules:
                    apply(seg, part, run)
                if part:
                    _put(out, path, _wrap(bwrap, part) if bwrap is not None else part)

            return apply_build

        # how to turn one node into a FHIR value
        convert: Callable[[Node, _Run], Any]
        if rule.type:
            dt = self._datatype(rule.type, where_key)
            if rule.resource:
                convert = self._resource_maker(rule.resource, dt)
            else:
                convert = dt
        elif rule.table:
            code_of = _table_fn(self._table(rule.table, where, key), rule.as_)

            def convert(n: Node, run: _Run) -> Any:
                return code_of(n.text(1))
        else:
            tf = get_transform(rule.transform or "text").inbound

            def convert(n: Node, run: _Run) -> Any:
                return tf(n.texts(), run.ctx)

        wrap = rule.wrap
        cond = self._condition(rule.when, level)
        repeat = rule.repeats
        sub = rule.subcomponent

        def emit(node: Node, out: dict[str, Any], run: _Run) -> None:
            if sub:
                node = node.child(sub)  # a subcomponent as a one-part node
            value = convert(node, run)
            if value is None or value == "" or value == {}:
                return
            _put(out, path, _wrap(wrap, value) if wrap is not None else value)

        if level == "field":
            fno = rule.field
            assert fno is not None
            comp = rule.component

            def apply_field(seg: Segment, out: dict[str, Any], run: _Run) -> None:
                if cond is not None and not cond(seg, run):
                    return
                for node in _field_nodes(seg, fno, repeat):
                    if comp:
                        node = node.child(comp)
                    emit(node, out, run)

            return apply_field

        cno = rule.component
        if cno is None:  # the rule reads the whole element (a transform over all its parts)

            def apply_whole(node: Node, out: dict[str, Any], run: _Run) -> None:
                if cond is None or cond(node, run):
                    emit(node, out, run)

            return apply_whole

        def apply_component(node: Node, out: dict[str, Any], run: _Run) -> None:
            if cond is not None and not cond(node, run):
                return
            child = node.child(cno)
            if child.raw:
                emit(child, out, run)

        return apply_component

    def _condition(self, c: Condition | None, level: str) -> Callable[[Any, _Run], bool] | None:
        if c is None:
            return None
        allowed = set(c.in_) if c.in_ is not None else None
        denied = set(c.not_in or ())
        triggers = set(c.trigger) if c.trigger else None

        def read(src: Any) -> str:
            if level == "field":
                seg: Segment = src
                return seg.get(c.field or 1, 1, c.component or 1, c.subcomponent or 1)
            node: Node = src
            if c.component is None:
                return node.text(1)
            child = node.child(c.component)
            return child.text(c.subcomponent or 1)

        def check(src: Any, run: _Run) -> bool:
            if triggers is not None and run.trigger not in triggers:
                return False
            if c.field is None and c.component is None:
                return True
            text = read(src)
            if allowed is not None and text not in allowed:
                return False
            if text in denied:
                return False
            if c.present is not None and bool(text) != c.present:
                return False
            return True

        return check

    def _resource_maker(
        self, resource_type: str, dt: Callable[[Node, _Run], dict[str, Any] | None]
    ) -> Callable[[Node, _Run], Any]:
        def make(node: Node, run: _Run) -> Any:
            body = dt(node, run)
            if not body:
                return None
            key = _identity_key(body) or repr(sorted(body.items()))
            full = f"{resource_type}|{key}"
            existing = run.extra.get(full)
            if existing is None:
                url = "urn:uuid:" + str(uuid.uuid5(_NS, full))
                res = {"resourceType": resource_type, **body}
                run.extra[full] = (url, res)
            else:
                url = existing[0]
            return {"reference": url}

        return make

    # -- run ---------------------------------------------------------------------------------

    def message_map(self, message: Message) -> MessageMap:
        mtype = message.type
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
        return TransformContext(timezone=tz, **self._ctx_base)  # type: ignore[arg-type]

    def to_bundle(self, message: Message) -> dict[str, Any]:
        """The FHIR transaction Bundle for one message (a dict ready for JSON)."""
        mm = self.message_map(message)
        run = _Run(self.context_for(message), message.type.trigger)
        made: dict[str, dict[int, str]] = {}  # plan name -> group index -> fullUrl
        order: list[tuple[str, dict[str, Any], ResourcePlan, int]] = []
        seg_ids = self._seg_ids
        for plan in mm.resources:
            plan_when = self._plan_conditions.get((mm.message, plan.name))
            for index, group in enumerate(_groups(message, plan, seg_ids)):
                if plan_when is not None and not plan_when(group[0][1], run):
                    continue
                res: dict[str, Any] = {"resourceType": plan.resource}
                for map_name, seg in group:
                    for apply in self._seg_cache[map_name]:
                        apply(seg, res, run)
                if len(res) == 1 or any(_get(res, p) is None for p in plan.required):
                    continue
                for path, tname in plan.trigger_values.items():
                    code = self.files.tables[tname].map.get(run.trigger)
                    if code is not None:
                        _put(res, tuple(path.split(".")), code)
                for path, value in plan.values.items():
                    _put(res, tuple(path.split(".")), value)
                url = self._full_url(plan, res, message, index)
                made.setdefault(plan.name, {})[index] = url
                order.append((url, res, plan, index))
        # references between planned resources: same group when both repeat on the same
        # segment (a Coverage and its payer), else the first one made
        plans = {p.name: p for p in mm.resources}
        for _url, res, plan, index in order:
            for path, spec in plan.refs.items():
                targets = spec.to if isinstance(spec, RefSpec) else spec
                wrap = spec.wrap if isinstance(spec, RefSpec) else None
                every = isinstance(spec, RefSpec) and spec.all
                steps = tuple(path.split("."))
                for target in [targets] if isinstance(targets, str) else targets:
                    got = made.get(target)
                    if not got:
                        continue
                    tplan = plans[target]
                    keys = sorted(got)
                    if every:
                        chosen = keys
                    elif tplan.each is not None and tplan.each == plan.each:
                        if index not in got:
                            continue
                        chosen = [index]
                    else:
                        chosen = keys[:1]
                    for k in chosen:
                        pos = keys.index(k) + 1
                        ref_value: Any = {"reference": got[k]}
                        if wrap:
                            ref_value = _wrap(wrap, ref_value, pos)
                        _put(res, steps, ref_value)
                    break
        entries = [self._entry(url, res, plan.identity) for url, res, plan, _ in order]
        entries += [self._entry(url, res, "identifier") for url, res in run.extra.values()]
        return {"resourceType": "Bundle", "type": "transaction", "entry": entries}

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

    def _full_url(
        self, plan: ResourcePlan, res: dict[str, Any], message: Message, index: int
    ) -> str:
        ident = self._pick_identifier(res) if plan.identity else None
        if ident is not None:
            key = f"{ident.get('system', '')}|{ident['value']}"
        else:
            msh = message.msh
            key = f"{msh.get(3)}|{msh.get(4)}|{message.control_id}|{plan.name}|{index}"
        return "urn:uuid:" + str(uuid.uuid5(_NS, f"{plan.resource}|{key}"))

    def _entry(self, url: str, res: dict[str, Any], identity: str | None) -> dict[str, Any]:
        rtype = res["resourceType"]
        ident = self._pick_identifier(res) if identity else None
        if ident is not None:
            token = (f"{ident['system']}|" if ident.get("system") else "") + ident["value"]
            request = {"method": "PUT", "url": f"{rtype}?identifier={quote(token, safe='|:/')}"}
        else:
            rid = url.removeprefix("urn:uuid:")
            res = {
                "resourceType": rtype,
                "id": rid,
                **{k: v for k, v in res.items() if k != "resourceType"},
            }
            request = {"method": "PUT", "url": f"{rtype}/{rid}"}
        return {"fullUrl": url, "resource": res, "request": request}


def _groups(
    message: Message, plan: ResourcePlan, seg_ids: dict[str, str]
) -> list[list[tuple[str, Segment]]]:
    """The segments each resource of a plan is built from, as (segment map name, segment)."""
    if plan.each is None:
        # one resource from every occurrence of the listed segments, in the plan's order
        first = message.segment(seg_ids[plan.segments[0]])
        if first is None:
            return []
        group: list[tuple[str, Segment]] = []
        for name in plan.segments:
            group.extend((name, seg) for seg in message.all(seg_ids[name]))
        return [group]
    by_id: dict[str, list[str]] = {}
    for name in plan.segments:
        by_id.setdefault(seg_ids[name], []).append(name)
    groups: list[list[tuple[str, Segment]]] = []
    current: list[tuple[str, Segment]] | None = None
    for seg in message.segments:
        if seg.name == plan.each:
            current = [(name, seg) for name in by_id.get(seg.name, ())]
            groups.append(current)
        elif current is not None and seg.name in by_id:
            current.extend((name, seg) for name in by_id[seg.name])
        elif current is not None and seg.name in _GROUP_ENDERS:
            current = None
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
