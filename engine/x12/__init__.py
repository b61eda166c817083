"""X12 005010: envelopes, the 270 builder and the 271 reader, acknowledgments, FHIR conversions.

A thin, exact layer of our own (no maintained Python library reads 5010 270/271 correctly)::

    segments   Segment, Delimiters: elements as sent, repetitions/components split on demand
    envelope   ISA/IEA, GS/GE, ST/SE: delimiters from the ISA, counts and control numbers
    isa        the fixed-width ISA: its widths, the delimiters it names, its control elements
    loops      the HL hierarchy of a 270/271 (2000A source ... 2000D dependent)
    charset    the X12 basic character set: transliteration of names, identifier checks
    codes      X12 code lists (EB01, AAA03, AAA04, TA105, IK304 ...) with their meanings
    x270       EligibilityInquiry → 270 (005010X279A1), and a 270 reader
    x271       271 → EligibilityResponse / EligibilityResult (benefits, AAA errors, traces)
    ack        TA1 and 999 (005010X231A1) → accepted / rejected, why, retry or fix
    acknowledge  a 999 (and TA1) for what we received, tolerated envelope faults noted as E
    fhir       CoverageEligibilityRequest ⇄ 270; 271 → CoverageEligibilityResponse Bundle;
               interchange_to_fhir: a 270 or 271 file → a Bundle and its warnings

Errors are :class:`engine.x12.errors.X12Error` (segment, position, element) on the X12 side and
:class:`engine.errors.ConversionError` on the FHIR side.
"""

from engine.x12.ack import AckResult, read_acks
from engine.x12.acknowledge import acknowledge
from engine.x12.envelope import (
    FunctionalGroup,
    Interchange,
    Transaction,
    build_interchange,
    parse_interchange,
    parse_interchanges,
)
from engine.x12.errors import X12Error
from engine.x12.fhir import (
    coverage_eligibility_request_to_270,
    interchange_to_fhir,
    request_to_inquiry,
    x270_to_fhir,
    x271_to_fhir,
)
from engine.x12.segments import Delimiters, Segment
from engine.x12.x270 import (
    Address,
    EligibilityInquiry,
    Payer,
    Person,
    Provider,
    build_270,
    read_270,
)
from engine.x12.x271 import (
    Benefit,
    EligibilityResponse,
    EligibilityResult,
    RequestError,
    read_271,
)

__all__ = [
    "AckResult",
    "Address",
    "Benefit",
    "Delimiters",
    "EligibilityInquiry",
    "EligibilityResponse",
    "EligibilityResult",
    "FunctionalGroup",
    "Interchange",
    "Payer",
    "Person",
    "Provider",
    "RequestError",
    "Segment",
    "Transaction",
    "X12Error",
    "acknowledge",
    "build_270",
    "build_interchange",
    "coverage_eligibility_request_to_270",
    "interchange_to_fhir",
    "parse_interchange",
    "parse_interchanges",
    "read_270",
    "read_271",
    "read_acks",
    "request_to_inquiry",
    "x270_to_fhir",
    "x271_to_fhir",
]
