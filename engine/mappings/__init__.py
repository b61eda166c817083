"""Mappings: HL7v2 ⇄ FHIR R4 as YAML data an IT admin can read and change (next issue)."""
