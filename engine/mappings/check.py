"""Checks of the mapping files once all are loaded: FHIR paths, transforms, names they refer to.

Each file is valid on its own once it is parsed (:mod:`engine.mappings.spec`); what a file names
is checked here, before anything is compiled, so that a mistake stops loading with the file, the
line and the key (``segments/PID.yaml, line 20, rules[6].fhir: 'birthdate': FHIR R4 Patient has no
element 'birthdate' (did you mean 'birthDate'?)``):

* every FHIR path and fixed JSON shape against the R4 model of its type
  (:mod:`engine.mappings.fhir_paths`): inbound rules (where an element is written), plan
  references, values, identities; outbound selections, sorts, picks, trigger conditions and
  defaults (where an element is read);
* that a datatype map puts the type the element has (an ``Identifier`` map into ``identifier[]``)
  and a ``resource`` rule writes a Reference;
* every transform, code table, datatype map and segment map a rule names, in either direction
  (an outbound-only rule is not compiled until the first outbound message: a misspelt transform
  there would otherwise be found by that message).

All problems are collected; the first is raised, with how many more there are. A rule that a
file's format refused at load (:attr:`MappingFiles.refused`) comes first: the file was kept with
its other rules, whose paths are checked here like any other, so the count includes them.
"""

from __future__ import annotations

from typing import Any

from engine.errors import ConfigError
from engine.mappings.fhir_model import is_resource_type
from engine.mappings.fhir_paths import PathError, Target, root, shape_problems, suggest, walk
from engine.mappings.loader import MappingFiles
from engine.mappings.outbound_spec import MapUse, OutboundMessage, Step
from engine.mappings.spec import MessageMap, ResourcePlan, Rule
from engine.mappings.transforms import TRANSFORMS
from engine.yamlfile import YamlFile

__all__ = ["check_files"]

Key = tuple[Any, ...]


def check_files(files: MappingFiles) -> None:
    """Check every loaded file; raises :class:`ConfigError` naming the first problem's file,
    line and key."""
    problems = _Problems(files)
    for name, dmap in files.datatypes.items():
        src = f"datatypes/{name}"
        start = problems.root(src, ("fhir",), dmap.fhir)
        if start is not None:
            for i, rule in _numbered(files, src, dmap.rules):
                problems.rule(src, ("rules", i), start, rule)
    for name, starts in _starts(problems).items():
        src = f"segments/{name}"
        for start in starts:
            if start is not None:
                for i, rule in _numbered(files, src, files.segments[name].rules):
                    problems.rule(src, ("rules", i), start, rule)
    for name, mm in files.messages.items():
        _message(problems, f"messages/{name}", mm)
    for name, om in files.outbound.items():
        if isinstance(om, OutboundMessage):
            _Outbound(problems, f"outbound/{name}", om).check()
    problems.raise_first()


def _numbered(files: MappingFiles, src: str, rules: list[Rule]) -> list[tuple[int, Rule]]:
    """Each rule of a map with its position in the file (rules the file's format refused at
    load are not in the map: those after them have a position past their index)."""
    return list(zip(files.kept.get(src, range(len(rules))), rules, strict=True))


