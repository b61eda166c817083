"""What a transform is, and what it may consult: the contract every transform module builds on.

A :class:`Transform` works both ways: ``inbound`` turns the HL7 text (a list: the element's parts,
its subcomponents or components, the first being the text itself) into a FHIR value; ``outbound``
turns the FHIR value back into the HL7 parts. Both are given the message's
:class:`TransformContext`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

__all__ = ["Transform", "TransformContext"]


@dataclass(frozen=True)
class TransformContext:
    """What a transform may consult: the message's time zone and the site's identifier systems."""

    timezone: str = "America/New_York"
    identifier_systems: tuple[tuple[str, str], ...] = ()
    identifier_system_base: str = "urn:engine:identifier:"

    def system_for(self, namespace: str) -> str | None:
        return _systems(self.identifier_systems).get(namespace)


@lru_cache(maxsize=16)
def _systems(pairs: tuple[tuple[str, str], ...]) -> dict[str, str]:
    return dict(pairs)


@dataclass(frozen=True)
class Transform:
    """One named transform, both ways."""

    name: str
    doc: str
    inbound: Callable[[list[str], TransformContext], Any]
    outbound: Callable[[Any, TransformContext], list[str]]
    #: reads only the first part (the element's text): generated code passes ``[text]``
    single: bool = False
