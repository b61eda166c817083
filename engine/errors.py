"""The engine's one error tree.

Every failure the engine reports to a user or a sending system is one of these, so the CLI can print
one clear line, the API can answer with a status, and an ACK can carry the HL7 table 0357 code::

    EngineError                      base; ``code`` is an HL7 table 0357 error code
    ├── ConfigError                  a settings, mapping or route file is wrong (file, line, key)
    ├── HL7Error                     anything about an HL7v2 message
    │   ├── HL7ParseError            the bytes are not ER7 we can read (no MSH, bad MSH-2, ...)
    │   ├── HL7DecodeError           the bytes do not decode in the charset MSH-18 names
    │   ├── HL7PathError             a terse path such as ``PID-3[2].4`` is malformed
    │   └── HL7ValidationError       the message breaks its structure (segment, field, name)
    ├── UnsupportedMessageError      we cannot handle this message type / trigger (0357: 200/201)
    └── ConversionError              the input cannot be converted (unknown format, invalid FHIR)

Each error carries ``where`` (a segment/field location such as ``PID-3`` or ``segment 4 (PV1)``)
when it has one, so messages read "segment 4 (PV1): field 3 ...".
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ConversionError",
    "EngineError",
    "HL7DecodeError",
    "HL7Error",
    "HL7ParseError",
    "HL7PathError",
    "HL7ValidationError",
    "UnsupportedMessageError",
]


class EngineError(Exception):
    """Base of every error the engine raises on purpose.

    ``code`` is the HL7 v2.5.1 table 0357 message error condition code that an ACK would carry
    (207 application internal error unless a subclass knows better).
    """

    code: str = "207"

    def __init__(self, message: str, *, where: str | None = None) -> None:
        self.message = message
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class ConfigError(EngineError):
    """A configuration file (settings, mapping, route) is invalid; says file, line and key."""


class HL7Error(EngineError):
    """Something is wrong with an HL7v2 message."""


class HL7ParseError(HL7Error):
    """The input is not readable as ER7 (HL7 v2.5.1 chapter 2.6-2.7)."""

    code = "100"  # segment sequence error: closest 0357 code for unreadable structure


class HL7DecodeError(HL7Error):
    """The message bytes are not valid in the character set named by MSH-18."""

    code = "102"  # data type error


class HL7PathError(HL7Error):
    """A terse path (``PID-3[2].4.1``) is malformed."""


class HL7ValidationError(HL7Error):
    """The message breaks the rules of its message structure.

    ``issues`` lists every problem found; ``code`` is the 0357 code of the first.
    """

    def __init__(
        self,
        message: str,
        *,
        where: str | None = None,
        code: str = "100",
        issues: list[tuple[str, str, str]] | None = None,
    ) -> None:
        super().__init__(message, where=where)
        self.code = code
        #: (0357 code, location, text) per problem
        self.issues = issues or [(code, where or "", message)]


class UnsupportedMessageError(EngineError):
    """The message type (0357: 200) or trigger event (201) is not supported."""

    code = "200"

    def __init__(self, message: str, *, where: str | None = None, code: str = "200") -> None:
        super().__init__(message, where=where)
        self.code = code


class ConversionError(EngineError):
    """An input cannot be converted: unknown format, invalid FHIR (with the element), ..."""
