"""Transforms for the financial mappings (collected by name in :mod:`engine.mappings.transforms`).

``procedure_modifier_system``
    The code system of a procedure code modifier sent without one (FT1-26, HL7 v2.5.1 section
    6.5.1.26, table 0340). Table 0340's values are the CPT (Level I) and HCPCS Level II modifiers,
    and the two sets are told apart by their first character: every CPT modifier starts with a
    digit (``25``, ``59``, category II ``1P``), every HCPCS Level II modifier with a letter
    (``LT``, ``GP``, ``XS``). A modifier that is neither (empty, or not two letters or digits) gets
    no system. When FT1-26.3 names a coding system, the mapping file uses that instead.

Incomplete: the modifier's text is not checked against the CPT or HCPCS lists (the engine ships
neither; both are licensed or large), so a local two-character code is taken for one of them.
"""

from __future__ import annotations

import re
from typing import Any

from engine.mappings.transforms.contract import Transform, TransformContext

__all__ = ["CPT_SYSTEM", "HCPCS_SYSTEM", "TRANSFORMS"]

#: the code system URIs of HL7 Terminology (THO): CodeSystem v3-cpt-4 and hcpcs-Level-II
CPT_SYSTEM = "http://www.ama-assn.org/go/cpt"
HCPCS_SYSTEM = "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"

_MODIFIER_RE = re.compile(r"^[0-9A-Z]{2}$")


def _modifier_system_in(parts: list[str], ctx: TransformContext) -> str | None:
    code = parts[0].strip().upper() if parts else ""
    if not _MODIFIER_RE.match(code):
        return None
    return CPT_SYSTEM if code[0].isdigit() else HCPCS_SYSTEM


def _modifier_system_out(value: Any, ctx: TransformContext) -> list[str]:
    # the system is implied by the code; nothing to write back into CNE-3
    return []


TRANSFORMS: list[Transform] = [
    Transform(
        "procedure_modifier_system",
        "CNE (procedure modifier, table 0340) → its code system when CNE-3 is empty: CPT when "
        "the modifier starts with a digit, HCPCS Level II when it starts with a letter",
        _modifier_system_in,
        _modifier_system_out,
    ),
]
