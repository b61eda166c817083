"""Acknowledgments: which ACK a message wants, which code it gets, and the ACK message itself.

HL7 v2.5.1 chapter 2, section 2.9 (message processing rules) defines two modes:

* **original mode** (2.9.2): MSH-15 and MSH-16 are both empty. The receiver answers every message
  with one *application* acknowledgment, MSA-1 AA (accepted), AE (error) or AR (rejected).
* **enhanced mode** (2.9.3): MSH-15 or MSH-16 is valued. The receiver may send an *accept* (commit)
  acknowledgment once the message is in safe storage (MSA-1 CA, CE or CR) and later an application
  acknowledgment (AA, AE, AR); MSH-15 and MSH-16 say when each is wanted, with the table 0155
  conditions AL (always), NE (never), ER (only on error or reject), SU (only on success).

Our reading of the enhanced-mode defaults: the note under MSH-15 and MSH-16 (2.15.9) says that
when *both* are empty the original-mode rules apply, and both fields are "required for enhanced
mode"; the standard names no default for one empty field next to a valued one. We treat an empty
(or unknown) condition in enhanced mode as AL: an acknowledgment the sender did not need costs one
message, a missing one makes the sender wait, time out and send again.

:func:`ack_code_for` is the one place that maps an :class:`~engine.errors.EngineError` to an
acknowledgment code (table 0008); :class:`AckError` carries the table 0357 code, the table 0516
severity and the ERL location into an ERR segment (2.15.5). Control IDs and timestamps are passed
in, so building an ACK is deterministic.

Incomplete: ERR-5 (application error code), ERR-6 (parameters) and ERR-9 .. ERR-12 are not written;
an application acknowledgment that carries more than MSA and ERR (e.g. ORR, RSP) is built elsewhere.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal, NamedTuple

from engine.errors import (
    ConversionError,
    EngineError,
    HL7DecodeError,
    HL7ParseError,
    HL7ValidationError,
    UnsupportedMessageError,
)
from engine.hl7v2.codec import Delimiters, Message, Segment, python_charset
from engine.hl7v2.escape import escape
from engine.hl7v2.path import parse_path
from engine.hl7v2.structure import structure_for

__all__ = [
    "ERROR_CODES",
    "AckError",
    "AckMode",
    "AckStage",
    "ErrorLocation",
    "Severity",
    "ack_code_for",
    "ack_mode",
    "application_ack_wanted",
    "ack_bytes",
    "build_ack",
    "commit_ack_wanted",
    "errors_for",
    "hl7_timestamp",
    "nak_for_unparseable",
]

log = logging.getLogger(__name__)

AckMode = Literal["original", "enhanced"]
AckStage = Literal["commit", "application"]
#: HL7 table 0516, error severity: error, warning, information.
Severity = Literal["E", "W", "I"]

#: HL7 v2.5.1 table 0357, message error condition codes.
ERROR_CODES: dict[str, str] = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}

#: 0357 codes that say the header itself (MSH-9, MSH-11, MSH-12) is not acceptable: a reject.
_HEADER_CODES = frozenset({"200", "201", "202", "203"})
_MSA3_MAX = 80  # MSA-3 is ST(80) in v2.5.1
_ERR8_MAX = 250  # ERR-8 is TX(250) in v2.5.1


# -- which acknowledgment, and which code --------------------------------------------------------


def ack_mode(original: Message) -> AckMode:
    """``"enhanced"`` when MSH-15 or MSH-16 is valued, else ``"original"`` (2.9.2, 2.9.3)."""
    msh = original.msh
    return "enhanced" if msh.get(15).strip() or msh.get(16).strip() else "original"


def _wanted(condition: str, accepted: bool) -> bool:
    """Apply one table 0155 condition; empty or unknown counts as AL (see the module docstring)."""
    cond = condition.strip().upper()
    if cond == "NE":
        return False
    if cond == "ER":
        return not accepted
    if cond == "SU":
        return accepted
    return True


def commit_ack_wanted(original: Message, accepted: bool) -> bool:
    """Whether an accept (commit) acknowledgment is to be sent, per MSH-15 (2.9.3, table 0155).

    Original mode has no accept acknowledgment: its one ACK is the application acknowledgment, so
    this is False there. ``accepted`` is whether the message was committed (CA) or not (CE/CR).
    """
    if ack_mode(original) == "original":
        return False
    return _wanted(original.msh.get(15), accepted)


def application_ack_wanted(original: Message, accepted: bool) -> bool:
    """Whether an application acknowledgment is to be sent, per MSH-16 (2.9.3, table 0155).

    Always True in original mode (2.9.2: every message gets one). ``accepted`` is whether the
    application processed the message (AA) or not (AE/AR).
    """
    if ack_mode(original) == "original":
        return True
    return _wanted(original.msh.get(16), accepted)


def ack_code_for(
    error: EngineError | None, *, enhanced: bool, stage: AckStage = "application"
) -> str:
    """The table 0008 acknowledgment code for an outcome: the one place that decides it.

    The letter after A (application, and every original-mode ACK) or C (enhanced-mode commit)::

        no error                                         A   accept
        HL7ParseError, HL7DecodeError                    R   reject: the message is not readable
        any error with 0357 code 200-203                 R   reject: MSH-9 / MSH-11 / MSH-12 not
          (UnsupportedMessageError, a validation            acceptable (2.9.2 and 2.9.3)
          issue about the version ...)
        HL7ValidationError, ConversionError              E   error: the content is wrong; the
                                                             sender must correct it before resending
        any other EngineError (207 internal, config)     R   at the commit stage: the message was
                                                             not stored, the sender should resend
                                                         E   at the application stage: the message
                                                             is stored, the engine redelivers it

    Table 0008 gives "reject" two meanings: the header is unacceptable, or "a problem unrelated to
    the message or its structure" after which the sender resends. The second fits a failure to
    commit (the database is down) but not an internal error *after* the commit: the message is
    already in safe storage, and a resent copy would only be a duplicate, so that is an error (E).
    """
    prefix = "C" if enhanced and stage == "commit" else "A"
    if error is None:
        letter = "A"
    elif isinstance(error, HL7ParseError | HL7DecodeError | UnsupportedMessageError):
        letter = "R"
    elif error.code in _HEADER_CODES:
        letter = "R"
    elif isinstance(error, HL7ValidationError | ConversionError):
        letter = "E"
    else:
        letter = "R" if stage == "commit" else "E"
    return prefix + letter


# -- ERR segments --------------------------------------------------------------------------------


class ErrorLocation(NamedTuple):
    """An ERL (chapter 2A): segment ID, segment sequence, field, field repetition, component,
    subcomponent. Zero means "not given". ``sequence`` counts occurrences of this segment ID in the
    message (the first PID is 1, the second OBX is 2)."""

    segment: str
    sequence: int = 1
    field: int = 0
    repetition: int = 0
    component: int = 0
    subcomponent: int = 0

    def components(self) -> list[str]:
        """The ERL components as text, trailing "not given" parts dropped."""
        parts = [self.segment, str(self.sequence)]
        tail = [self.field, self.repetition, self.component, self.subcomponent]
        while tail and not tail[-1]:
            tail.pop()
        return parts + [str(n) if n else "" for n in tail]

    @classmethod
    def parse(cls, where: str | None, message: Message | None = None) -> ErrorLocation | None:
        """Read an error's ``where``: a terse path (``PID-3``, ``OBX[2]-5.1``, ``MSH-2``) or
        ``segment 4 (PV1)``. The latter needs ``message`` to count which PV1 segment 4 is; without
        it the sequence is taken as 1. None when ``where`` names no segment."""
        names = [s.name for s in message.segments] if message is not None else None
        return _parse_where(where, names)


def _parse_where(where: str | None, names: Sequence[str] | None) -> ErrorLocation | None:
    """:meth:`ErrorLocation.parse` given the segment IDs of the message in order (if known)."""
    if not where:
        return None
    m = _SEGMENT_WHERE_RE.match(where)
    if m:
        position, seg_id = int(m["pos"]), m["id"]
        if names is not None and 0 < position <= len(names):
            seg_id = seg_id or names[position - 1]
            if not _SEG_ID_RE.match(seg_id):
                return None
            return ErrorLocation(seg_id, list(names[:position]).count(seg_id))
        return ErrorLocation(seg_id, 1) if seg_id else None
    head = where.split(":", 1)[0].split(" ", 1)[0]
    try:
        p = parse_path(head)
    except EngineError:
        return None
    if not p.field:
        return ErrorLocation(p.segment, p.occurrence)
    return ErrorLocation(
        p.segment, p.occurrence, p.field, p.repetition, p.component, p.subcomponent
    )


_SEGMENT_WHERE_RE = re.compile(r"^segment (?P<pos>\d+)(?: \((?P<id>[A-Z][A-Z0-9]{2})\))?")
_SEG_ID_RE = re.compile(r"^[A-Z][A-Z0-9]{2}$")


def _plain(text: str, limit: int) -> str:
    """One line of at most ``limit`` characters (CR/LF would end a segment)."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


