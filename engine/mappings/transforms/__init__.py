"""Named transform functions that mapping rules refer to (``transform: date``), by name.

Each transform works both ways (:class:`Transform`): HL7 text into a FHIR value, and back. They
live by area: :mod:`~engine.mappings.transforms.core` (dates and times, identifier systems,
numbers, text, phones, addresses, locations), :mod:`~engine.mappings.transforms.scheduling`
(appointment durations) and :mod:`~engine.mappings.transforms.financial` (procedure modifiers),
each on the contract in :mod:`~engine.mappings.transforms.contract`; this registry collects them
and :func:`get_transform` finds one. Mapping authors cannot add code here from a YAML file; a
developer adds a function to an area module and documents it in docs/MAPPINGS.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from engine.errors import ConfigError
from engine.mappings.transforms import core, financial, scheduling
from engine.mappings.transforms.contract import Transform, TransformContext

__all__ = ["TRANSFORMS", "Transform", "TransformContext", "get_transform"]


def _by_name(*areas: Iterable[Transform]) -> dict[str, Transform]:
    out: dict[str, Transform] = {}
    for area in areas:
        for t in area:
            if t.name in out:
                raise ValueError(f"transform {t.name!r} is defined twice")
            out[t.name] = t
    return out


#: every transform, by the name mapping files use
TRANSFORMS: Mapping[str, Transform] = _by_name(
    core.TRANSFORMS, scheduling.TRANSFORMS, financial.TRANSFORMS
)


def get_transform(name: str) -> Transform:
    """The transform of that name; :class:`ConfigError` naming the known ones when none is."""
    try:
        return TRANSFORMS[name]
    except KeyError:
        raise ConfigError(
            f"no transform named {name!r} (available: {', '.join(sorted(TRANSFORMS))})"
        ) from None
