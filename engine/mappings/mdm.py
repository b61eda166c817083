"""Documents as HL7v2: MDM^T02 out (for EHRs that take documents over MLLP) and MDM in.

Out (HL7 v2.5.1 chapter 9.5.2, MDM^T02 "original document notification and content", structure
MDM_T02: MSH EVN PID PV1 TXA {OBX}): :func:`mdm_t02` writes the message from a document's
metadata, with the document type table's TXA-2 code (table 0270) and the document as one OBX of
value type ED (encapsulated data, 2.A.24: source application ^ type of data ^ data subtype ^
encoding ^ data) whose data component is left empty. That ER7 is what a delivery row holds; the
bytes stay in the store once, and :func:`fill_mdm` puts them in, base64-encoded once, when the
MLLP sender sends it. A 25 MiB scan is then never copied into the queue as 34 MiB of base64.

In (MDM^T02, T04 status change, T06 addendum, T08 edit, T10 replacement, each "notification and
content": TXA and OBX): :func:`read_mdm` finds the document an MDM carries, either the bytes in
an OBX-5 of type ED (base64, decoded once) or a reference pointer (RP, 2.A.65: pointer ^
application ID ^ type of data ^ subtype), with what TXA and PID say of it. An OBX-5 that is not
valid base64 is refused with a reason naming it, as is a PID-3 MRN or authority longer than the
store keeps (64 characters: cut, it would name another patient).

PID-5 (patient name) is required by the MDM_T02 structure but a document's metadata has no name:
it is sent as the HL7 null ``""`` (2.5.3: the value is known to be absent), as the outbound maps
do for a Patient known only by reference.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from engine.documents.model import DocumentInfo
from engine.errors import ConversionError, HL7ParseError
from engine.hl7v2.codec import Message, parse_message
from engine.hl7v2.escape import unescape
from engine.mappings.document_types import DocumentTypes
from engine.mappings.spec import SiteConfig

__all__ = [
    "ED_MEDIA",
    "IDENTIFIER_MAX",
    "MDM_TRIGGERS",
    "MdmDocument",
    "fill_mdm",
    "mdm_t02",
    "read_mdm",
]

#: the MDM triggers that carry content (chapter 9.5: "notification and content")
MDM_TRIGGERS = frozenset({"T02", "T04", "T06", "T08", "T10"})
#: OBX-5 ED type of data and subtype for each media type (the MIME type's two halves, as
#: receivers that take PDFs over MDM expect them)
ED_MEDIA: dict[str, tuple[str, str]] = {
    "application/pdf": ("application", "pdf"),
    "image/tiff": ("image", "tiff"),
    "image/jpeg": ("image", "jpeg"),
    "image/png": ("image", "png"),
}
#: the longest PID-3 MRN (and PID-3.4 authority) taken: the documents table's width for both
#: (engine/store/tables.py); a longer one is refused, never cut
IDENTIFIER_MAX = 64
#: how a trigger relates its document to an earlier one (FHIR DocumentReference.relatesTo.code)
RELATION_BY_TRIGGER = {"T04": "replaces", "T06": "appends", "T08": "replaces", "T10": "replaces"}
#: the trigger a document that relates to an earlier one goes out as (notification and content)
TRIGGER_BY_RELATION = {"appends": "T06", "replaces": "T10"}


def _ts(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


def mdm_t02(
    info: DocumentInfo,
    types: DocumentTypes,
    site: SiteConfig,
    *,
    control_id: str,
    now: datetime | None = None,
) -> str:
    """The MDM^T02 of a document as ER7 text, OBX-5's data component empty (see
    :func:`fill_mdm`); raises :class:`ConversionError` for a type the table lacks or a media
    type MDM cannot name. A document that replaces or is an addendum to an earlier one (an MDM
    received as T04/T08/T10 or T06) goes as MDM^T10 or MDM^T06 with that one's number in
    TXA-13 (all "notification and content", structure MDM_T02)."""
    dtype = types.get(info.document_type)
    media = ED_MEDIA.get(info.media_type)
    if media is None:
        raise ConversionError(f"media type {info.media_type!r} cannot be sent in an MDM OBX-5")
    stamp = _ts(now or datetime.now(UTC))
    trigger = TRIGGER_BY_RELATION.get(info.relation or "", "T02") if info.parent_number else "T02"
    msg = Message.new(
        f"MDM^{trigger}^MDM_T02",
        control_id=control_id,
        timestamp=stamp,
        sending=(site.sending_application, site.sending_facility),
    )
    evn = msg.add("EVN")
    evn.set(1, trigger)
    evn.set(2, stamp)
    pid = msg.add("PID")
    pid.set(1, "1")
    pid.set(3, info.patient_mrn, comp=1)
    authority = info.patient_authority or site.mrn_authority or ""
    if authority:
        pid.set(3, authority, comp=4)
    pid.set(3, site.mrn_type, comp=5)
    pid.set_raw(5, '""')
    pv1 = msg.add("PV1")
    pv1.set(1, "1")
    pv1.set(2, "O" if info.encounter or info.appointment else "N")
    if info.encounter:
        pv1.set(19, info.encounter)
    txa = msg.add("TXA")
    txa.set(1, "1")
    txa.set(2, dtype.txa2)
    txa.set(3, "AP")  # table 0191: other application data (an encapsulated file)
    date = info.document_date.replace("-", "")
    txa.set(4, date)
    if info.author:
        txa.set(9, info.author, comp=2)  # XCN-2 family name: the author as written
    txa.set(6, date)
    # the sender's own number (an MDM received) stays in its namespace; else ours
    txa.set(12, info.unique_number or f"DOC{info.document_id}", comp=1)
    txa.set(12, info.sender if info.unique_number else site.sending_application, comp=2)
    if info.parent_number and trigger != "T02":
        txa.set(13, info.parent_number, comp=1)  # the parent, in its sender's namespace
        txa.set(13, info.sender, comp=2)
    if info.appointment:
        txa.set(14, info.appointment, comp=1)  # placer order number: the appointment
    if info.file_name:
        txa.set(16, info.file_name)
    txa.set(17, "DO")  # table 0271: documented
    txa.set(19, "AV")  # table 0273: available for patient care
    obx = msg.add("OBX")
    obx.set(1, "1")
    obx.set(2, "ED")
    if dtype.loinc_code:
        obx.set(3, dtype.loinc_code, comp=1)
        obx.set(3, dtype.loinc_display or dtype.display, comp=2)
        obx.set(3, "LN", comp=3)
    else:
        obx.set(3, dtype.code, comp=1)
        obx.set(3, dtype.display, comp=2)
        obx.set(3, "L", comp=3)  # table 0396: local general code
    obx.set(5, media[0], comp=2)
    obx.set(5, media[1], comp=3)
    obx.set(5, "Base64", comp=4)
    obx.set(11, "F")
    return msg.to_er7()


def fill_mdm(er7: str | bytes, data: bytes) -> bytes:
    """The MDM with ``data`` base64-encoded (once) into the data component of the first OBX-5
    of type ED, as bytes ready to frame. The text around it is not re-parsed or re-written:
    the base64 alphabet holds no HL7 delimiter, so it goes in as is."""
    text = er7.decode("utf-8") if isinstance(er7, bytes) else er7
    sep = "\r"
    segments = text.split(sep)
    for i, seg in enumerate(segments):
        if not seg.startswith("OBX"):
            continue
        field_sep = seg[3:4]
        fields = seg.split(field_sep)
        if len(fields) > 5 and fields[2] == "ED":
            comp = "^"
            msh = segments[0]
            if msh.startswith("MSH") and len(msh) > 4:
                comp = msh[4]
            parts = fields[5].split(comp)
            while len(parts) < 5:
                parts.append("")
            head = field_sep.join(fields[:5]) + field_sep + comp.join(parts[:4]) + comp
            tail = comp.join(parts[5:])
            rest = field_sep.join(fields[6:])
            before = sep.join(segments[:i])
            after = sep.join(segments[i + 1 :])
            encoded = base64.b64encode(data)
            out = [
                (before + sep if before else "").encode("utf-8"),
                head.encode("utf-8"),
                encoded,
                ((comp + tail) if tail else "").encode("utf-8"),
                ((field_sep + rest) if len(fields) > 6 else "").encode("utf-8"),
                (sep + after).encode("utf-8"),
            ]
            return b"".join(out)
    raise ConversionError("the MDM has no OBX of value type ED to carry the document")


# -- MDM in --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MdmDocument:
    """What an MDM says of the document it carries: the bytes (ED) or a pointer (RP), and who
    and what it is."""

    trigger: str
    document_type: str  # ours, from TXA-2 through the type table
    patient_mrn: str
    patient_authority: str
    document_date: str  # YYYY-MM-DD
    unique_number: str  # TXA-12.1
    sender: str  # MSH-3.1
    data: bytes | None = None  # ED: the decoded bytes
    pointer: str | None = None  # RP: where the document is
    declared_type: str | None = None  # ED-2/3 or RP-3/4 as a media type
    parent_number: str | None = None  # TXA-13.1 (an addendum's or a replacement's parent)
    encounter: str | None = None
    author: str | None = None
    file_name: str | None = None
    title: str | None = None

    @property
    def relation(self) -> str | None:
        """How the document relates to the earlier one (FHIR relatesTo.code), if it does."""
        return RELATION_BY_TRIGGER.get(self.trigger)

    def __repr__(self) -> str:  # PHI-safe
        size = len(self.data) if self.data is not None else None
        return f"<MdmDocument {self.trigger} {self.document_type} {size} bytes>"


def _date(ts: str) -> str:
    digits = ts.strip()[:8]
    if len(digits) == 8 and digits.isdigit():
        return f"{digits[:4]}-{digits[4:6]}-{digits[6:]}"
    return ""


def read_mdm(message: Message, types: DocumentTypes) -> MdmDocument:
    """The document an MDM carries; raises :class:`ConversionError` (or HL7ParseError) naming the
    segment and field when it cannot be had (no TXA, no OBX with ED or RP data, OBX-5 not
    base64, no PID-3 or one longer than :data:`IDENTIFIER_MAX`)."""
    mtype = message.type
    if mtype.code != "MDM" or mtype.trigger not in MDM_TRIGGERS:
        raise ConversionError(
            f"{mtype.code}^{mtype.trigger} carries no document (MDM^T02/T04/T06/T08/T10 do)"
        )
    txa = message.segment("TXA")
    if txa is None:
        raise HL7ParseError("an MDM with content needs a TXA segment", where="TXA")
    pid = message.segment("PID")
    mrn = pid.get(3, 1, 1) if pid is not None else ""
    if not mrn:
        raise HL7ParseError("PID-3 (patient identifier) is required for a document", where="PID-3")
    assert pid is not None
    authority = pid.get(3, 1, 4)
    for value, where, what in ((mrn, "PID-3", "the MRN"), (authority, "PID-3.4", "its authority")):
        if len(value) > IDENTIFIER_MAX:
            # never cut: a document filed under a shortened MRN is filed under another patient's
            raise ConversionError(
                f"{what} is longer than {IDENTIFIER_MAX} characters (the longest the engine "
                "keeps): the document is not taken rather than filed under a shortened one",
                where=where,
            )
    date = _date(txa.get(4)) or _date(txa.get(6)) or _date(message.msh.get(7))
    common: dict[str, Any] = {
        "trigger": mtype.trigger,
        "document_type": types.from_txa2(txa.get(2)),
        "patient_mrn": mrn,
        "patient_authority": authority,
        "document_date": date,
        "unique_number": txa.get(12, 1, 1),
        "sender": message.msh.get(3, 1, 1),
        "parent_number": txa.get(13, 1, 1) or None,
        "encounter": (message.get("PV1-19") or None),
        "author": " ".join(p for p in (txa.get(9, 1, 3), txa.get(9, 1, 2)) if p) or None,
        "file_name": txa.get(16) or None,
    }
    for n, obx in enumerate(message.all("OBX"), start=1):
        vtype = obx.get(2).strip().upper()
        where = f"OBX[{n}]-5" if n > 1 else "OBX-5"
        if vtype == "ED":
            # the field is split once (a 16 MiB OBX-5 is read whole as few times as can be);
            # ED-1 to ED-4 are short and unescaped here, ED-5 is base64 (no delimiter in it)
            parts = obx.raw_field(5).split(obx.delimiters.component)
            head = [unescape(p, obx.delimiters.key, obx.charset) for p in parts[:4]]
            head += [""] * (4 - len(head))
            if head[3].strip().upper() != "BASE64":
                raise ConversionError(
                    f"{where}: encoding {head[3]!r} is not Base64 (table 0299): "
                    "only base64 documents are taken",
                    where=where,
                )
            data = _b64decode(parts[4] if len(parts) > 4 else "", where)
            del parts
            declared = _media(head[1], head[2])
            return MdmDocument(**common, data=data, declared_type=declared)
        if vtype == "RP":
            pointer = obx.get(5, 1, 1)
            if not pointer:
                raise ConversionError(f"{where}: a reference pointer without a pointer")
            declared = _media(obx.get(5, 1, 3), obx.get(5, 1, 4))
            return MdmDocument(**common, pointer=pointer, declared_type=declared)
    raise ConversionError(
        "the MDM has no OBX with the document (value type ED with base64 data, or RP)",
        where="OBX-2",
    )


def _b64decode(text: str, where: str) -> bytes:
    """The bytes of base64 ``text`` (RFC 4648 alphabet, padded), strictly: a character outside
    the alphabet or a bad length is an error naming ``where``. Line breaks (some senders wrap
    base64 at 76 columns) are taken out first, only when there are any."""
    if not text:
        raise ConversionError(f"{where}: the ED data is not valid base64 (empty)", where=where)
    if "\n" in text:
        text = text.replace("\n", "")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        why = (
            "a character outside the base64 alphabet"
            if "Only base64" in str(exc) or "ASCII" in str(exc)
            else "bad length or padding"
        )
        raise ConversionError(
            f"{where}: the ED data is not valid base64 ({why})", where=where
        ) from None


def _media(kind: str, subtype: str) -> str | None:
    kind, subtype = kind.strip().lower(), subtype.strip().lower()
    if not kind and not subtype:
        return None
    for media, pair in ED_MEDIA.items():
        if pair == (kind, subtype) or subtype == pair[1]:
            return media
    return f"{kind}/{subtype}" if kind and subtype else None


def parse_mdm(raw: bytes, types: DocumentTypes) -> MdmDocument:
    """:func:`read_mdm` of raw bytes (tests and tools)."""
    return read_mdm(parse_message(raw), types)