@dataclass(frozen=True)
class AckError:
    """One ERR segment: a table 0357 ``code``, a table 0516 ``severity``, an ERL ``location`` and
    the ERR-8 user message ``text``.

    ``text`` comes from the engine's own error messages, which by rule name segments, fields and
    codes but never copy a field value, so no patient data reaches the sender's logs through it.
    """

    code: str = "207"
    severity: Severity = "E"
    location: ErrorLocation | None = None
    text: str = ""

    @classmethod
    def from_exception(cls, exc: EngineError, message: Message | None = None) -> AckError:
        """The ERR for an error (for an :class:`HL7ValidationError`, its first issue; use
        :func:`errors_for` to get one ERR per issue). ``message`` resolves ``segment N`` locations
        to the right segment sequence."""
        if isinstance(exc, HL7ValidationError) and exc.issues:
            code, where, text = exc.issues[0]
            return cls(code, "E", ErrorLocation.parse(where, message), _plain(text, _ERR8_MAX))
        return cls(
            exc.code, "E", ErrorLocation.parse(exc.where, message), _plain(exc.message, _ERR8_MAX)
        )


def errors_for(exc: EngineError, message: Message | None = None) -> list[AckError]:
    """One :class:`AckError` per problem: each issue of an :class:`HL7ValidationError`, else one."""
    if isinstance(exc, HL7ValidationError) and exc.issues:
        return [
            AckError(code, "E", ErrorLocation.parse(where, message), _plain(text, _ERR8_MAX))
            for code, where, text in exc.issues
        ]
    return [AckError.from_exception(exc, message)]


