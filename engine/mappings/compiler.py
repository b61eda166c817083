"""Compile mapping rules into Python functions (HL7v2 → FHIR).

An interpreter that walks the rules per message costs a Python call per rule per element, several
hundred calls for an ADT; generating one straight-line function per datatype map and per segment
map, once at start-up, removes those calls and makes conversion ~3x faster. The mapping files stay
data: this module only reads them, and every generated function is plain code over the same
vocabulary (see :mod:`engine.mappings.spec`). ``InboundMapper.source(name)`` shows the code.

Levels: a datatype map reads *parts* separated by ``P`` (components of a field repetition, or
subcomponents of a component), each part possibly split again by ``Q``. A segment map reads fields.
The generated code reads a segment through the codec's public API only (``Segment.fields()``,
``get``, ``delimiters``, ``charset``), so the codec may change how it stores them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.errors import ConfigError, HL7ValidationError
from engine.hl7v2.escape import unescape
from engine.mappings.loader import MappingFiles
from engine.mappings.provenance import RuleOrigin, describe_rule
from engine.mappings.spec import CodeTable, Condition, Rule
from engine.mappings.transforms import get_transform

__all__ = ["Compiler", "DatatypeFn", "SegmentFn", "put", "put_noted", "wrap"]

#: (raw, P, Q, delimiters, charset, run) -> dict or None
DatatypeFn = Callable[..., Any]
#: (segment, out, run) -> None
SegmentFn = Callable[..., None]


def put(target: dict[str, Any], path: tuple[str, ...], value: Any) -> bool:
    """Write ``value`` at a dotted path; ``x[]`` appends; an existing element is kept (the first
    valued rule wins), except that dicts merge. True when something of ``value`` was written."""
    obj = target
    for step in path[:-1]:
        nxt = obj.get(step)
        if nxt is None:
            nxt = obj[step] = {}
        obj = nxt
    last = path[-1]
    if last.endswith("[]"):
        obj.setdefault(last[:-2], []).append(value)
        return True
    if last not in obj:
        obj[last] = value
        return True
    if isinstance(obj[last], dict) and isinstance(value, dict):
        into = obj[last]
        new = [k for k in value if k not in into]
        for k in new:
            into[k] = value[k]
        return bool(new)
    return False


def put_noted(
    target: dict[str, Any], path: tuple[str, ...], value: Any, trace: Any, who: Any
) -> bool:
    """:func:`put`, telling ``trace`` (a :class:`engine.mappings.provenance.Trace`, or None)
    where each part of ``value`` went: the traced functions' store; the same result as put."""
    if trace is None:
        return put(target, path, value)
    obj = target
    for step in path[:-1]:
        nxt = obj.get(step)
        if nxt is None:
            nxt = obj[step] = {}
        obj = nxt
    last = path[-1]
    if last.endswith("[]"):
        items = obj.setdefault(last[:-2], [])
        items.append(value)
        trace.note(items, len(items) - 1, value, who)
        return True
    if last not in obj:
        obj[last] = value
        trace.note(obj, last, value, who)
        return True
    if isinstance(obj[last], dict) and isinstance(value, dict):
        into = obj[last]
        new = [k for k in value if k not in into]
        for k in new:
            into[k] = value[k]
            trace.note(into, k, value[k], who)
        return bool(new)
    return False


def wrap(template: Any, value: Any, index: int = 1) -> Any:
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
        return {k: wrap(v, value, index) for k, v in template.items()}
    if isinstance(template, list):
        return [wrap(v, value, index) for v in template]
    return template


def literal(template: Any, value_expr: str = "val") -> str:
    """Python source that builds ``template`` afresh, with ``$value`` replaced by ``value_expr``.

    Generated code then builds wrapped values and constants directly, with no copying or walking
    of templates per message.
    """
    if isinstance(template, str):
        return value_expr if template == "$value" else repr(template)
    if isinstance(template, dict):
        items = ", ".join(f"{k!r}: {literal(v, value_expr)}" for k, v in template.items())
        return "{" + items + "}"
    if isinstance(template, list):
        return "[" + ", ".join(literal(v, value_expr) for v in template) + "]"
    return repr(template)


