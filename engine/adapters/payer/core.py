"""The CAQH CORE real-time envelope over HTTP: MIME multipart/form-data fields (CAQH CORE
Connectivity Rule vC2.2.0, section 4: "HTTP MIME Multipart"; the rule CORE 270 calls "Phase II").

A real-time request is one HTTP POST whose form fields are the envelope metadata and the X12::

    PayloadType      X12_270_Request_005010X279A1     (response: X12_271_Response_005010X279A1,
                                                        or X12_999_Response_005010X231A1 / TA1)
    ProcessingMode   RealTime
    PayloadID        a UUID (RFC 4122), echoed in the response
    TimeStamp        ISO 8601 date and time (2025-01-31T14:05:09Z)
    SenderID         who sends, as agreed with the receiver
    ReceiverID       who receives
    CORERuleVersion  2.2.0
    Payload          the X12 interchange
    ErrorCode        (responses) Success, or why the envelope was refused
    ErrorMessage     (responses) text for people

The form is encoded and decoded here with the standard library (RFC 7578), so neither side
needs a multipart package. Incomplete: no SOAP+WSDL envelope, no batch mode, no Checksum or
PayloadLength (batch-only fields), no username/password fields (OAuth2 or none instead); the
stub's ErrorCode values other than ``Success`` are its own words, not the rule's table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from uuid import uuid4

__all__ = [
    "CORE_RULE_VERSION",
    "EDI_X12",
    "PAYLOAD_270",
    "PAYLOAD_271",
    "PAYLOAD_999",
    "PAYLOAD_TA1",
    "REAL_TIME",
    "CoreEnvelope",
    "core_timestamp",
    "decode_form",
    "encode_form",
]

PAYLOAD_270 = "X12_270_Request_005010X279A1"
PAYLOAD_271 = "X12_271_Response_005010X279A1"
PAYLOAD_999 = "X12_999_Response_005010X231A1"
PAYLOAD_TA1 = "X12_TA1_Response_00501X231A1"
REAL_TIME = "RealTime"
CORE_RULE_VERSION = "2.2.0"
#: the media type of a plain X12 body (RFC 1767)
EDI_X12 = "application/edi-x12"

_FIELDS = (
    ("payload_type", "PayloadType"),
    ("processing_mode", "ProcessingMode"),
    ("payload_id", "PayloadID"),
    ("timestamp", "TimeStamp"),
    ("sender_id", "SenderID"),
    ("receiver_id", "ReceiverID"),
    ("core_rule_version", "CORERuleVersion"),
    ("payload", "Payload"),
)
_RESPONSE_FIELDS = (("error_code", "ErrorCode"), ("error_message", "ErrorMessage"))


def core_timestamp(now: datetime | None = None) -> str:
    """``TimeStamp``: ISO 8601 in UTC, to the second."""
    when = (now or datetime.now(UTC)).astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class CoreEnvelope:
    """The envelope fields of one request or response (``error_code`` in responses only)."""

    payload_type: str
    processing_mode: str
    payload_id: str
    timestamp: str
    sender_id: str
    receiver_id: str
    core_rule_version: str
    payload: str
    error_code: str = ""
    error_message: str = ""

    def fields(self) -> dict[str, str]:
        """The form fields in the rule's order (responses add ErrorCode and ErrorMessage)."""
        out = {name: getattr(self, attr) for attr, name in _FIELDS}
        if self.error_code:
            out |= {name: getattr(self, attr) for attr, name in _RESPONSE_FIELDS}
        return out

    @classmethod
    def from_fields(cls, fields: Mapping[str, str], *, response: bool = False) -> CoreEnvelope:
        """The envelope of a decoded form; ValueError names the first missing field.

        A response may carry no Payload (an envelope error); a request must.
        """
        optional = {"Payload"} if response else set()
        for _, name in _FIELDS:
            if not fields.get(name) and name not in optional:
                raise ValueError(f"the CORE envelope has no {name}")
        values = {attr: fields.get(name, "") for attr, name in _FIELDS + _RESPONSE_FIELDS}
        return cls(**values)


def encode_form(fields: Mapping[str, str]) -> tuple[str, bytes]:
    """``(Content-Type, body)`` of a multipart/form-data request (RFC 7578), UTF-8 values."""
    values = {name: value.encode("utf-8") for name, value in fields.items()}
    boundary = f"core-{uuid4().hex}"
    while any(boundary.encode() in v for v in values.values()):
        boundary = f"core-{uuid4().hex}"  # pragma: no cover - a UUID inside the data
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + v
        for name, v in values.items()
    ]
    body = b"\r\n".join(parts) + f"\r\n--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", body


def decode_form(content_type: str, body: bytes) -> dict[str, str]:
    """The fields of a multipart/form-data body; ValueError when it is not one."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    if not isinstance(message, EmailMessage) or not message.is_multipart():
        raise ValueError("the body is not multipart/form-data")
    if message.defects:
        raise ValueError(f"malformed multipart body ({type(message.defects[0]).__name__})")
    out: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            raise ValueError("a form part has no name")
        raw = part.get_payload(decode=True)
        if not isinstance(raw, bytes):
            raise ValueError(f"form field {name} is not text")
        try:
            out[name] = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"form field {name} is not UTF-8") from exc
    return out