def _version_tuple(version: str) -> tuple[int, ...]:
    nums = re.findall(r"\d+", version)
    return tuple(int(n) for n in nums) if nums else (2, 5, 1)


def _add_err(ack: Message, error: AckError, version: str) -> None:
    """ERR in the v2.5 form (ERR-2 ERL, ERR-3 CWE, ERR-4, ERR-8), or ERR-1 ELD before v2.5."""
    err = ack.add("ERR")
    label = ERROR_CODES.get(error.code, "")
    loc = error.location
    if _version_tuple(version) < (2, 5):
        # ELD: segment ^ sequence ^ field ^ code&text&HL70357 (2.4 and earlier)
        if loc is not None:
            err.set(1, loc.segment, comp=1)
            err.set(1, str(loc.sequence), comp=2)
            if loc.field:
                err.set(1, str(loc.field), comp=3)
        for sub, value in enumerate((error.code, label, "HL70357"), start=1):
            err.set(1, value, comp=4, sub=sub)
        return
    if loc is not None:
        for comp, value in enumerate(loc.components(), start=1):
            if value:
                err.set(2, value, comp=comp)
    for comp, value in enumerate((error.code, label, "HL70357"), start=1):
        err.set(3, value, comp=comp)
    err.set(4, error.severity)
    if error.text:
        err.set(8, _plain(error.text, _ERR8_MAX))


# -- building the ACK ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Header:
    """What an ACK echoes of the original MSH: raw ER7 text in the ACK's own delimiters."""

    sending: tuple[str, str]  # original MSH-3, MSH-4
    receiving: tuple[str, str]  # original MSH-5, MSH-6
    trigger: str  # original MSH-9.2, plain text
    control_id: str  # original MSH-10
    processing_id: str  # original MSH-11
    version: str  # original MSH-12
    charset: str  # original MSH-18
    enhanced: bool