def table_fn(table: CodeTable, as_: str) -> Callable[[str], Any]:
    """HL7 code → FHIR code, Coding or CodeableConcept, per the table."""
    mapping, default, system, display = table.map, table.default, table.system, table.display
    systems = table.systems

    keep_text = table.unmapped_as_text and as_ == "CodeableConcept"

    def code_of(text: str) -> Any:
        code = mapping.get(text, default) if text else None
        if code is None:
            return {"text": text} if keep_text and text else None
        if as_ == "code":
            return code
        sys_uri = systems.get(code, system)
        coding: dict[str, Any] = {"system": sys_uri, "code": code} if sys_uri else {"code": code}
        if code in display:
            coding["display"] = display[code]
        return coding if as_ == "Coding" else {"coding": [coding]}

    return code_of


def _text(v: str, q: str, d: Any, cs: str) -> str:
    """The first sub-part of ``v``, unescaped."""
    if q and q in v:
        v = v.split(q, 1)[0]
    if v and d.escape in v:
        v = unescape(v, d.key, cs)
    return v


def _texts(v: str, p: str, q: str, d: Any, cs: str) -> list[str]:
    return [_text(x, q, d, cs) for x in (v.split(p) if p else [v])]


def _bad_value(exc: ValueError, seg: Any, field: int) -> None:
    raise HL7ValidationError(str(exc), where=f"{seg.name}-{field}", code="102") from exc


