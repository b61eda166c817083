"""Adapters at the edges: MLLP, HTTP (FHIR REST), files, payers. Each translates its library's
errors."""