def _compose(
    head: _Header,
    d: Delimiters,
    codec: str,
    code: str,
    *,
    control_id: str,
    timestamp: str,
    errors: Sequence[AckError],
    text: str,
    sending: tuple[str, str] | None,
    message_type: str,
) -> Message:
    msh = Segment.new("MSH", d, codec)
    ack = Message([msh], d, codec)
    fallback = sending or ("", "")
    for n, raw, default in (
        (3, head.receiving[0], fallback[0]),
        (4, head.receiving[1], fallback[1]),
    ):
        if raw:
            msh.set_raw(n, raw, rep=0)
        else:
            msh.set(n, default)
    msh.set_raw(5, head.sending[0], rep=0)
    msh.set_raw(6, head.sending[1], rep=0)
    msh.set(7, timestamp)
    version_text = head.version.split(d.component, 1)[0] if head.version else "2.5.1"
    msh.set(9, message_type, comp=1)
    if head.trigger:
        msh.set(9, head.trigger, comp=2)
    if _version_tuple(version_text) >= (2, 3, 1):  # MSG.3, message structure, exists since 2.3.1
        msh.set(9, structure_for(message_type, head.trigger), comp=3)
    msh.set(10, control_id)
    if head.processing_id:
        msh.set_raw(11, head.processing_id, rep=0)
    else:
        msh.set(11, "P")
    if head.version:
        msh.set_raw(12, head.version, rep=0)
    else:
        msh.set(12, version_text)
    if head.enhanced:  # an acknowledgment is never itself acknowledged
        msh.set(15, "NE")
        msh.set(16, "NE")
    if head.charset:
        msh.set_raw(18, head.charset, rep=0)

    msa = ack.add("MSA")
    msa.set(1, code)
    msa.set_raw(2, head.control_id, rep=0)
    reason = text
    if not reason and errors and code[1:] != "A":
        reason = errors[0].text or ERROR_CODES.get(errors[0].code, "")
    if reason:
        msa.set(3, _plain(reason, _MSA3_MAX))
    for error in errors:
        _add_err(ack, error, version_text)
    return ack


def build_ack(
    original: Message,
    code: str,
    *,
    control_id: str,
    timestamp: str,
    errors: Sequence[AckError] = (),
    text: str = "",
    sending: tuple[str, str] | None = None,
    message_type: str = "ACK",
) -> Message:
    """The acknowledgment of ``original`` (HL7 v2.5.1 2.9.2 / 2.9.3; MSH 2.15.9, MSA 2.15.8).

    MSH-3/4 are the original MSH-5/6 (``sending`` when those are empty), MSH-5/6 the original
    MSH-3/4; MSH-9 is ``ACK^<original trigger>^ACK``; MSH-10 is ``control_id``; MSH-11, MSH-12 and
    MSH-18 echo the original; MSA-2 is the original MSH-10. The ACK uses the original's delimiters
    and character set. MSA-3 (kept only for backward compatibility in v2.5.1, still read by many
    systems) carries
    ``text``, or on a negative code the first error's text. Each of ``errors`` becomes an ERR
    segment (v2.5 form; ERR-1 ELD for versions before 2.5). In enhanced mode the ACK's own
    MSH-15/16 are NE: acknowledging an acknowledgment would never end.
    """
    return _compose(
        _header_of(original),
        original.delimiters,
        original.charset,
        code,
        control_id=control_id,
        timestamp=timestamp,
        errors=errors,
        text=text,
        sending=sending,
        message_type=message_type,
    )


def _header_of(original: Message) -> _Header:
    msh = original.msh
    return _Header(
        sending=(msh.raw_field(3), msh.raw_field(4)),
        receiving=(msh.raw_field(5), msh.raw_field(6)),
        trigger=msh.get(9, 1, 2),
        control_id=msh.raw_field(10),
        processing_id=msh.raw_field(11),
        version=msh.raw_field(12),
        charset=msh.raw_field(18),
        enhanced=ack_mode(original) == "enhanced",
    )


#: stand-ins for MSH-7, MSH-10 and MSA-2 in a cached ACK (no HL7 delimiter or escape touches them)
_TIME, _OURS, _THEIRS = "\x01T\x01", "\x01C\x01", "\x01M\x01"


@functools.lru_cache(maxsize=512)
def _ack_template(
    head: _Header,
    d: Delimiters,
    codec: str,
    code: str,
    sending: tuple[str, str] | None,
    message_type: str,
) -> str | None:
    text = _compose(
        head,
        d,
        codec,
        code,
        control_id=_OURS,
        timestamp=_TIME,
        errors=(),
        text="",
        sending=sending,
        message_type=message_type,
    ).to_er7()
    if any(text.count(mark) != 1 for mark in (_TIME, _OURS, _THEIRS)):
        return None
    return text


