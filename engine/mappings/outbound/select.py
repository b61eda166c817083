"""Which resources feed which segments: the selections of an outbound file, read from the input.

Selections (``select`` in ``specs/outbound/*.yaml``, :class:`~engine.mappings.outbound_spec.Select`)
are read in order, so one may name those above it: by type, ``via`` the references at a path of
another selection, kept when they ``refers`` to one, dropped when referred to ``not_via``, sorted,
and stood in for when a reference points outside the input (``stand_in``). Inside a repeating
segment group (``each``), a selection that depends on the group's is read again for the current
resource (:func:`resources`). The checks that stop a message before anything is written (a
required selection empty, a reference that must resolve, a required element) are here too.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from engine.errors import ConversionError
from engine.mappings.outbound.fhir import (
    TAIL_RE,
    ref_label,
    ref_objs,
    refs_at,
    text_of,
    values_at,
)
from engine.mappings.outbound.plan import MapCompiler
from engine.mappings.outbound.run import Run
from engine.mappings.outbound_spec import MapUse, OutboundMessage, Pick, Select

__all__ = ["State", "each", "map_use", "resources", "select_all"]


@dataclass
class State:
    """Per-message state while segments are written."""

    spec: OutboundMessage
    compiler: MapCompiler
    run: Run
    #: selection name -> the resources selected
    selected: dict[str, list[dict[str, Any]]]
    #: inside a repeating group: selection name -> the resource of this repetition
    current: dict[str, dict[str, Any]]
    #: selection name -> the references outside the input it could not follow (for the error)
    missing: dict[str, list[str]]
    #: ``$trigger``, ``$timestamp`` ... -> their values in this message
    specials: dict[str, str]
    #: segment ID -> how many have been written (``$set_id``)
    counts: dict[str, int] = field(default_factory=dict)


def map_use(use: MapUse | str) -> tuple[str, str | None, list[str], tuple[Pick, ...]]:
    """A step's map: its name, the selection it reads (None: the step's), the resource types it
    accepts besides its own, and its picks."""
    if isinstance(use, str):
        return use, None, [], ()
    return use.map, use.from_, use.accept, tuple(use.pick)


def _sel(spec: OutboundMessage, name: str) -> Select:
    return next(s for s in spec.select if s.name == name)


def select_all(state: State) -> dict[str, Any]:
    """Read every selection, check what the message cannot be written without, and give the
    anchor resource. Raises :class:`ConversionError` naming what is missing."""
    spec = state.spec
    for sel in spec.select:
        state.selected[sel.name] = select(sel, state)
    for sel in spec.select:
        if sel.required and not state.selected[sel.name]:
            raise ConversionError(_missing_text(spec, sel, state))
    anchor = state.selected[spec.anchor]
    if not anchor:
        a = _sel(spec, spec.anchor)
        raise ConversionError(f"{spec.message} needs a {a.resource}: the input has none")
    for path in spec.resolve:
        name, _, rest = path.partition(".")
        sel = _sel(spec, name)
        for res in state.selected[name]:
            for ref in refs_at(res, rest):
                if state.run.index.resolve(ref) is None:
                    raise ConversionError(
                        f"{spec.message} needs every {sel.resource}.{rest} in the input: "
                        f"{ref} is not there"
                    )
    _check_requirements(state)
    return anchor[0]


def _check_requirements(state: State) -> None:
    """The outbound file's ``requires``: an element absent is an error, unless the resource has
    one of the values that excuse it (then a warning says what the message lacks)."""
    spec, run = state.spec, state.run
    for req in spec.requires:
        sel = _sel(spec, req.select)
        got = state.selected[req.select]
        if got and values_at(got[0], req.fhir):
            continue
        if (
            got
            and req.unless
            and any(
                any(text_of(v) in allowed for v in values_at(got[0], path))
                for path, allowed in req.unless.items()
            )
        ):
            said = ", ".join(
                f"{p} {'/'.join(str(v) for v in values_at(got[0], p))}"
                for p in req.unless
                if values_at(got[0], p)
            )
            run.note(
                f"lacks {sel.resource}.{req.fhir}",
                f"{sel.resource}.{req.fhir}: none ({said}), so {spec.message} {req.for_} is empty",
            )
            continue
        raise ConversionError(
            f"{sel.resource}.{req.fhir} is required for {spec.message} {req.for_}"
        )


def select(sel: Select, state: State) -> list[dict[str, Any]]:
    """The resources of one selection (the first only, unless ``many``)."""
    index = state.run.index
    out: list[dict[str, Any]] = []
    if not sel.via:
        out = [r for r in index.resources if r["resourceType"] == sel.resource]
    via = sel.via or (sel.or_via if not out else None)
    if via:
        out = _via(sel, via, state)
    for path, target in sel.refers.items():
        targets = (
            [state.current[target]] if target in state.current else state.selected.get(target, [])
        )
        out = [
            r
            for r in out
            if any(
                any(index.resolve_ref(ref) is t for t in targets) for _, ref in ref_objs(r, path)
            )
        ]
    for nv in sel.not_via:
        base, path = nv.split(".", 1)
        dropped = {
            id(index.resolve_ref(ref))
            for b in state.selected.get(base, [])
            for _, ref in ref_objs(b, path)
        }
        out = [r for r in out if id(r) not in dropped]
    if sel.sort:
        sort_path = sel.sort

        def key(r: dict[str, Any]) -> tuple[bool, float, str]:
            vals = values_at(r, sort_path)
            v = vals[0] if vals else None
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return (False, float(v), "")
            return (v is None, 0.0, "" if v is None else str(v))

        out.sort(key=key)
    return out if sel.many else out[:1]


def _via(sel: Select, via: str, state: State) -> list[dict[str, Any]]:
    """The resources the references at ``via`` point to: those in the input first, then the
    stand-ins of references that name this type, then those of logical references (whose
    type is only presumed). A reference outside the input that makes no stand-in is
    remembered for the error and the warning."""
    index, run = state.run.index, state.run
    base, path = via.split(".", 1)
    base_sel = _sel(state.spec, base)
    bases = [state.current[base]] if base in state.current else state.selected.get(base, [])
    found: list[tuple[int, dict[str, Any], Any]] = []
    for b in bases:
        for holder, ref in ref_objs(b, path):
            res = index.resolve_ref(ref)
            if res is not None:
                if res.get("resourceType") == sel.resource:
                    found.append((0, res, holder))
                continue
            element = f"{base_sel.resource}.{path}"
            made = index.stand_in(ref, sel.resource) if sel.stand_in else None
            if made is not None:
                res, how = made
                found.append((1 if ref.get("type") or ref.get("reference") else 2, res, holder))
                run.note(
                    f"stand-in {element}",
                    f"{element} ({ref_label(ref)}) is not in the input: the "
                    f"{sel.resource} is written from the reference ({how})",
                )
                continue
            _missed(sel, element, ref, state)
    out: list[dict[str, Any]] = []
    for _, res, holder in sorted(found, key=lambda f: f[0]):
        if all(res is not o for o in out):
            out.append(res)
        if isinstance(holder, dict):
            run.took.add(id(holder))  # the participant that is the patient has its place
    return out


def _missed(sel: Select, element: str, ref: dict[str, Any], state: State) -> None:
    """A reference outside the input that makes no stand-in: remembered for the error, and a
    warning when the selection is not required."""
    literal = ref.get("reference")
    m = TAIL_RE.search(literal) if isinstance(literal, str) else None
    named = ref.get("type") or (m.group(1).split("/", 1)[0] if m else None)
    if named in (None, sel.resource):
        state.missing.setdefault(sel.name, []).append(ref_label(ref))
        if not sel.required:
            state.run.note(
                f"missing {element} {sel.resource}",
                f"{element} ({ref_label(ref)}) is not in the input: "
                f"no {sel.resource} for it in the message",
            )


def resources(name: str, state: State) -> list[dict[str, Any]]:
    """A selection's resources where the message is: the current one inside its group, read
    again when it depends on a group's current resource, else as selected."""
    if name in state.current:
        return [state.current[name]]
    sel = _sel(state.spec, name)
    depends = [sel.via.split(".", 1)[0]] if sel.via else []
    depends += list(sel.refers.values())
    if any(d in state.current for d in depends):
        return select(sel, state)
    return state.selected.get(name, [])


def each(spec_each: str, state: State) -> Iterator[tuple[str, dict[str, Any]]]:
    """What a repeating step iterates: the selection's resources, or (``selection.list``) a
    copy of the resource per element of that list, holding that one element."""
    name, _, path = spec_each.partition(".")
    for res in resources(name, state):
        if not path:
            yield name, res
            continue
        elements = res.get(path)
        for el in elements if isinstance(elements, list) else []:
            copy = {**res, path: [el]}
            state.run.copies[id(copy)] = res
            yield name, copy


def _missing_text(spec: OutboundMessage, sel: Select, state: State) -> str:
    if sel.via:
        base, path = sel.via.split(".", 1)
        base_type = _sel(spec, base).resource
        # references that may be to this type (``Patient/1``, or a urn:uuid: of any type)
        missing = [
            r
            for r in state.missing.get(sel.name, [])
            if not (m := TAIL_RE.search(r)) or m.group(1).startswith(sel.resource + "/")
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
            f"{p} refers to the " + _sel(spec, t).resource for p, t in sel.refers.items()
        )
    return text + ": the input has none"
