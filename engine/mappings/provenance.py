"""Which mapping file and line made each element of a Bundle (the workbench's provenance).

A mapping author who sees ``Patient.name[0].family`` in the output wants to know which rule put
it there: here ``segments/PID.yaml, line 23`` (``PID-5 → name[]``, type XPN) and, inside it,
``datatypes/XPN.yaml, line 7`` (``XPN.1.1 → family``). Asked for, the compiler generates a
second set of functions (:class:`engine.mappings.compiler.Compiler` with ``trace=True``) whose
every store also tells a :class:`Trace` where the value went and which rule wrote it; the
ordinary functions are generated exactly as before, so a message converted without a trace
pays nothing for this.

How a placement is remembered: by the container it went into and its key (a dict's key, a
list's index), keyed on ``id()`` of the container, the containers (and the values) being kept
alive by the trace for the length of the run, so no id is reused. A value that is itself a
dict or list is also remembered by its own id, so it is found again when the engine later
moves it (identifiers made distinct into a new list) or copies the dict around it (a resource
given its ``id``: :meth:`Trace.alias`). After the Bundle is made, :meth:`Trace.sources` walks
it and gives every leaf its chain of rules, outermost first. Elements no rule wrote and that a
message map's ``refs``, ``values`` or ``trigger_values`` explain are given that line; the rest
(``fullUrl``, ``request``, ``id``, ``resourceType``, a Claim's line numbers) the engine made.

Incomplete: when two rules' dicts are merged into one element (a later rule adding keys to an
element an earlier one made), the keys moved keep the outer rule only, not the datatype rule
inside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.mappings.loader import MappingFiles
from engine.mappings.spec import MessageMap, ResourcePlan, Rule

__all__ = ["ElementSource", "RuleOrigin", "Trace", "describe_rule", "plan_origins"]


@dataclass(frozen=True)
class RuleOrigin:
    """Where a rule is written: the file as errors name it, its line, and what it does."""

    file: str
    line: int
    #: ``PID-5 → name[] (XPN)``: what the rule reads and where it writes
    rule: str

    def __str__(self) -> str:
        return f"{self.file}, line {self.line}: {self.rule}"


@dataclass(frozen=True)
class ElementSource:
    """One leaf of the Bundle, its value, and the rules that made it, outermost first (none:
    the engine made it, as it makes fullUrls, requests and ids)."""

    path: str
    value: Any
    origins: tuple[RuleOrigin, ...]


def describe_rule(rule: Rule, owner: str, *, segment: bool) -> str:
    """A rule in a few words: what it reads (``PID-5``, ``XPN.1``, a constant) and writes."""
    if rule.value is not None:
        source = f"constant {rule.value!r}"[:60]
    elif rule.build is not None:
        source = f"{owner} (built with {rule.build})"
    else:
        source = owner
        if segment and rule.field is not None:
            source += f"-{rule.field}"
        for part in (rule.component, rule.subcomponent):
            if part is not None:
                source += f".{part}"
    how = (
        rule.type or rule.table or (rule.transform if rule.transform not in (None, "text") else "")
    )
    return f"{source} → {rule.fhir}" + (f" ({how})" if how else "")


def plan_origins(files: MappingFiles, mm: MessageMap, plan: ResourcePlan) -> dict[str, RuleOrigin]:
    """The lines of a message map's plan that write elements themselves, by top-level element:
    its references (``refs``), codes by trigger (``trigger_values``) and defaults (``values``)."""
    key = f"messages/{mm.message}"
    source = files.sources.get(key)
    where = files.origin.get(key, key)
    index = next((i for i, p in enumerate(mm.resources) if p.name == plan.name), 0)
    out: dict[str, RuleOrigin] = {}
    sections: tuple[tuple[str, Mapping[str, Any]], ...] = (
        ("refs", plan.refs),
        ("trigger_values", plan.trigger_values),
        ("values", plan.values),
    )
    for section, paths in sections:
        for path in paths:
            top = path.split(".", 1)[0].removesuffix("[]")
            at = ("resources", index, section, path)
            line = source.line_of(at) if source is not None else 1
            out.setdefault(top, RuleOrigin(where, line, f"{plan.name}: {section} {path}"))
    return out


class Trace:
    """What one message's traced conversion placed where, and by which rule."""

    __slots__ = ("_aliases", "_keep", "_objects", "_slots", "planned")

    def __init__(self) -> None:
        #: per entry of the Bundle, the message map's line for each top-level element its plan
        #: may write (:func:`plan_origins`), set by the mapper
        self.planned: Sequence[Mapping[str, RuleOrigin]] = ()
        self._slots: dict[tuple[int, Any], RuleOrigin] = {}
        self._objects: dict[int, RuleOrigin] = {}
        self._aliases: dict[int, Any] = {}
        #: every container and value noted, so their ids stay theirs while the trace lives
        self._keep: list[Any] = []

    def note(self, container: Any, key: Any, value: Any, who: RuleOrigin) -> None:
        """``who`` put ``value`` at ``container[key]``."""
        self._keep.append((container, value))
        self._slots[(id(container), key)] = who
        if isinstance(value, (dict, list)):
            self._objects[id(value)] = who

    def alias(self, copy: Any, original: Any) -> None:
        """``copy`` is a shallow copy of ``original`` (what was noted of one holds for both)."""
        self._keep.append((copy, original))
        self._aliases[id(copy)] = original

    def _origin(self, node: Any, key: Any, value: Any) -> RuleOrigin | None:
        who = self._objects.get(id(value)) if isinstance(value, (dict, list)) else None
        if who is not None:
            return who
        seen = 0
        while node is not None and seen < 8:  # a copy of a copy (an extra resource given an id)
            who = self._slots.get((id(node), key))
            if who is not None:
                return who
            node = self._aliases.get(id(node))
            seen += 1
        return None

    def sources(self, bundle: Mapping[str, Any]) -> list[ElementSource]:
        """Every leaf of ``bundle`` with its rules; a leaf no rule wrote whose top-level element
        a plan's ``refs``, ``values`` or ``trigger_values`` may have written (:attr:`planned`)
        takes that line of the message map."""
        plan_origins = self.planned
        out: list[ElementSource] = []
        for i, entry in enumerate(bundle.get("entry", [])):
            if not isinstance(entry, dict):
                continue
            planned = plan_origins[i] if i < len(plan_origins) else {}
            for key, value in entry.items():
                if key != "resource" or not isinstance(value, dict):
                    self._walk(value, f"entry[{i}].{key}", (), None, out)
                    continue
                for rkey, rvalue in value.items():
                    who = self._origin(value, rkey, rvalue)
                    chain: tuple[RuleOrigin, ...] = (who,) if who is not None else ()
                    self._walk(rvalue, f"entry[{i}].resource.{rkey}", chain, planned.get(rkey), out)
        return out

    def _walk(
        self,
        node: Any,
        path: str,
        chain: tuple[RuleOrigin, ...],
        fallback: RuleOrigin | None,
        out: list[ElementSource],
    ) -> None:
        """The leaves under ``node``; one no rule wrote takes ``fallback`` (the message map)."""
        if isinstance(node, dict):
            items: Any = node.items()
        elif isinstance(node, list):
            items = enumerate(node)
        else:
            if not chain and fallback is not None:
                chain = (fallback,)
            out.append(ElementSource(path, node, chain))
            return
        for key, value in items:
            who = self._origin(node, key, value)
            here = chain + (who,) if who is not None and who not in chain else chain
            sub = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}"
            self._walk(value, sub, here, fallback, out)
