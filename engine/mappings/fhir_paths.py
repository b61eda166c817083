"""FHIR paths of mapping files checked against the R4 model: a misspelt element stops loading.

A mapping file names FHIR elements by dotted paths (``name[].given``, ``period.start``,
``_gender.extension[]``) and fixed JSON shapes (``wrap``, plan ``values``). Without a check, a
misspelt element (``birthdate``) is only found when the output fails validation, or never when
validation is off. :func:`walk` follows a path through the model of its type
(:mod:`engine.mappings.fhir_model`), step by step, and raises :class:`PathError` at the first step
the type does not have, with the closest element name (:mod:`difflib`) as a suggestion;
:func:`shape_problems` does the same for the keys of a JSON shape and says what type ``$value``
stands for in it.

Rules of a path (FHIR R4 §2.6 JSON representation): a step is an element name as JSON writes it,
so a choice element is named by its type (``deceasedDateTime``, not ``deceased[x]``) and a
primitive's extension by ``_`` and its name (``_gender``). Where the path *writes* (inbound
rules, references, values), a trailing ``[]`` appends to a list and only a list element may have
it; a list element written without it would get an object where FHIR has an array.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from engine.mappings.fhir_model import Element, elements, model_of

__all__ = ["PathError", "Target", "shape_problems", "suggest", "walk"]


class PathError(ValueError):
    """A FHIR path that the R4 model does not have; the message names the step and a fix."""


@dataclass(frozen=True, slots=True)
class Target:
    """What a path leads to: its FHIR type, its model (None for a primitive), a list or not."""

    fhir_type: str
    model: type[Any] | None
    many: bool = False

    @classmethod
    def of(cls, element: Element) -> Target:
        return cls(element.fhir_type, element.model, element.many)


def root(type_name: str) -> Target:
    """The target of a type named in a mapping file (``Patient``, ``HumanName``,
    ``CoverageClass``); raises :class:`PathError` when R4 has no such type."""
    model = model_of(type_name)
    if model is None or model.__name__ != type_name:
        raise PathError(f"{type_name!r} is not a FHIR R4 resource or datatype")
    return Target(type_name, model)


def walk(start: Target, path: str, *, writes: bool = False, label: str | None = None) -> Target:
    """The target at the end of a dotted ``path`` from ``start``; raises :class:`PathError`.

    ``writes``: the path writes (``[]`` must append to a list, and a list must be appended to).
    ``label`` names the start in messages (``Patient``; default: its type)."""
    here = label or start.fhir_type
    target = start
    for step in path.split("."):
        name = step.removesuffix("[]")
        element = _element(target, name, here, path)
        if writes and step.endswith("[]") and not element.many:
            raise PathError(
                f"{path!r}: {here}.{name} is not a list in FHIR R4 (0..1): write it without '[]'"
            )
        if writes and element.many and not step.endswith("[]"):
            raise PathError(
                f"{path!r}: {here}.{name} is a list in FHIR R4: write '{name}[]' to add to it"
            )
        target = Target.of(element)
        if step.endswith("[]"):  # what is written is one item of the list
            target = Target(element.fhir_type, element.model)
        here = f"{here}.{name}"
    return target


def _element(target: Target, name: str, here: str, path: str) -> Element:
    if target.model is None:
        raise PathError(
            f"{path!r}: {here} is a {target.fhir_type}, a primitive: it has no element {name!r}"
        )
    known = elements(target.model)
    element = known.get(name)
    if element is not None:
        return element
    base = name.removesuffix("[x]")
    concrete = sorted(e.name for e in known.values() if e.choice == base)
    if concrete:
        raise PathError(
            f"{path!r}: {here}.{base}[x] is a choice: name the type, one of {', '.join(concrete)}"
        )
    hint = suggest(name, known)
    raise PathError(
        f"{path!r}: FHIR R4 {target.fhir_type} has no element {name!r}"
        + (f" (did you mean {hint!r}?)" if hint else "")
    )


def suggest(name: str, known: Iterable[str]) -> str | None:
    """The known name closest to ``name`` (the same but for case first), or None."""
    names = [str(k) for k in known if k.startswith("_") == name.startswith("_")]
    same = [k for k in names if k.lower() == name.lower()]
    if same:
        return same[0]
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    return close[0] if close else None


def shape_problems(
    target: Target, shape: Any, at: tuple[Any, ...] = ()
) -> tuple[list[tuple[tuple[Any, ...], str]], list[Target]]:
    """Check a fixed JSON shape (``wrap``, plan ``values``) of the element ``target``.

    Returns the problems, each with the key path inside the shape where it is, and the targets
    that ``$value`` stands for in it (what a datatype map put there must make)."""
    problems: list[tuple[tuple[Any, ...], str]] = []
    values: list[Target] = []
    _shape(target, shape, at, problems, values)
    return problems, values


def _shape(
    target: Target,
    shape: Any,
    at: tuple[Any, ...],
    problems: list[tuple[tuple[Any, ...], str]],
    values: list[Target],
) -> None:
    if isinstance(shape, str) and shape.startswith("$"):
        if shape == "$value":
            values.append(target)
        return
    if isinstance(shape, list):
        if not target.many:
            problems.append((at, f"{target.fhir_type} is not a list in FHIR R4: give one value"))
            return
        for i, item in enumerate(shape):
            _shape(Target(target.fhir_type, target.model), item, (*at, i), problems, values)
        return
    if target.many:
        problems.append((at, f"a list of {target.fhir_type} in FHIR R4: write [ ... ]"))
        return
    if not isinstance(shape, dict):
        if target.model is not None and target.fhir_type != "Resource":
            problems.append((at, f"a {target.fhir_type} in FHIR R4: give its elements"))
        return
    if target.model is None:
        problems.append((at, f"a {target.fhir_type} in FHIR R4, a primitive: give a value"))
        return
    known = elements(target.model)
    for key, value in shape.items():
        element = known.get(str(key))
        if element is None:
            hint = suggest(str(key), known)
            problems.append(
                (
                    (*at, key),
                    f"FHIR R4 {target.fhir_type} has no element {key!r}"
                    + (f" (did you mean {hint!r}?)" if hint else ""),
                )
            )
            continue
        _shape(Target.of(element), value, (*at, key), problems, values)