class Compiler:
    """Generates the functions; ``resource_maker`` turns a datatype result into a reference.

    ``trace``: every store also tells the run's trace (``run.trace``, a
    :class:`engine.mappings.provenance.Trace`, or None) which rule, file and line wrote it, for
    the workbench; without it the generated code is what it always was."""

    def __init__(
        self,
        files: MappingFiles,
        resource_maker: Callable[[str, DatatypeFn], Callable[..., Any]],
        *,
        trace: bool = False,
    ) -> None:
        self.files = files
        self.resource_maker = resource_maker
        self.trace = trace
        self.datatypes: dict[str, DatatypeFn] = {}
        self.segments: dict[str, SegmentFn] = {}
        self.sources: dict[str, str] = {}
        #: the segment maps being compiled, outermost first (a ``build`` of one of them is a cycle)
        self._open: list[str] = []

    # -- helpers for the generated code ------------------------------------------------------

    def _table(self, name: str, where: str) -> CodeTable:
        t = self.files.tables.get(name)
        if t is None:
            raise ConfigError(f"{where}: no code table named {name!r} (tables/{name}.yaml)")
        return t

    def datatype(self, name: str, where: str) -> DatatypeFn:
        fn = self.datatypes.get(name)
        if fn is not None:
            return fn
        dmap = self.files.datatypes.get(name)
        if dmap is None:
            raise ConfigError(f"{where}: no datatype map named {name!r} (datatypes/{name}.yaml)")
        origin = self.files.origin.get(f"datatypes/{name}", name)
        # a forward reference lets a map refer to itself without recursing at compile time
        slot: list[DatatypeFn] = []
        self.datatypes[name] = lambda *a: slot[0](*a)
        env: dict[str, Any] = {}
        lines = ["def fn(raw, P, Q, d, cs, run):"]
        lines += [
            "    parts = raw.split(P) if P else [raw]",
            "    n = len(parts)",
            "    out = {}",
        ]
        for i, rule in enumerate(dmap.rules):
            if rule.direction == "out":
                continue
            if self.trace:
                env[f"WHO{i}"] = self._origin(f"datatypes/{name}", i, rule, name, segment=False)
            lines += self._rule_code(rule, i, env, f"{origin}, rules[{i}]", level="part")
        lines.append("    return out or None")
        built: DatatypeFn = self._exec(f"datatype {name}", lines, env)
        slot.append(built)
        self.datatypes[name] = built
        return built

    def segment(self, name: str) -> SegmentFn:
        fn = self.segments.get(name)
        if fn is not None:
            return fn
        smap = self.files.segments[name]
        origin = self.files.origin.get(f"segments/{name}", name)
        env: dict[str, Any] = {}
        lines = [
            "def fn(seg, out, run):",
            "    f = seg.fields()",
            "    nf = len(f)",
            "    d = seg.delimiters",
            "    cs = seg.charset",
            "    R = d.repetition",
            "    C = d.component",
            "    S = d.subcomponent",
            # the fields some rule took a value from (what is left is reported as not mapped)
            "    u = run.used.get(id(seg))",
            "    if u is None: u = run.used[id(seg)] = set()",
        ]
        self._open.append(name)
        try:
            for i, rule in enumerate(smap.rules):
                if rule.direction == "out":
                    continue
                if self.trace:
                    env[f"WHO{i}"] = self._origin(f"segments/{name}", i, rule, smap.segment)
                lines += self._rule_code(rule, i, env, f"{origin}, rules[{i}]", level="field")
        finally:
            self._open.pop()
        lines.append("    return None")
        seg_fn: SegmentFn = self._exec(f"segment {name}", lines, env)
        self.segments[name] = seg_fn
        return seg_fn

    def _origin(self, key: str, i: int, rule: Rule, owner: str, *, segment: bool = True) -> Any:
        """Where rule ``i`` of a map is written (a map kept without refused rules counts its
        rules as the file does)."""
        kept = self.files.kept.get(key)
        at = kept[i] if kept is not None and i < len(kept) else i
        source = self.files.sources.get(key)
        line = source.line_of(("rules", at)) if source is not None else 1
        where = self.files.origin.get(key, key)
        return RuleOrigin(where, line, describe_rule(rule, owner, segment=segment))

    def _stored(self, rule: Rule, i: int, ind: str, level: str) -> list[str]:
        return _store(rule, i, ind, level, traced=self.trace)

    def _exec(self, label: str, lines: list[str], env: dict[str, Any]) -> Any:
        env.update(
            PUT=put,
            NPUT=put_noted,
            WRAP=wrap,
            TEXT=_text,
            TEXTS=_texts,
            UNESC=unescape,
            __builtins__=__builtins__,
        )
        source = "\n".join(lines) + "\n"
        self.sources[label] = source
        code = compile(source, f"<mapping {label}>", "exec")
        exec(code, env)  # noqa: S102 - our own generated code from validated specs
        return env["fn"]

    # -- code for one rule -------------------------------------------------------------------
    #
    # Each builder returns source lines for the body of ``fn``: one per kind of rule (a constant,
    # a build, a datatype part, a field), one per kind of value read (a datatype, a code or text,
    # a transform), and one for where the value is stored. ``i`` is the rule's index: the names
    # a rule puts in ``env`` (``PATH3``, ``DT3``) carry it.

    def _rule_code(
        self, rule: Rule, i: int, env: dict[str, Any], where: str, *, level: str
    ) -> list[str]:
        """The lines of one rule, under its ``when`` when it has one."""
        env[f"PATH{i}"] = tuple(rule.fhir.split("."))
        if rule.wrap is not None:
            env[f"TPL{i}"] = rule.wrap
        cond_lines, cond_expr = self._cond_code(rule.when, i, env, level)
        if rule.value is not None:
            body = [f"    val = {literal(rule.value)}", *self._stored(rule, i, "    ", level)]
            return _guarded(cond_lines, cond_expr, body)
        if rule.build is not None:
            return _guarded(cond_lines, cond_expr, self._build_code(rule, i, env, where, level))
        if level == "part":
            return _guarded(cond_lines, cond_expr, self._part_code(rule, i, env, where))
        return self._field_code(rule, i, env, where, cond_lines, cond_expr)

    def _build_code(
        self, rule: Rule, i: int, env: dict[str, Any], where: str, level: str
    ) -> list[str]:
        """A ``build`` rule: another map of the same segment fills one element."""
        if level != "field":
            raise ConfigError(f"{where}: 'build' is for segment maps only")
        if rule.build not in self.files.segments:
            raise ConfigError(f"{where}: no segment map named {rule.build!r}")
        if rule.build in self._open:  # it would build itself without end, here and per message
            cycle = " -> ".join([*self._open[self._open.index(rule.build) :], rule.build])
            raise ConfigError(f"{where}: build {rule.build!r} is a cycle ({cycle})")
        env[f"BUILD{i}"] = self.segment(rule.build)
        return [
            "    val = {}",
            f"    BUILD{i}(seg, val, run)",
            *self._stored(rule, i, "    ", level),
        ]

    def _part_code(self, rule: Rule, i: int, env: dict[str, Any], where: str) -> list[str]:
        """A datatype map's rule: the whole element, or one component (and subcomponent)."""
        c = rule.component
        if c is None:  # the whole element
            return [
                *self._value_code(rule, i, env, where, "    ", "raw", "P", "Q"),
                *self._stored(rule, i, "    ", "part"),
            ]
        sub = rule.subcomponent
        body = [f"    if n >= {c} and parts[{c - 1}]:", f"        v = parts[{c - 1}]"]
        if not sub:
            return [
                *body,
                *self._value_code(rule, i, env, where, "        ", "v", "Q", "''"),
                *self._stored(rule, i, "        ", "part"),
            ]
        return [
            *body,
            f"        v = (v.split(Q) + [''] * {sub})[{sub - 1}] if Q else "
            f"(v if {sub} == 1 else '')",
            "        if v:",
            *self._value_code(rule, i, env, where, "            ", "v", "''", "''"),
            *self._stored(rule, i, "            ", "part"),
        ]

    def _field_code(
        self,
        rule: Rule,
        i: int,
        env: dict[str, Any],
        where: str,
        cond_lines: list[str],
        cond_expr: str,
    ) -> list[str]:
        """A segment map's rule: each repetition of the field (the first only, unless the rule
        repeats), its component and subcomponent, inside a ``try`` that turns a ValueError into
        an error naming the field."""
        fno = rule.field
        assert fno is not None
        inner: list[str] = []
        if cond_expr:
            inner += ["        " + s.strip() for s in cond_lines]
            inner.append(f"        if {cond_expr}:")
            ind = "            "
        else:
            ind = "        "
        reps = "raw.split(R) if R in raw else (raw,)" if rule.repeats else "(raw.split(R, 1)[0],)"
        inner.append(f"{ind}for r in {reps}:")
        ind2 = ind + "    "
        inner.append(f"{ind2}if not r: continue")
        inner += self._component_code(rule, i, env, where, ind2)
        inner += self._stored(rule, i, ind2, "field")
        # a value a transform cannot read (a date that does not exist) is an error naming the
        # field, never a wrong value sent on
        env["BAD"] = _bad_value
        return [
            "    try:",
            *["    " + line for line in _field_read(rule, fno) + inner],
            "    except ValueError as exc:",
            f"        BAD(exc, seg, {fno})",
        ]

    def _component_code(
        self, rule: Rule, i: int, env: dict[str, Any], where: str, ind: str
    ) -> list[str]:
        """From one repetition ``r``: the rule's component (and subcomponent), then its value."""
        comp, sub = rule.component, rule.subcomponent
        if not comp:
            return self._value_code(rule, i, env, where, ind, "r", "C", "S")
        lines = [
            f"{ind}v = (r.split(C) + [''] * {comp})[{comp - 1}] if C in r else "
            f"(r if {comp} == 1 else '')"
        ]
        if not sub:
            lines.append(f"{ind}if not v: continue")
            return lines + self._value_code(rule, i, env, where, ind, "v", "S", "''")
        lines.append(
            f"{ind}v = (v.split(S) + [''] * {sub})[{sub - 1}] if S in v else "
            f"(v if {sub} == 1 else '')"
        )
        lines.append(f"{ind}if not v: continue")
        return lines + self._value_code(rule, i, env, where, ind, "v", "''", "''")

    # -- code for one value ------------------------------------------------------------------

    def _value_code(
        self, rule: Rule, i: int, env: dict[str, Any], where: str, ind: str, v: str, p: str, q: str
    ) -> list[str]:
        """``val`` from one node: its raw text ``v``, split into parts by ``p``, sub-parts by
        ``q`` (``''``: not split)."""
        if rule.type:
            return self._datatype_value(rule, i, env, where, ind, v, p, q)
        name = rule.transform or "text"
        if rule.table or name == "text":
            return self._text_value(rule, i, env, where, ind, v, p, q)
        env[f"TF{i}"] = get_transform(name).inbound
        return [f"{ind}val = TF{i}(TEXTS({v}, {p}, {q}, d, cs), run.ctx)"]

    def _datatype_value(
        self, rule: Rule, i: int, env: dict[str, Any], where: str, ind: str, v: str, p: str, q: str
    ) -> list[str]:
        """A datatype map's function on the node (or a resource made from it)."""
        assert rule.type is not None
        dt = self.datatype(rule.type, where)
        if rule.resource:
            env[f"MAKE{i}"] = self.resource_maker(rule.resource, dt)
            return [f"{ind}val = MAKE{i}({v}, {p}, {q}, d, cs, run)"]
        env[f"DT{i}"] = dt
        return [f"{ind}val = DT{i}({v}, {p}, {q}, d, cs, run)"]

    def _text_value(
        self, rule: Rule, i: int, env: dict[str, Any], where: str, ind: str, v: str, p: str, q: str
    ) -> list[str]:
        """The node's first part, unescaped; through the code table when the rule names one."""
        lines = [f"{ind}val = {v}"]
        for sep in (p, q):
            if sep != "''":
                lines.append(f"{ind}if {sep} and {sep} in val: val = val.split({sep}, 1)[0]")
        lines.append(f"{ind}if val and d.escape in val: val = UNESC(val, d.key, cs)")
        if rule.table:
            env[f"TAB{i}"] = table_fn(self._table(rule.table, where), rule.as_)
            lines.append(f"{ind}val = TAB{i}(val) if val else None")
        return lines

    # -- code for a condition ----------------------------------------------------------------

    def _cond_code(
        self, c: Condition | None, i: int, env: dict[str, Any], level: str
    ) -> tuple[list[str], str]:
        """Lines that read the condition's elements into ``ct{i}...``, and the test expression."""
        if c is None:
            return [], ""
        lines: list[str] = []
        return lines, self._cond_expr(c, f"{i}", env, level, lines)

    def _cond_expr(
        self, c: Condition, tag: str, env: dict[str, Any], level: str, lines: list[str]
    ) -> str:
        """The test of one condition (its trigger, its element, its ``any``), all of which must
        hold; ``tag`` names what it reads (``ct3``, ``ct3_0`` for the first alternative)."""
        if c.lacks:
            raise ConfigError("'lacks' is for a message map's resource plans, not for rules")
        tests: list[str] = []
        if c.trigger:
            env[f"TRIG{tag}"] = frozenset(c.trigger)
            tests.append(f"run.trigger in TRIG{tag}")
        if c.field is not None or c.component is not None:
            tests += _element_tests(c, tag, env, level, lines)
        if c.any:
            alternatives = [
                self._cond_expr(sub, f"{tag}_{k}", env, level, lines) for k, sub in enumerate(c.any)
            ]
            tests.append("(" + " or ".join(f"({a})" for a in alternatives) + ")")
        return " and ".join(tests) or "True"