class _Problems:
    """The problems found, each a line naming file, line and key."""

    def __init__(self, files: MappingFiles) -> None:
        self.files = files
        self.found: list[str] = []

    def add(self, src: str, key: Key, message: str) -> None:
        source: YamlFile | None = self.files.sources.get(src)
        if source is None:  # a file given as a model, not read (tests)
            self.found.append(f"{self.files.origin.get(src, src)}, {key}: {message}")
        else:
            self.found.append(str(source.error(key, message)))

    def raise_first(self) -> None:
        """The first problem, the refusals at load first, with the count of all the others."""
        found = [text for text, _ in self.files.refused] + self.found
        if found:
            more = len(found) - 1 + sum(n for _, n in self.files.refused)
            tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
            raise ConfigError(found[0] + tail)

    def root(self, src: str, key: Key, type_name: str) -> Target | None:
        try:
            return root(type_name)
        except PathError as exc:
            self.add(src, key, str(exc))
            return None

    def walk(self, src: str, key: Key, start: Target, path: str, **kw: Any) -> Target | None:
        try:
            return walk(start, path, **kw)
        except PathError as exc:
            self.add(src, key, str(exc))
            return None

    def shape(self, src: str, key: Key, target: Target, shape: Any) -> list[Target]:
        """Check a JSON shape at ``key``; the targets ``$value`` stands for in it."""
        found, values = shape_problems(target, shape)
        for at, message in found:
            self.add(src, (*key, *at), message)
        return values

    def transform(self, src: str, key: Key, name: str) -> None:
        if name not in TRANSFORMS:
            hint = suggest(name, TRANSFORMS)
            self.add(
                src,
                key,
                f"no transform named {name!r}"
                + (f" (did you mean {hint!r}?)" if hint else "")
                + f"; available: {', '.join(sorted(TRANSFORMS))}",
            )

    def named(self, src: str, key: Key, kind: str, name: str) -> bool:
        """Is there a ``kind`` file (``tables``, ``datatypes``, ``segments``) of that name?"""
        known: dict[str, Any] = getattr(self.files, kind)
        if name in known:
            return True
        hint = suggest(name, known)
        self.add(
            src,
            key,
            f"no {kind[:-1].replace('table', 'code table')} named {name!r} ({kind}/{name}.yaml)"
            + (f"; did you mean {hint!r}?" if hint else ""),
        )
        return False

    def rule(self, src: str, at: Key, start: Target, rule: Rule) -> None:
        """One rule of a datatype or segment map: its path, the names it uses, its types."""
        if rule.transform is not None:
            self.transform(src, (*at, "transform"), rule.transform)
        if rule.table is not None:
            self.named(src, (*at, "table"), "tables", rule.table)
        if rule.build is not None:
            self.named(src, (*at, "build"), "segments", rule.build)
        dmap = None
        if rule.type is not None and self.named(src, (*at, "type"), "datatypes", rule.type):
            dmap = self.files.datatypes[rule.type]
        target = self.walk(src, (*at, "fhir"), start, rule.fhir, writes=True)
        if target is None:
            return
        values = [target]
        if rule.wrap is not None:
            values = self.shape(src, (*at, "wrap"), target, rule.wrap)
        if rule.value is not None:
            self.shape(src, (*at, "value"), target, rule.value)
        if rule.resource is not None:
            if not is_resource_type(rule.resource):
                self.add(src, (*at, "resource"), f"{rule.resource!r} is not a FHIR R4 resource")
            made, what = "Reference", f"a reference to the {rule.resource} it makes"
        elif dmap is not None:
            article = "an" if dmap.fhir[:1] in "AEIOU" else "a"
            made, what = dmap.fhir, f"{article} {dmap.fhir} (datatypes/{rule.type}.yaml)"
        else:
            return
        for value in values:
            if value.fhir_type != made and value.fhir_type != "Resource":
                self.add(
                    src,
                    (*at, "type"),
                    f"{rule.fhir!r} is a {value.fhir_type} in FHIR R4, but the rule writes {what}",
                )


def _starts(problems: _Problems) -> dict[str, list[Target | None]]:
    """Where the paths of each segment map start: its resource, or for a map that ``build``
    rules use, the elements they fill (``FT1-item``: ``ClaimItem``, the item of ``item[]`` on
    FT1's Claim; its own ``build`` of ``productOrService.coding[]``: ``Coding``)."""
    segments = problems.files.segments
    built = {r.build for smap in segments.values() for r in smap.rules if r.build}
    starts: dict[str, list[Target | None]] = {
        name: [problems.root(f"segments/{name}", ("resource",), smap.resource)]
        for name, smap in segments.items()
        if name not in built
    }
    queue = list(starts)
    while queue:
        name = queue.pop()
        for start in starts[name]:
            for rule in segments[name].rules:
                if start is None or rule.build is None or rule.build not in segments:
                    continue
                try:
                    target: Target | None = walk(start, rule.fhir, writes=True)
                except PathError:
                    target = None  # reported with the rule
                known = starts.setdefault(rule.build, [])
                if target is not None and target not in known:
                    known.append(target)
                    queue.append(rule.build)
    return starts


def _message(problems: _Problems, src: str, mm: MessageMap) -> None:
    for j, plan in enumerate(mm.resources):
        at: Key = ("resources", j)
        if not is_resource_type(plan.resource):
            problems.add(src, (*at, "resource"), f"{plan.resource!r} is not a FHIR R4 resource")
            continue
        _plan(problems, src, at, root(plan.resource), plan)