def ack_bytes(
    original: Message,
    code: str,
    *,
    control_id: str,
    timestamp: str,
    sending: tuple[str, str] | None = None,
    message_type: str = "ACK",
) -> bytes:
    """``build_ack(...).to_bytes()`` for an ACK without errors or text — every positive ACK —
    from a template per sender: one sender's ACKs differ only in MSH-7, MSH-10 and MSA-2, and
    composing an ACK field by field was a quarter of the receiver's time per message."""
    head = _header_of(original)
    d = original.delimiters
    template = None
    theirs = head.control_id
    if (
        escape(control_id, d.key) == control_id
        and escape(timestamp, d.key) == timestamp
        # a structured MSH-10 is normalised when copied (trailing empty parts dropped)
        and not any(ch in theirs for ch in (d.component, d.repetition, d.subcomponent))
    ):
        keyed = replace(head, control_id=_THEIRS)
        template = _ack_template(keyed, d, original.charset, code, sending, message_type)
    if template is None:  # an unusual header: compose it in full
        return build_ack(
            original,
            code,
            control_id=control_id,
            timestamp=timestamp,
            sending=sending,
            message_type=message_type,
        ).to_bytes(replace=True)
    text = template.replace(_TIME, timestamp).replace(_OURS, control_id).replace(_THEIRS, theirs)
    # the message is stored when this runs: its ACK must go out even when our own name
    # (ENGINE_APPLICATION_NAME) holds a character the sender's MSH-18 cannot carry, which then
    # reads ``?``; raising here left the sender without an answer, resending for ever
    return text.encode(original.charset, errors="replace")


# -- answering what cannot be parsed -------------------------------------------------------------

_VERSION_RE = re.compile(r"^2(?:\.\d+){1,2}$")
_TRIGGER_RE = re.compile(r"^[A-Z0-9]{3}$")
_SALVAGE_WINDOW = 4096


def _find_header(window: str) -> str | None:
    """The text from the first ``MSH`` + separator to the end of that line, or None."""
    at = window.find("MSH")
    while at >= 0 and (len(window) <= at + 3 or window[at + 3].isalnum()):
        at = window.find("MSH", at + 1)
    if at < 0:
        return None
    return re.split(r"[\r\n\x1c]", window[at:], maxsplit=1)[0]


def _decode_header(raw: bytes | str) -> str | None:
    """The MSH line of ``raw``, decoded in the charset its MSH-18 names when that is known, else
    UTF-8, else Latin-1 (which never fails)."""
    if isinstance(raw, str):
        return _find_header(raw[:_SALVAGE_WINDOW])
    latin = _find_header(raw[:_SALVAGE_WINDOW].decode("latin-1"))
    if latin is None:
        return None
    data = latin.encode("latin-1")
    fs = latin[3:4]
    parts = latin.split(fs) if fs else []
    msh18 = parts[17].split(latin[4:5] or "^")[0] if len(parts) > 17 else ""
    for codec in (_codec_or_none(msh18), "utf-8"):
        if codec:
            try:
                return data.decode(codec)
            except UnicodeDecodeError:
                continue
    return latin


def _codec_or_none(charset_name: str) -> str | None:
    if not charset_name.strip():
        return None
    try:
        return python_charset(charset_name)
    except EngineError:
        return None


def _salvage(raw: bytes | str) -> tuple[_Header, Delimiters, str] | None:
    """What can be read of a broken message's MSH: header, reply delimiters, reply charset."""
    line = _decode_header(raw)
    if line is None or len(line) < 4:
        return None
    fs = line[3]
    if fs.isspace() or fs.isalnum() or ord(fs) < 32:
        return None
    fields = line.split(fs)

    def field(n: int) -> str:  # MSH-n: fields[0] is "MSH", fields[1] is MSH-2
        return fields[n - 1] if 2 <= n <= len(fields) else ""

    try:
        d = Delimiters.from_header(line)
        theirs = True
    except EngineError:
        d, theirs = Delimiters(), False
    enc = field(2)
    comp = enc[0] if enc and not enc[0].isalnum() and enc[0] != fs else ""

    def first(value: str) -> str:
        return value.split(comp, 1)[0] if comp else value

    def echo(value: str) -> str:
        """Raw ER7 for the reply: as written when the delimiters are theirs, else re-escaped."""
        return value if theirs else escape(first(value), d.key)

    charset_name = first(field(18)).strip()
    codec = _codec_or_none(charset_name)
    if codec is None:
        charset_name, codec = "", "utf-8"
    version = first(field(12)).strip()
    processing = first(field(11)).strip()
    msh9 = field(9).split(comp) if comp else [field(9)]
    trigger = msh9[1].strip() if len(msh9) > 1 else ""
    head = _Header(
        sending=(echo(field(3)), echo(field(4))),
        receiving=(echo(field(5)), echo(field(6))),
        trigger=trigger if _TRIGGER_RE.match(trigger) else "",
        control_id=echo(field(10)),
        processing_id=processing if processing in ("P", "D", "T") else "P",
        version=version if _VERSION_RE.match(version) else "2.5.1",
        charset=escape(charset_name, d.key),
        enhanced=bool(first(field(15)).strip() or first(field(16)).strip()),
    )
    return head, d, codec


