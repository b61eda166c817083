"""HL7 table 0211 (MSH-18): the character sets a message may name, as Python codecs.

Kept beside the codec (:mod:`engine.hl7v2.codec`, which re-exports both names), which decodes a
message's bytes in the charset its MSH-18 names.
"""

from __future__ import annotations

from engine.errors import HL7DecodeError

__all__ = ["CHARSETS", "python_charset"]

#: HL7 table 0211 (MSH-18) character sets that are ASCII-compatible, to Python codec names.
CHARSETS: dict[str, str] = {
    "ASCII": "ascii",
    "ISO IR6": "ascii",
    "8859/1": "latin-1",
    "ISO IR100": "latin-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
    "ISO IR192": "utf-8",
    "UNICODE": "utf-8",
    "GB 18030-2000": "gb18030",
    "KS X 1001": "euc-kr",
    "BIG-5": "big5",
}


def python_charset(msh18: str, default: str = "utf-8") -> str:
    """The Python codec for an MSH-18 value; ``default`` when MSH-18 is empty."""
    name = msh18.strip().upper()
    if not name:
        return default
    codec = CHARSETS.get(name)
    if codec is None:
        raise HL7DecodeError(
            f"character set {msh18!r} is not supported (supported: {', '.join(sorted(CHARSETS))})",
            where="MSH-18",
        )
    return codec