def _plan(problems: _Problems, src: str, at: Key, start: Target, plan: ResourcePlan) -> None:
    """A message map's resource plan: references, values, codes by trigger, identity."""
    if not plan.segments:  # what a plan makes is found by (and built from) its first segment map
        problems.add(src, (*at, "segments"), "no segment map: a resource is built from one or more")
    for path, ref in plan.refs.items():
        target = problems.walk(src, (*at, "refs", path), start, path, writes=True)
        wrap = getattr(ref, "wrap", None)
        if target is None:
            continue
        values = (
            [target] if wrap is None else problems.shape(src, (*at, "refs", path), target, wrap)
        )
        for value in values:
            if value.fhir_type != "Reference":
                problems.add(
                    src,
                    (*at, "refs", path),
                    f"{path!r} is a {value.fhir_type} in FHIR R4, not a Reference",
                )
    for path, value in plan.values.items():
        target = problems.walk(src, (*at, "values", path), start, path, writes=True)
        if target is not None:
            problems.shape(src, (*at, "values", path), target, value)
    for path, table in plan.trigger_values.items():
        problems.walk(src, (*at, "trigger_values", path), start, path, writes=True)
        problems.named(src, (*at, "trigger_values", path), "tables", table)
    if plan.identity is not None:
        problems.walk(src, (*at, "identity"), start, plan.identity)
    for k, path in enumerate(plan.required):
        problems.walk(src, (*at, "required", k), start, path)


class _Outbound:
    """The FHIR paths an outbound file reads, each from the resource of the selection it names."""

    def __init__(self, problems: _Problems, src: str, om: OutboundMessage) -> None:
        self.problems = problems
        self.src = src
        self.om = om
        #: selection name -> its resource's target (None: its resource is not a FHIR type)
        self.selections: dict[str, Target | None] = {}

    def check(self) -> None:
        om = self.om
        for i, sel in enumerate(om.select):
            at: Key = ("select", i)
            ok = is_resource_type(sel.resource)
            if not ok:
                self.problems.add(
                    self.src, (*at, "resource"), f"{sel.resource!r} is not a FHIR R4 resource"
                )
            self.selections[sel.name] = root(sel.resource) if ok else None
            for key in ("via", "or_via"):
                if getattr(sel, key):
                    self.via((*at, key), getattr(sel, key))
            for k, path in enumerate(sel.not_via):
                self.via((*at, "not_via", k), path)
            for path in sel.refers:
                self.read((*at, "refers", path), sel.name, path)
            if sel.sort:
                self.read((*at, "sort"), sel.name, sel.sort)
        for i, trig in enumerate(om.triggers):
            for path in trig.anchor:
                self.read(("triggers", i, "anchor", path), om.anchor, path)
        for i, req in enumerate(om.requires):
            self.read(("requires", i, "fhir"), req.select, req.fhir)
            for path in req.unless:
                self.read(("requires", i, "unless", path), req.select, path)
        for i, path in enumerate(om.resolve):
            self.via(("resolve", i), path)
        self.steps(("segments",), om.segments)

    def read(self, key: Key, selection: str, path: str) -> Target | None:
        start = self.selections.get(selection)
        if start is None:
            return None
        return self.problems.walk(self.src, key, start, path, label=start.fhir_type)

    def via(self, key: Key, path: str) -> None:
        """``selection.path``: the path read from that selection's resource."""
        selection, _, rest = path.partition(".")
        if rest:
            self.read(key, selection, rest)

    def steps(self, at: Key, steps: list[Step]) -> None:
        for i, step in enumerate(steps):
            here: Key = (*at, i)
            if step.each and "." in step.each:
                self.via((*here, "each"), step.each)
            owner = step.from_ or (step.each or "").split(".", 1)[0]
            for name, default in step.default_from.items():
                dkey: Key = (*here, "default_from", name)
                self.problems.transform(self.src, (*dkey, "transform"), default.transform)
                for k, path in enumerate(default.fhir):
                    self.read((*dkey, "fhir", k), owner, path)
            for m, use in enumerate(step.maps):
                self.map_use((*here, "maps", m), use)
            if step.segments:
                self.steps((*here, "segments"), step.segments)

    def map_use(self, key: Key, use: MapUse | str) -> None:
        """A segment map used by a step: it exists; its picks read elements of its resource."""
        name = use.map if isinstance(use, MapUse) else use
        if not self.problems.named(self.src, key, "segments", name) or isinstance(use, str):
            return
        try:
            start = root(self.problems.files.segments[name].resource)
        except PathError:
            return  # reported with the segment map
        for p, pick in enumerate(use.pick):
            pkey: Key = (*key, "pick", p)
            target = self.problems.walk(self.src, (*pkey, "fhir"), start, pick.fhir)
            if target is not None:
                for path in pick.where:
                    self.problems.walk(self.src, (*pkey, "where", path), target, path)