def nak_for_unparseable(
    raw: bytes | str,
    error: EngineError,
    *,
    control_id: str,
    timestamp: str,
    sending: tuple[str, str],
) -> tuple[bytes | None, str | None]:
    """A reject ACK (AR, or CR in enhanced mode) for a message that could not be parsed or stored.

    It salvages what it can of the MSH: the delimiters when MSH-1/MSH-2 are valid (else the
    standard ``|^~\\&``), MSH-3 .. MSH-6 to swap, MSH-9.2, MSH-10 for MSA-2, MSH-11, MSH-12 and
    MSH-18. The reply is sent whatever MSH-15 says: a message that cannot be read cannot be trusted
    to have meant it. When no MSH can be found at all, the reject still goes out, with the standard
    delimiters and an empty MSA-2, so a sender never waits on a silent line. Returns the ACK and
    its MSA-1 code as decided; both None only if the reject cannot be built. Never raises.
    """
    try:
        salvaged = _salvage(raw)
        if salvaged is None:
            salvaged = (_UNKNOWN_SENDER, Delimiters(), "utf-8")
        head, d, codec = salvaged
        code = ack_code_for(error, enhanced=head.enhanced, stage="commit")
        ack = _compose(
            head,
            d,
            codec,
            code,
            control_id=control_id,
            timestamp=timestamp,
            errors=[_nak_error(raw, error)],
            text="",
            sending=sending,
            message_type="ACK",
        )
        try:
            return ack.to_bytes(), code
        except EngineError:  # an echoed value the charset cannot write
            return ack.to_er7().encode(codec, errors="replace"), code
    except Exception as exc:  # the last line of defence of a listener: answer nothing, never crash
        log.warning("could not build a reject ACK", extra={"error": type(exc).__name__})
        return None, None


_UNKNOWN_SENDER = _Header(
    sending=("", ""),
    receiving=("", ""),
    trigger="",
    control_id="",
    processing_id="P",
    version="2.5.1",
    charset="",
    enhanced=False,
)


def _nak_error(raw: bytes | str, error: EngineError) -> AckError:
    """The ERR of a reject, its ``segment N`` location resolved against the raw lines."""
    text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    names = [line[:3] for line in re.split(r"[\r\n]+", text.strip("\x0b\x1c\r\n")) if line]
    where = error.where
    if isinstance(error, HL7ValidationError) and error.issues:
        where = error.issues[0][1]
    return AckError(error.code, "E", _parse_where(where, names), _plain(error.message, _ERR8_MAX))


# -- timestamps ----------------------------------------------------------------------------------


def hl7_timestamp(dt: datetime) -> str:
    """A DTM (chapter 2A): ``YYYYMMDDHHMMSS[.SSSS]+ZZZZ`` from an aware datetime.

    Fractional seconds are written (to the 1/10 000 s DTM allows) only when not zero; the offset is
    always written, so a receiver never has to guess the sender's time zone. Raises ValueError for
    a naive datetime (a programming error, not bad input).
    """
    offset = dt.utcoffset()
    if offset is None:
        raise ValueError("hl7_timestamp needs an aware datetime (with tzinfo)")
    text = dt.strftime("%Y%m%d%H%M%S")
    if dt.microsecond:
        text += f".{dt.microsecond // 100:04d}"
    seconds = int(offset.total_seconds())
    sign = "-" if seconds < 0 else "+"
    hours, mins = divmod(abs(seconds) // 60, 60)
    return f"{text}{sign}{hours:02d}{mins:02d}"