def _element_tests(
    c: Condition, tag: str, env: dict[str, Any], level: str, lines: list[str]
) -> list[str]:
    """Read the element a condition names into ``ct{tag}`` (a line added to ``lines``) and test
    it: ``in``, ``not_in``, ``present``."""
    if level == "field":
        lines.append(
            f"    ct{tag} = seg.get({c.field or 1}, 1, {c.component or 1}, {c.subcomponent or 1})"
        )
    else:
        cno = c.component or 1
        lines.append(f"    ct{tag} = TEXT(parts[{cno - 1}], Q, d, cs) if n >= {cno} else ''")
    tests: list[str] = []
    if c.in_ is not None:
        env[f"IN{tag}"] = frozenset(c.in_)
        tests.append(f"ct{tag} in IN{tag}")
    if c.not_in:
        env[f"NOTIN{tag}"] = frozenset(c.not_in)
        tests.append(f"ct{tag} not in NOTIN{tag}")
    if c.present is not None:
        tests.append(f"bool(ct{tag}) is {c.present}")
    return tests


def _guarded(cond_lines: list[str], cond_expr: str, body: list[str]) -> list[str]:
    """``body`` under the rule's condition when it has one, after the lines that read it."""
    if cond_expr:
        return [*cond_lines, f"    if {cond_expr}:", *["    " + s for s in body]]
    return body


