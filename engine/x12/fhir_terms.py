"""Code systems and code maps shared by the FHIR ⇄ X12 eligibility conversions.

FHIR R4 code systems used as defined (terminology.hl7.org):

* ``ex-benefitcategory``: its 28 codes *are* X12 service type codes (1, 2, 3, 4, 5, 14, 23-28, 30,
  35-37, 49, 55, 56, 61-63, 69, 76) plus F1/F3/F4/F6; a category gets this coding only when the
  code is one of them.
* ``benefit-type`` (copay, deductible, copay-percent ...), ``benefit-network`` (in, out),
  ``benefit-unit`` (individual, family), ``benefit-term`` (annual, day, lifetime),
  ``subscriber-relationship``, ``coverage-class``, ``v2-0203`` (NIIP payer ID, MB member number).

X12 code lists: ``https://x12.org/codes/service-type-codes`` is where X12 publishes the service
type codes. The other lists have no published FHIR URI; the engine names them the same way,
``https://x12.org/codes/<list>``, so a reader can tell each list apart:
:data:`X12_ELIGIBILITY_SYSTEM` (EB01), :data:`X12_COVERAGE_LEVEL_SYSTEM` (EB02),
:data:`X12_TIME_PERIOD_SYSTEM` (EB06), :data:`X12_NETWORK_SYSTEM` (EB12),
:data:`X12_REJECT_REASON_SYSTEM` (AAA03), :data:`X12_QUANTITY_SYSTEM` (EB09).
"""

from __future__ import annotations

__all__ = [
    "BENEFIT_CATEGORY_DISPLAY",
    "BENEFIT_CATEGORY_SYSTEM",
    "BENEFIT_NETWORK_SYSTEM",
    "BENEFIT_TERM_SYSTEM",
    "BENEFIT_TYPE_SYSTEM",
    "BENEFIT_UNIT_SYSTEM",
    "COVERAGE_CLASS_SYSTEM",
    "NPI_SYSTEM",
    "RELATIONSHIP_SYSTEM",
    "TRACE_TYPE_TEXT",
    "V2_0203_SYSTEM",
    "X12_COVERAGE_LEVEL_SYSTEM",
    "X12_ELIGIBILITY_SYSTEM",
    "X12_NETWORK_SYSTEM",
    "X12_QUANTITY_SYSTEM",
    "X12_REJECT_REASON_SYSTEM",
    "X12_SERVICE_TYPE_SYSTEM",
    "X12_TIME_PERIOD_SYSTEM",
]

NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"
V2_0203_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-0203"
BENEFIT_CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/ex-benefitcategory"
BENEFIT_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/benefit-type"
BENEFIT_NETWORK_SYSTEM = "http://terminology.hl7.org/CodeSystem/benefit-network"
BENEFIT_UNIT_SYSTEM = "http://terminology.hl7.org/CodeSystem/benefit-unit"
BENEFIT_TERM_SYSTEM = "http://terminology.hl7.org/CodeSystem/benefit-term"
RELATIONSHIP_SYSTEM = "http://terminology.hl7.org/CodeSystem/subscriber-relationship"
COVERAGE_CLASS_SYSTEM = "http://terminology.hl7.org/CodeSystem/coverage-class"

#: Identifier.type.text of a 270's TRN02 trace number, on a CoverageEligibilityRequest read from
#: a 270 and on the request reference of the CoverageEligibilityResponse that echoes it
TRACE_TYPE_TEXT = "X12 270 trace number (TRN02)"

X12_SERVICE_TYPE_SYSTEM = "https://x12.org/codes/service-type-codes"
X12_ELIGIBILITY_SYSTEM = "https://x12.org/codes/eligibility-or-benefit-information-codes"
X12_COVERAGE_LEVEL_SYSTEM = "https://x12.org/codes/coverage-level-codes"
X12_TIME_PERIOD_SYSTEM = "https://x12.org/codes/time-period-qualifiers"
X12_NETWORK_SYSTEM = "https://x12.org/codes/in-plan-network-indicators"
X12_QUANTITY_SYSTEM = "https://x12.org/codes/quantity-qualifiers"
X12_REJECT_REASON_SYSTEM = "https://x12.org/codes/reject-reason-codes"

#: ex-benefitcategory code → display (the codes it shares with X12 service types, and F-codes)
BENEFIT_CATEGORY_DISPLAY: dict[str, str] = {
    "1": "Medical Care",
    "2": "Surgical",
    "3": "Consultation",
    "4": "Diagnostic XRay",
    "5": "Diagnostic Lab",
    "14": "Renal Supplies",
    "23": "Diagnostic Dental",
    "24": "Periodontics",
    "25": "Restorative",
    "26": "Endodontics",
    "27": "Maxillofacial Prosthetics",
    "28": "Adjunctive Dental Services",
    "30": "Health Benefit Plan Coverage",
    "35": "Dental Care",
    "36": "Dental Crowns",
    "37": "Dental Accident",
    "49": "Hospital Room and Board",
    "55": "Major Medical",
    "56": "Medically Related Transportation",
    "61": "In-vitro Fertilization",
    "62": "MRI Scan",
    "63": "Donor Procedures",
    "69": "Maternity",
    "76": "Renal Dialysis",
    "F1": "Medical Coverage",
    "F3": "Dental Coverage",
    "F4": "Hearing Coverage",
    "F6": "Vision Coverage",
}
