"""Every target, by name (the order ``--target all`` runs them in)."""

from __future__ import annotations

from fuzz.config import MAPPINGS, ROUTES
from fuzz.er7 import TARGET as ER7
from fuzz.fhir import TARGET as FHIR
from fuzz.mllp import TARGET as MLLP
from fuzz.runner import Target
from fuzz.x12 import TARGET as X12

__all__ = ["TARGETS"]

TARGETS: dict[str, Target] = {t.name: t for t in (ER7, MLLP, X12, FHIR, MAPPINGS, ROUTES)}
