"""A stored message shown to a person: each ER7 segment and field named, the ACK the engine sent.

Names come from HL7's structure tables as hl7apy carries them (the same reference data
``engine validate`` walks, engine/hl7v2/validate.py): each segment's fields, in order, with their
names and data types, for the message's own version (MSH-12; 2.5.1 when it names none hl7apy
knows). A field's components are named when it has more than one. Segment descriptions are HL7
v2.5.1's segment names (chapter 2 onwards) for the segments a practice's feeds carry; others show
their ID alone; Z segments are local (2.5.2).

Values are shown as they were sent (escaped ER7, ``\\F\\`` and all): the page escapes them for
HTML, and an operator comparing with the sender's log sees the same text. At most
:data:`MAX_SEGMENTS` segments and :data:`MAX_FIELD_CHARS` characters a field are named: the rest
is in the raw view.

The ACK is not stored: the engine builds its commit ACK from the stored message's id and receive
time (engine/flow/ingest.py, ``_acknowledge``), so :func:`rebuilt_ack` builds the very bytes
again for a message that was accepted. A message refused at receipt got a reject whose error
depended on the check that refused it; that one is not rebuilt (its reason is shown instead).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from engine.errors import EngineError
from engine.hl7v2.ack import ack_bytes, ack_code_for, ack_mode, commit_ack_wanted, hl7_timestamp
from engine.hl7v2.codec import Message, parse_message

__all__ = [
    "MAX_FIELD_CHARS",
    "MAX_SEGMENTS",
    "NamedComponent",
    "NamedField",
    "NamedSegment",
    "name_segments",
    "rebuilt_ack",
]

MAX_SEGMENTS = 500
MAX_FIELD_CHARS = 2000
DEFAULT_VERSION = "2.5.1"
_HEADER_IDS = ("MSH", "FHS", "BHS")

#: HL7 v2.5.1 segment names (chapters 2-15) of the segments practices' feeds carry
SEGMENT_NAMES = {
    "MSH": "Message Header",
    "MSA": "Message Acknowledgment",
    "ERR": "Error",
    "EVN": "Event Type",
    "PID": "Patient Identification",
    "PD1": "Patient Additional Demographic",
    "NK1": "Next of Kin / Associated Parties",
    "PV1": "Patient Visit",
    "PV2": "Patient Visit - Additional Information",
    "MRG": "Merge Patient Information",
    "AL1": "Patient Allergy Information",
    "DG1": "Diagnosis",
    "PR1": "Procedures",
    "ROL": "Role",
    "GT1": "Guarantor",
    "IN1": "Insurance",
    "IN2": "Insurance Additional Information",
    "IN3": "Insurance Additional Information, Certification",
    "ACC": "Accident",
    "UB1": "UB82",
    "UB2": "Uniform Billing Data",
    "OBX": "Observation/Result",
    "OBR": "Observation Request",
    "ORC": "Common Order",
    "NTE": "Notes and Comments",
    "SCH": "Scheduling Activity Information",
    "RGS": "Resource Group",
    "AIS": "Appointment Information",
    "AIG": "Appointment Information - General Resource",
    "AIL": "Appointment Information - Location Resource",
    "AIP": "Appointment Information - Personnel Resource",
    "FT1": "Financial Transaction",
    "TXA": "Transcription Document Header",
    "SFT": "Software Segment",
    "FHS": "File Header",
    "FTS": "File Trailer",
    "BHS": "Batch Header",
    "BTS": "Batch Trailer",
}


@dataclass(frozen=True)
class NamedComponent:
    number: int
    name: str
    value: str


@dataclass(frozen=True)
class NamedField:
    """One field as sent (all repetitions), its number, name and data type."""

    number: int
    name: str
    datatype: str
    value: str
    #: the first repetition's components, named, when there is more than one
    components: tuple[NamedComponent, ...] = ()
    truncated: bool = False


@dataclass(frozen=True)
class NamedSegment:
    """One segment: its place in the message, ID, name and its non-empty fields."""

    position: int
    id: str
    description: str
    fields: tuple[NamedField, ...]


def _title(name: str | None, segment: str = "") -> str:
    """hl7apy's ``PATIENT_IDENTIFIER_LIST`` as ``Patient Identifier List``."""
    if not name:
        return ""
    words = []
    for w in name.split("_"):
        if w == segment or w in ("ID", "PID", "SSN", "NDC", "HL7", "DRG", "VIP", "ISO", "UCUM"):
            words.append(w)
        elif any(ch.isdigit() for ch in w):
            words.append(w)
        else:
            words.append(w.capitalize())
    return " ".join(words)


