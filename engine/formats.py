"""Recognise what a file holds: HL7v2 ER7, X12, or FHIR JSON."""

from __future__ import annotations

from typing import Literal

__all__ = ["Format", "detect_format"]

Format = Literal["hl7v2", "x12", "fhir-json", "unknown"]


def detect_format(data: bytes) -> Format:
    """Look at the first meaningful bytes (after a BOM, MLLP start block and whitespace)."""
    head = data[:512]
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    head = head.lstrip(b"\x0b \t\r\n")
    if head[:3] in (b"MSH", b"FHS", b"BHS"):
        return "hl7v2"
    if head[:3] == b"ISA":
        return "x12"
    if head[:1] in (b"{", b"["):
        return "fhir-json"
    return "unknown"
