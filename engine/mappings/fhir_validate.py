"""Validate FHIR output against fhir.resources' R4B models (the closest to R4 4.0.1 it ships).

Validation costs more than the mapping itself, so it is a setting: on in tests, optional in
production (``ENGINE_VALIDATE_FHIR``). Errors name the resource and the element.
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from typing import Any

from pydantic import ValidationError

from engine.errors import ConversionError

__all__ = ["validate_bundle", "validate_resource"]


@lru_cache(maxsize=128)
def _model(resource_type: str) -> Any:
    try:
        module = importlib.import_module(f"fhir.resources.R4B.{resource_type.lower()}")
    except ImportError:
        raise ConversionError(f"unknown FHIR resource type {resource_type!r}") from None
    return getattr(module, resource_type)


def validate_resource(resource: dict[str, Any], where: str = "") -> Any:
    """The R4B model of a resource dict; raises ConversionError naming the element."""
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        raise ConversionError("not a FHIR resource: no resourceType", where=where or None)
    try:
        return _model(rtype).model_validate(resource)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function"))
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConversionError(
            f"invalid FHIR {rtype}: {loc or '(resource)'}: {err['msg']}{more}",
            where=where or None,
        ) from exc


def validate_bundle(bundle: dict[str, Any]) -> None:
    """Validate the Bundle and every resource in it."""
    for i, entry in enumerate(bundle.get("entry", [])):
        validate_resource(entry.get("resource", {}), where=f"entry[{i}]")
    validate_resource(bundle, where="Bundle")
