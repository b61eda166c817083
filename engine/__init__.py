"""An HL7v2 / FHIR R4 / X12 integration engine for medical practices.

The flow is the architecture: receive → store → parse → map → route → deliver → acknowledge.
See docs/ARCHITECTURE.md.
"""

__version__ = "0.1.0"
