"""The FHIR R4 model as the engine checks against it: resource types, and the elements of a type.

fhir.resources ships the R4B (4.3.0) models, the closest to R4 4.0.1 it has, and the ones the
engine validates its output with (:mod:`engine.mappings.fhir_validate`); the resources this
engine maps (Patient, Encounter, Coverage, Claim, Appointment ...) are the same in both. A few
resource types differ between them (R4's MedicinalProduct and EffectEvidenceSynthesis are not in
R4B; R4B adds SubscriptionTopic, Citation ...): the engine knows R4B's list.

:func:`is_resource_type` says whether a name is a resource type (not a datatype, a backbone
element or an abstract type); :func:`elements` lists the elements of a resource, datatype or
backbone element (``PatientContact``, ``CoverageClass``), each with its type and whether it
repeats. A choice element (``deceased[x]``, FHIR R4 §2.24.0.1) is listed under each of its
concrete names (``deceasedBoolean``, ``deceasedDateTime``), as JSON writes it; a primitive's
extension element (``_gender``, FHIR R4 §2.6.2.7) is listed too.

Models are imported when first asked for and their elements cached, so a check touches only the
types the mapping files name (importing all 700 models would take over a second at start-up).
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

__all__ = ["Element", "elements", "is_resource_type", "model_of"]

#: a FHIR type name (``Patient``, ``HumanName``, ``PatientContact``)
_TYPE_NAME = re.compile(r"^[A-Z][A-Za-z0-9]{0,63}$")
#: abstract types: no instance has them as its resourceType
_ABSTRACT = frozenset({"Resource", "DomainResource"})
#: Python types of primitives written without a fhir_core marker, by their FHIR name
_PRIMITIVES = {bool: "boolean", int: "integer", str: "string", float: "decimal"}


@dataclass(frozen=True, slots=True)
class Element:
    """One element of a FHIR type, as its JSON names it."""

    name: str
    #: the element's FHIR type: ``HumanName``, ``PatientContact``, ``Reference``, ``code``
    fhir_type: str
    #: a list in JSON (cardinality ``..*``)
    many: bool
    #: fhir.resources' marker of the element's type, whose model is imported when first asked
    #: for (most elements of a type are never walked into)
    ref: Any = None
    #: for a concrete name of a choice element, the choice (``deceased`` for ``deceasedBoolean``)
    choice: str | None = None

    @property
    def model(self) -> type[Any] | None:
        """The element's model (a datatype or backbone element); None for a primitive."""
        load = getattr(self.ref, "get_model_klass", None)
        if load is None:
            return None
        model: type[Any] = load()
        return model


def model_of(type_name: str) -> type[Any] | None:
    """The R4B model of a resource, datatype or backbone element; None when there is none."""
    if not _TYPE_NAME.match(type_name):
        return None
    return _model(type_name)


@lru_cache(maxsize=512)
def _model(type_name: str) -> type[Any] | None:
    from fhir.resources.R4B import get_fhir_model_class

    try:
        return get_fhir_model_class(type_name)
    except ValueError:
        return None


@lru_cache(maxsize=512)
def is_resource_type(name: str) -> bool:
    """Whether ``name`` is a FHIR resource type (``Patient``, ``Bundle``), spelt exactly."""
    model = model_of(name)
    if model is None or name in _ABSTRACT:
        return False
    from fhir.resources.R4B.resource import Resource

    return issubclass(model, Resource) and model.__name__ == name


#: the elements of each model asked for so far (a few dozen: the types the mapping files name)
_ELEMENTS: dict[type[Any], dict[str, Element]] = {}


def elements(model: type[Any]) -> dict[str, Element]:
    """The elements of a model (from :func:`model_of`, or an :attr:`Element.model`) by name."""
    known = _ELEMENTS.get(model)
    if known is None:
        known = _ELEMENTS[model] = _elements(model)
    return known


def _elements(model: type[Any]) -> dict[str, Element]:
    out: dict[str, Element] = {}
    for name, info in model.model_fields.items():
        alias = info.alias or name
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if alias == "fhir_comments":
            continue  # fhir.resources' own, not a FHIR element
        many, target = _unwrap(info.annotation)
        choice = extra.get("one_of_many")
        out[alias] = Element(
            alias, _type_name(target), many, target, str(choice) if choice else None
        )
    from fhir.resources.R4B.resource import Resource

    if issubclass(model, Resource):
        out["resourceType"] = Element("resourceType", "code", False, None)
    return out


def _unwrap(annotation: Any) -> tuple[bool, Any]:
    """(is a list, the item type) of a field's annotation: Optional, List, Union taken apart."""
    many = False
    t = annotation
    while True:
        origin = typing.get_origin(t)
        if origin in (list, typing.List):  # noqa: UP006 - fhir.resources writes typing.List
            many = True
            t = typing.get_args(t)[0]
        elif origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
            args = [a for a in typing.get_args(t) if a is not type(None)]
            lists = [a for a in args if typing.get_origin(a) in (list, typing.List)]  # noqa: UP006
            t = lists[0] if lists else args[0]
        else:
            return many, t


def _type_name(target: Any) -> str:
    path = getattr(target, "_model_klass", None)  # "fhir.resources.R4B.patient.PatientContact"
    if isinstance(path, str):
        return path.rsplit(".", 1)[-1]
    if typing.get_origin(target) is typing.Annotated:
        marker = typing.get_args(target)[1:]
        if marker:
            name = type(marker[0]).__name__
            return name[:1].lower() + name[1:]
        target = typing.get_args(target)[0]
    return _PRIMITIVES.get(target, getattr(target, "__name__", str(target)))