@lru_cache(maxsize=1)
def _load_reference() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import hl7apy

        return hl7apy.load_reference


@lru_cache(maxsize=512)
def _segment_fields(segment: str, version: str) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    """Per field of ``segment`` in ``version``: its name, data type and component names
    (empty for a segment hl7apy does not know: a Z segment, a typo)."""
    load = _load_reference()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = load(segment, "Segment", version)
    except Exception:  # hl7apy's own errors: an unknown segment or version
        return ()
    out: list[tuple[str, str, tuple[str, ...]]] = []
    for _, fref, _, _ in ref[1]:
        if not fref:
            out.append(("", "", ()))
            continue
        kids: tuple[str, ...] = ()
        if fref[0] != "leaf" and isinstance(fref[1], (tuple, list)):
            kids = tuple(_title(k[1][3]) if k[1] else "" for k in fref[1])
        out.append((_title(fref[3], segment), str(fref[2] or ""), kids))
    return tuple(out)


@lru_cache(maxsize=1)
def _versions() -> frozenset[str]:
    from engine.hl7v2.validate import SUPPORTED_VERSIONS

    return frozenset(SUPPORTED_VERSIONS)


def _version(message: Message) -> str:
    msh = message.segment("MSH")
    version = msh.get(12) if msh is not None else ""
    return version if version in _versions() else DEFAULT_VERSION


def name_segments(raw: bytes, *, default_charset: str = "utf-8") -> list[NamedSegment] | None:
    """The message's segments with their fields named, or None when the bytes are not ER7."""
    try:
        message = parse_message(raw, default_charset=default_charset)
    except EngineError:
        return None
    version = _version(message)
    out: list[NamedSegment] = []
    for position, seg in enumerate(message.segments[:MAX_SEGMENTS], start=1):
        known = _segment_fields(seg.name, version)
        d = seg.delimiters
        named: list[NamedField] = []
        for number in range(1, len(seg) + 1):
            value = seg.raw_field(number)
            if not value:
                continue
            name, datatype, kids = known[number - 1] if number <= len(known) else ("", "", ())
            components: tuple[NamedComponent, ...] = ()
            header_delims = seg.name in _HEADER_IDS and number <= 2
            first = value.split(d.repetition)[0] if not header_delims else value
            if kids and not header_delims and d.component in first:
                components = tuple(
                    NamedComponent(i, kids[i - 1] if i <= len(kids) else "", part)
                    for i, part in enumerate(first.split(d.component), start=1)
                    if part
                )
            named.append(
                NamedField(
                    number,
                    name,
                    datatype,
                    value[:MAX_FIELD_CHARS],
                    components,
                    truncated=len(value) > MAX_FIELD_CHARS,
                )
            )
        description = SEGMENT_NAMES.get(seg.name, "")
        if not description and seg.name.startswith("Z"):
            description = "locally defined segment"
        out.append(NamedSegment(position, seg.name, description, tuple(named)))
    return out


def rebuilt_ack(
    raw: bytes,
    *,
    message_id: int,
    received_at: datetime,
    identity: tuple[str, str],
    refused_at_receipt: bool,
    default_charset: str = "utf-8",
) -> tuple[bytes | None, str]:
    """The commit ACK the engine sent for a stored message, built again, and a note saying
    what it is; ``None`` with the reason when it cannot be (not ER7, refused at receipt, an
    enhanced-mode sender that asked for no commit ACK)."""
    try:
        message = parse_message(raw, default_charset=default_charset)
    except EngineError:
        return None, "not readable as HL7 v2: the engine answered with a reject (AR)"
    if refused_at_receipt:
        return None, "refused at receipt: the reject named the reason shown above"
    enhanced = ack_mode(message) == "enhanced"
    if enhanced and not commit_ack_wanted(message, True):
        return None, "the sender asked for no commit ACK (MSH-15)"
    code = ack_code_for(None, enhanced=enhanced, stage="commit" if enhanced else "application")
    timestamp = hl7_timestamp(received_at.astimezone(UTC))
    ack = ack_bytes(
        message, code, control_id=f"A{message_id}", timestamp=timestamp, sending=identity
    )
    return ack, "built again from the stored message (the engine builds it from its id and time)"
