"""FHIR R4 ⇄ X12 eligibility: CoverageEligibilityRequest → 270, 271 → CoverageEligibilityResponse.

The two directions live in :mod:`engine.x12.fhir_request` and :mod:`engine.x12.fhir_response`,
whose docstrings hold the element-by-element tables; the code systems are in
:mod:`engine.x12.fhir_terms`. Every resource written passes
:func:`engine.mappings.fhir_validate.validate_resource` (fhir.resources R4B models); the tests
check it on every fixture.
"""

from __future__ import annotations

from engine.x12.fhir_request import coverage_eligibility_request_to_270, request_to_inquiry
from engine.x12.fhir_response import x271_to_fhir
from engine.x12.fhir_terms import (
    X12_ELIGIBILITY_SYSTEM,
    X12_REJECT_REASON_SYSTEM,
    X12_SERVICE_TYPE_SYSTEM,
)

__all__ = [
    "X12_ELIGIBILITY_SYSTEM",
    "X12_REJECT_REASON_SYSTEM",
    "X12_SERVICE_TYPE_SYSTEM",
    "coverage_eligibility_request_to_270",
    "request_to_inquiry",
    "x271_to_fhir",
]