def _field_read(rule: Rule, fno: int) -> list[str]:
    """The opening of a field rule: the field's raw text as ``raw`` when it has one.

    A single element another rule has set already is not read again (the first valued rule
    wins): nothing is built for it (no Practitioner nobody refers to), and the field counts as
    taken, a source the mapping file ranks below the one that set it."""
    path = rule.fhir.split(".")
    if len(path) == 1 and not path[-1].endswith("[]"):
        key = path[0]
        return [
            f"    if nf > {fno} and f[{fno}] and {key!r} in out:",
            f"        u.add({fno if rule.repeats else -fno})",
            f"    elif nf > {fno} and f[{fno}]:",
            f"        raw = f[{fno}]",
        ]
    return [f"    if nf > {fno} and f[{fno}]:", f"        raw = f[{fno}]"]


def _store(rule: Rule, i: int, ind: str, level: str, *, traced: bool = False) -> list[str]:
    """Store ``val`` (wrapped, when the rule says so) at the rule's FHIR path in ``out``, when it
    has a value; at field level, the field then counts as taken. ``traced``: the run's trace is
    told where it went and by which rule (``WHO{i}``)."""
    path = rule.fhir.split(".")
    simple = len(path) == 1
    key = path[0].removesuffix("[]")
    append = path[-1].endswith("[]")
    # text, codes and datatypes are never valued when falsy; a transform may give False or 0
    truthy = rule.value is None and (rule.transform in (None, "text") or rule.build is not None)
    test = "val" if truthy else "val is not None and val != '' and val != {}"
    out = [f"{ind}if {test}:"]
    ind2 = ind + "    "
    # the field counts as taken only once its value is written (-n: only the first repetition
    # of field n was read, reported if it has more)
    used = ""
    if level == "field" and rule.field is not None:
        used = f"u.add({rule.field if rule.repeats else -rule.field})"
    note = f"if run.trace is not None: run.trace.note({{}}, {{}}, val, WHO{i})"
    if rule.wrap is not None:
        out.append(f"{ind2}val = {literal(rule.wrap)}")
    if simple and append and traced:
        out.append(f"{ind2}lst = out.setdefault({key!r}, [])")
        out.append(f"{ind2}lst.append(val)")
        out.append(f"{ind2}" + note.format("lst", "len(lst) - 1"))
        if used:
            out.append(f"{ind2}{used}")
    elif simple and append:
        out.append(f"{ind2}out.setdefault({key!r}, []).append(val)")
        if used:
            out.append(f"{ind2}{used}")
    elif simple:
        out.append(f"{ind2}if {key!r} not in out:")
        out.append(f"{ind2}    out[{key!r}] = val")
        if traced:
            out.append(f"{ind2}    " + note.format("out", repr(key)))
        if used:
            out.append(f"{ind2}    {used}")
    else:
        put_call = (
            f"NPUT(out, PATH{i}, val, run.trace, WHO{i})" if traced else f"PUT(out, PATH{i}, val)"
        )
        out.append(f"{ind2}if {put_call}: {used}" if used else f"{ind2}{put_call}")
    return out
