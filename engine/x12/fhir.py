"""FHIR R4 ⇄ X12 eligibility: CoverageEligibilityRequest ⇄ 270, 271 → CoverageEligibilityResponse.

The directions live in :mod:`engine.x12.fhir_request` (request → 270),
:mod:`engine.x12.fhir_inquiry` (270 → requests) and :mod:`engine.x12.fhir_response` (271 →
responses), whose docstrings hold the element-by-element tables; the code systems are in
:mod:`engine.x12.fhir_terms`. Every resource written passes
:func:`engine.mappings.fhir_validate.validate_resource` (fhir.resources R4B models); the tests
check it on every fixture.

:func:`interchange_to_fhir` is the one entry point for a file of X12 (``engine convert
FILE.x12``): it reads the interchanges once, leniently, tells a 270 from a 271 and refuses
anything else by name.
"""

from __future__ import annotations

from typing import Any

from engine.x12.envelope import Interchange, parse_interchanges
from engine.x12.errors import X12Error
from engine.x12.fhir_inquiry import x270_to_fhir
from engine.x12.fhir_request import (
    coverage_eligibility_request_to_270,
    request_to_inquiry,
    trace_number_for,
)
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
    "interchange_to_fhir",
    "request_to_inquiry",
    "trace_number_for",
    "x270_to_fhir",
    "x271_to_fhir",
]

_CONVERTERS = {"270": x270_to_fhir, "271": x271_to_fhir}


def _kind(interchanges: list[Interchange]) -> str:
    """``270`` or ``271``: what every transaction set is; refuses anything else by name."""
    found: str | None = None
    for interchange in interchanges:
        if not interchange.groups:
            seg = interchange.ta1[0] if interchange.ta1 else interchange.iea
            what = "TA1" if interchange.ta1 else "interchange without a functional group"
            raise X12Error(
                f"X12 {what}: only a 270 or 271 converts to FHIR",
                segment_id=seg.id,
                position=seg.position,
            )
        for tx in interchange.transactions():
            if tx.id not in _CONVERTERS:
                raise X12Error(
                    f"X12 {tx.id}: only a 270 or 271 converts to FHIR",
                    segment_id="ST",
                    position=tx.st.position,
                    element=1,
                )
            if found is not None and tx.id != found:
                raise X12Error(
                    f"X12 {tx.id} after a {found}: the data holds both 270 and 271 transaction "
                    "sets; convert them separately",
                    segment_id="ST",
                    position=tx.st.position,
                    element=1,
                )
            found = tx.id
    if found is None:
        gs = interchanges[0].groups[0].gs
        raise X12Error(
            "the functional group holds no transaction set: nothing converts to FHIR",
            segment_id=gs.id,
            position=gs.position,
        )
    return found


def interchange_to_fhir(data: bytes | str) -> tuple[dict[str, Any], list[str]]:
    """A 270 or 271 file → (a FHIR Bundle of type ``collection``, the warnings).

    A 270 gives CoverageEligibilityRequests (:func:`x270_to_fhir`), a 271
    CoverageEligibilityResponses (:func:`x271_to_fhir`), with the resources they reference.
    The data is read leniently: a wrong count or control number in the envelope, a 4010
    transaction, a segment no map takes, each is a warning naming its segment and element
    (``segment 14 (SE): SE01 says 12 segments, the transaction has 13``). A 999, a TA1, another
    transaction set, or a file mixing 270s and 271s raises
    :class:`~engine.x12.errors.X12Error` (``X12 999: only a 270 or 271 converts to FHIR``), as
    does data that cannot be followed (no IEA, no SE, a bad ISA), with ``where`` naming the
    segment.
    """
    interchanges = parse_interchanges(data, strict=False)
    convert = _CONVERTERS[_kind(interchanges)]
    warnings: list[str] = []
    entries: list[dict[str, Any]] = []
    for interchange in interchanges:
        entries.extend(convert(interchange, warnings=warnings)["entry"])
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}, warnings
