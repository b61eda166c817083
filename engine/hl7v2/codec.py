"""A fast, exact ER7 codec for HL7v2 (HL7 v2.5.1 chapter 2, sections 2.5-2.8).

Parsing is *lazy*: :func:`parse_message` finds the delimiters in MSH-1/MSH-2 (section 2.5.4),
decodes the bytes in the charset MSH-18 names, splits segments and stops. A segment splits into
fields the first time one of its fields is read, and a field into repetitions, components and
subcomponents only when those are read. An engine reads a handful of fields of most messages, so
most text is never split; that is what makes this codec some 20-50x faster than a parser that builds
a full tree (hl7apy, python-hl7). Use hl7apy for what it does well: validating a message against its
structure (:mod:`engine.hl7v2.validate`).

Serialising writes canonical ER7: segments joined by CR, trailing empty fields, repetitions,
components and subcomponents trimmed, escape sequences as :mod:`engine.hl7v2.escape` writes them.
Segments that were never changed are canonicalised from their original text, so a pass-through keeps
every byte of data the sender wrote.

Tolerated on input: MLLP framing bytes (0x0B ... 0x1C 0x0D), a UTF-8 byte order mark, CR, LF or CRLF
segment terminators (mixed too), blank lines between or after segments. Spaces and tabs at the end
of the last segment are data (its last field's value), not framing, and are kept.

:func:`split_messages` and :func:`split_units` cut a file of many messages (section 2.10.3, batch
protocol) into one text per message without parsing them; :mod:`engine.hl7v2.batch` builds on them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache
from typing import NamedTuple, TypeVar

from engine.errors import HL7DecodeError, HL7ParseError
from engine.hl7v2.charsets import CHARSETS, python_charset
from engine.hl7v2.escape import escape, unescape
from engine.hl7v2.path import Path, parse_path

__all__ = [
    "CHARSETS",
    "Delimiters",
    "Message",
    "MessageType",
    "Repetition",
    "Segment",
    "decode",
    "parse_message",
    "python_charset",
    "split_messages",
    "split_units",
]

_SEG_ID_RE = re.compile(r"[A-Z][A-Z0-9]{2}\Z")
_HEADER_IDS = ("MSH", "FHS", "BHS")
#: batch protocol envelope segments (section 2.10.3): file and batch header and trailer
_WRAPPER_IDS = ("FHS", "BHS", "BTS", "FTS")
_WRAPPER_BYTES = tuple(w.encode("ascii") for w in _WRAPPER_IDS)


class Delimiters(NamedTuple):
    """The separators of one message (MSH-1 and MSH-2)."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str = ""  # v2.7 MSH-2 fifth character

    @property
    def encoding_characters(self) -> str:
        """MSH-2 as written."""
        return self.component + self.repetition + self.escape + self.subcomponent + self.truncation

    @property
    def key(self) -> str:
        """``F C R E S [T]``: the string :func:`escape` and :func:`unescape` take."""
        return self.field + self.encoding_characters

    @classmethod
    def from_header(cls, text: str, where: str = "MSH") -> Delimiters:
        """Read the delimiters from the start of an MSH, FHS or BHS segment."""
        if len(text) < 4:
            raise HL7ParseError("field separator missing", where=f"{where}-1")
        f = text[3]
        if f.isalnum() or f in "\r\n ":
            raise HL7ParseError(
                f"field separator {f!r} is not a valid separator", where=f"{where}-1"
            )
        end = text.find(f, 4)
        enc = text[4:] if end < 0 else text[4:end]
        if not enc:
            raise HL7ParseError("encoding characters missing", where=f"{where}-2")
        if len(enc) == 5 and enc[2] == enc[3] and enc[2] not in (enc[0], enc[1], enc[4]):
            # ``^~\\&``: the escape character doubled, as a message copied out of a source
            # file's string literal has it; other parsers read it as ``^~\&``, and so do we
            enc = enc[:3] + enc[4]
        if len(enc) < 4 or len(enc) > 5:
            raise HL7ParseError(
                f"encoding characters {enc!r} must be 4 characters (or 5 with the v2.7 truncation "
                "character), e.g. ^~\\&",
                where=f"{where}-2",
            )
        chars = f + enc
        if len(set(chars)) != len(chars) or any(ch.isalnum() or ch in "\r\n " for ch in enc):
            raise HL7ParseError(
                f"encoding characters {enc!r} must be distinct non-alphanumeric characters, "
                "different from the field separator",
                where=f"{where}-2",
            )
        return cls(f, enc[0], enc[1], enc[2], enc[3], enc[4] if len(enc) == 5 else "")


DEFAULT_DELIMITERS = Delimiters()


@lru_cache(maxsize=64)
def _trim_re(d: Delimiters) -> re.Pattern[str]:
    """Matches trailing empty subcomponents, components and repetitions inside segment text.

    Each run of delimiters is tried once, from its first character, and never backtracked into
    (a lookbehind and possessive repeats): tried from every character, a run of n delimiters
    not followed by a field separator cost n² steps (a field of 4,000 ``^~`` took 0.4 s)."""
    f, c, r, s = (re.escape(x) for x in (d.field, d.component, d.repetition, d.subcomponent))
    return re.compile(
        rf"(?<![{r}{c}{s}])[{r}{c}{s}]++(?={f}|\Z)|(?<![{c}{s}])[{c}{s}]++(?={r})|(?<!{s}){s}++(?={c})"
    )


@lru_cache(maxsize=64)
def _trim_pairs(d: Delimiters) -> tuple[tuple[str, ...], tuple[str, str, str]]:
    """The delimiter pairs that mark a trailing empty (``^|``, ``~|``, ``&|``, ``^~``, ``&~``,
    ``&^``) and the delimiters a text may not end with."""
    f, c, r, s = d.field, d.component, d.repetition, d.subcomponent
    return (c + f, r + f, s + f, c + r, s + r, s + c), (c, r, s)


def _canonical(text: str, d: Delimiters) -> str:
    """Trim trailing empties of every level in segment text (without the segment ID rules).

    Most segments have nothing to trim but trailing empty fields, so the regex only runs when one
    of the pairs that mark a trailing empty occurs (a 3x saving on pass-through serialisation).
    """
    text = text.rstrip(d.field)
    pairs, ends = _trim_pairs(d)
    if not text.endswith(ends):
        for pair in pairs:
            if pair in text:
                break
        else:
            return text
    return _trim_re(d).sub("", text).rstrip(d.field)


class Repetition:
    """One repetition of a field: a composite of components, each of subcomponents."""

    __slots__ = ("raw", "_d", "_cs")

    def __init__(self, raw: str, d: Delimiters, charset: str) -> None:
        self.raw = raw
        self._d = d
        self._cs = charset

    def get(self, component: int = 1, subcomponent: int = 1) -> str:
        """The unescaped text of one component (and subcomponent); ``""`` when absent."""
        return _leaf(self.raw, component, subcomponent, self._d, self._cs)

    def components(self) -> list[str]:
        """Every component, unescaped, first subcomponent only."""
        return [_leaf(c, 1, 1, self._d, self._cs) for c in self.raw.split(self._d.component)]

    def __bool__(self) -> bool:
        return bool(self.raw)

    def __repr__(self) -> str:
        return f"<Repetition {len(self.raw)} chars>"


def _leaf(v: str, comp: int, sub: int, d: Delimiters, cs: str) -> str:
    if not v:
        return ""
    if comp:
        if d.component in v:
            parts = v.split(d.component)
            v = parts[comp - 1] if comp <= len(parts) else ""
        elif comp > 1:
            return ""
        if sub:
            if d.subcomponent in v:
                parts = v.split(d.subcomponent)
                v = parts[sub - 1] if sub <= len(parts) else ""
            elif sub > 1:
                return ""
    if d.escape in v:
        return unescape(v, d.key, cs)
    return v


class Segment:
    """One segment. ``fields()[n]`` is the raw (escaped) text of field n, for MSH too (MSH-1 is the
    field separator, MSH-2 the encoding characters)."""

    __slots__ = ("name", "_raw", "_fields", "_d", "_cs")

    def __init__(self, raw: str, d: Delimiters, charset: str) -> None:
        self.name = raw[:3]
        self._raw: str | None = raw
        self._fields: list[str] | None = None
        self._d = d
        self._cs = charset

    @classmethod
    def new(cls, name: str, d: Delimiters = DEFAULT_DELIMITERS, charset: str = "utf-8") -> Segment:
        """An empty segment, for building messages."""
        if not _SEG_ID_RE.match(name):
            raise HL7ParseError(f"{name!r} is not a segment ID (three capitals or digits)")
        if name in _HEADER_IDS:
            return cls(name + d.field + d.encoding_characters, d, charset)
        return cls(name, d, charset)

    @property
    def delimiters(self) -> Delimiters:
        """The message's separators (MSH-1, MSH-2), for code that splits ``fields()`` itself."""
        return self._d

    @property
    def charset(self) -> str:
        """The Python codec of the message's character set (for ``\\X..\\`` escapes)."""
        return self._cs

    def fields(self) -> list[str]:
        """The raw fields, split on first use."""
        f = self._fields
        if f is None:
            assert self._raw is not None
            f = self._raw.split(self._d.field)
            if self.name in _HEADER_IDS:
                f.insert(1, self._d.field)
            self._fields = f
        return f

    def __len__(self) -> int:
        """Number of fields present (the highest field number written)."""
        return len(self.fields()) - 1

    def raw_field(self, n: int) -> str:
        """Field ``n`` as escaped ER7 text (all repetitions), ``""`` when absent."""
        f = self.fields()
        return f[n] if n < len(f) else ""

    def get(self, field: int, rep: int = 1, comp: int = 1, sub: int = 1) -> str:
        """The unescaped text at field/repetition/component/subcomponent (1-based).

        ``comp=0`` returns the whole repetition's text unescaped as one string (delimiters included
        verbatim), which is only meaningful for primitive fields.
        """
        f = self.fields()
        if field >= len(f):
            return ""
        v = f[field]
        if not v:
            return ""
        d = self._d
        if field <= 2 and self.name in _HEADER_IDS:
            return v  # MSH-1 and MSH-2 are the delimiters themselves, never escaped
        if d.repetition in v:
            parts = v.split(d.repetition)
            v = parts[rep - 1] if rep <= len(parts) else ""
        elif rep > 1:
            return ""
        return _leaf(v, comp, sub, d, self._cs)

    def repetitions(self, field: int) -> list[Repetition]:
        """The repetitions of a field, empty when the field is empty."""
        v = self.raw_field(field)
        if not v or (field <= 2 and self.name in _HEADER_IDS):
            return []
        d, cs = self._d, self._cs
        return [Repetition(r, d, cs) for r in v.split(d.repetition)]

    # -- writing -----------------------------------------------------------------------------

    def set(self, field: int, value: str, rep: int = 1, comp: int = 1, sub: int = 1) -> None:
        """Write ``value`` (escaped here) at field/repetition/component/subcomponent.

        ``comp=0`` replaces the whole repetition; ``sub=0`` the whole component.
        """
        if field < 1 or (field <= 2 and self.name in _HEADER_IDS):
            raise HL7ParseError(f"field {field} cannot be set", where=f"{self.name}-{field}")
        self.set_raw(field, escape(value, self._d.key), rep, comp, sub)

    def set_raw(self, field: int, raw: str, rep: int = 1, comp: int = 1, sub: int = 1) -> None:
        """Write already-escaped ER7 text at a position (``rep=0`` replaces every repetition)."""
        f = self.fields()
        while len(f) <= field:
            f.append("")
        d = self._d
        if rep == 0:
            f[field] = raw
        else:
            reps = f[field].split(d.repetition) if f[field] else [""]
            while len(reps) < rep:
                reps.append("")
            if comp == 0:
                reps[rep - 1] = raw
            else:
                comps = reps[rep - 1].split(d.component)
                while len(comps) < comp:
                    comps.append("")
                if sub == 0:
                    comps[comp - 1] = raw
                else:
                    subs = comps[comp - 1].split(d.subcomponent)
                    while len(subs) < sub:
                        subs.append("")
                    subs[sub - 1] = raw
                    comps[comp - 1] = d.subcomponent.join(subs)
                reps[rep - 1] = d.component.join(comps)
            f[field] = d.repetition.join(reps)
        self._raw = None

    def to_er7(self) -> str:
        """Canonical ER7 text of the segment (no terminator)."""
        d = self._d
        if self._raw is not None:
            text = self._raw
        else:
            f = self._fields
            assert f is not None
            if self.name in _HEADER_IDS:
                text = self.name + d.field + d.field.join(f[2:])
            else:
                text = d.field.join(f)
        if self.name in _HEADER_IDS:
            head = 4 + len(d.encoding_characters)
            return text[:head] + _canonical(text[head:], d)
        return _canonical(text, d)

    def __repr__(self) -> str:  # no field values: PHI-safe
        return f"<Segment {self.name}>"


class MessageType(NamedTuple):
    """MSH-9: message code, trigger event and message structure (table 0354 when MSH-9.3 empty)."""

    code: str
    trigger: str
    structure: str

    def __str__(self) -> str:
        return f"{self.code}^{self.trigger}" if self.trigger else self.code


class Message:
    """A parsed (or built) HL7v2 message: an ordered list of :class:`Segment`."""

    __slots__ = ("segments", "delimiters", "charset", "_index")

    def __init__(
        self, segments: list[Segment], delimiters: Delimiters, charset: str = "utf-8"
    ) -> None:
        self.segments = segments
        self.delimiters = delimiters
        self.charset = charset
        self._index: dict[str, list[Segment]] | None = None

    # -- building ----------------------------------------------------------------------------

    @classmethod
    def new(
        cls,
        message_type: str,
        *,
        control_id: str,
        timestamp: str,
        version: str = "2.5.1",
        sending: tuple[str, str] = ("", ""),
        receiving: tuple[str, str] = ("", ""),
        processing_id: str = "P",
        delimiters: Delimiters = DEFAULT_DELIMITERS,
        charset_name: str = "UNICODE UTF-8",
    ) -> Message:
        """A new message with its MSH filled in (HL7 v2.5.1 section 2.15.9).

        ``message_type`` is MSH-9 written with ``^`` whatever the delimiters: ``ADT^A04^ADT_A01``.
        """
        charset = python_charset(charset_name)
        msh = Segment.new("MSH", delimiters, charset)
        msg = cls([msh], delimiters, charset)
        msh.set(3, sending[0])
        msh.set(4, sending[1])
        msh.set(5, receiving[0])
        msh.set(6, receiving[1])
        msh.set(7, timestamp)
        for i, part in enumerate(message_type.split("^"), start=1):
            msh.set(9, part, comp=i)
        msh.set(10, control_id)
        msh.set(11, processing_id)
        msh.set(12, version)
        if charset_name:
            msh.set(18, charset_name)
        return msg

    def add(self, name: str) -> Segment:
        """Append a new empty segment and return it."""
        seg = Segment.new(name, self.delimiters, self.charset)
        self.segments.append(seg)
        self._index = None
        return seg

    # -- reading -----------------------------------------------------------------------------

    def _idx(self) -> dict[str, list[Segment]]:
        idx = self._index
        if idx is None:
            idx = {}
            for s in self.segments:
                idx.setdefault(s.name, []).append(s)
            self._index = idx
        return idx

    def segment(self, name: str, occurrence: int = 1) -> Segment | None:
        """The n-th segment with this ID, or None."""
        found = self._idx().get(name)
        if found and occurrence <= len(found):
            return found[occurrence - 1]
        return None

    def all(self, name: str) -> list[Segment]:
        """Every segment with this ID, in order."""
        return list(self._idx().get(name, ()))

    @property
    def msh(self) -> Segment:
        return self.segments[0]

    def get(self, path: str | Path) -> str:
        """Unescaped text at a terse path such as ``PID-3[2].4.1`` (``""`` when absent)."""
        p = parse_path(path) if isinstance(path, str) else path
        seg = self.segment(p.segment, p.occurrence)
        if seg is None or not p.field:
            return ""
        return seg.get(p.field, p.repetition, p.component or 1, p.subcomponent or 1)

    def set(self, path: str | Path, value: str) -> None:
        """Write ``value`` at a path; appends the segment when it is the next occurrence."""
        p = parse_path(path) if isinstance(path, str) else path
        seg = self.segment(p.segment, p.occurrence)
        if seg is None:
            have = len(self._idx().get(p.segment, ()))
            if p.occurrence != have + 1:
                raise HL7ParseError(
                    f"cannot write occurrence {p.occurrence}: the message has {have}", where=str(p)
                )
            seg = self.add(p.segment)
        seg.set(p.field, value, p.repetition, p.component, p.subcomponent)

    @property
    def type(self) -> MessageType:
        """MSH-9, with the structure derived from table 0354 when MSH-9.3 is empty."""
        from engine.hl7v2.structure import structure_for

        msh = self.msh
        code, trigger, structure = msh.get(9, 1, 1), msh.get(9, 1, 2), msh.get(9, 1, 3)
        if not structure:
            structure = structure_for(code, trigger)
        return MessageType(code, trigger, structure)

    @property
    def control_id(self) -> str:
        """MSH-10."""
        return self.msh.get(10)

    @property
    def version(self) -> str:
        """MSH-12.1 (version ID)."""
        return self.msh.get(12)

    # -- writing -----------------------------------------------------------------------------

    def to_er7(self, terminator: str = "\r") -> str:
        """Canonical ER7 text, each segment followed by ``terminator``."""
        return "".join(s.to_er7() + terminator for s in self.segments)

    def to_bytes(self, terminator: str = "\r", *, replace: bool = False) -> bytes:
        """The ER7 text encoded in the message's character set; ``replace``: a character it
        cannot write becomes ``?`` (an ACK, which must go out whatever our own name holds),
        else HL7DecodeError."""
        text = self.to_er7(terminator)
        if replace:
            return text.encode(self.charset, errors="replace")
        try:
            return text.encode(self.charset)
        except UnicodeEncodeError as exc:
            raise HL7DecodeError(
                f"text cannot be written in the message character set {self.charset}",
                where="MSH-18",
            ) from exc

    def __repr__(self) -> str:  # no field values: PHI-safe
        return f"<Message {self.msh.get(9)}^{self.msh.get(9, 1, 2)} {len(self.segments)} segments>"


# -- parsing ---------------------------------------------------------------------------------

_FRAME_STRIP = "\x0b\x1c\ufeff\r\n \t"
_BOM = b"\xef\xbb\xbf"


def _strip_frame(text: str) -> str:
    """Drop MLLP bytes, a BOM and blank lines around a message, keeping trailing data spaces."""
    text = text.lstrip(_FRAME_STRIP)
    body = text.rstrip(_FRAME_STRIP)
    tail = text[len(body) :]
    # spaces, tabs (and a stray BOM) before the first terminator end the last field's value
    keep = len(tail) - len(tail.lstrip(" \t\ufeff"))
    return body + tail[:keep]


def _split_lines(text: str) -> list[str]:
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    return [s for s in text.split("\r") if s and not s.isspace()]


def _msh18(first_line: str) -> str:
    """MSH-18 (first repetition) read from the undecoded first line (latin-1 view), unparsed."""
    f = first_line[3:4]
    if not f:
        return ""
    parts = first_line.split(f)
    if len(parts) <= 17:
        return ""
    value = parts[17]
    for sep in (first_line[5:6] or "~", first_line[4:5] or "^"):  # repetition, then component
        value = value.split(sep)[0]
    return value


def _frame_skip(data: bytes) -> int:
    """How many leading bytes are MLLP start bytes, blank lines or byte order marks."""
    if data.startswith(b"MSH"):
        return 0
    head = data[:256]
    n = -1
    while n != len(head):
        n = len(head)
        head = head.lstrip(b"\x0b\r\n \t")
        if head.startswith(_BOM):
            head = head[3:]
    return min(len(data), 256) - len(head)


def decode(data: bytes, default_charset: str = "utf-8") -> str:
    """Bytes of one message to text, in the charset MSH-18 names (``default_charset`` if none).

    HL7 v2.5.1 section 2.15.9.18: MSH-18 names the character set of the whole message; only
    ASCII-compatible sets (:data:`CHARSETS`) are supported, so MSH itself reads the same in all.
    """
    skipped = _frame_skip(data)  # MLLP start byte, blank lines, BOM: never part of the text
    if skipped:
        data = data[skipped:]
    head = data[:4096]
    end = min((i for i in (head.find(b"\r"), head.find(b"\n")) if i >= 0), default=len(head))
    codec = python_charset(_msh18(head[:end].decode("latin-1")), default_charset)
    try:
        return data.decode(codec)
    except UnicodeDecodeError as exc:
        before = data[: exc.start].replace(b"\r\n", b"\r").replace(b"\n", b"\r").split(b"\r")
        seg_no = 1 + sum(1 for line in before[:-1] if line.strip(b"\x0b\x1c \t"))
        seg_id = before[-1].lstrip(b"\x0b")[:3].decode("latin-1")
        where = f"segment {seg_no}"
        if _SEG_ID_RE.match(seg_id):
            where += f" ({seg_id})"
        raise HL7DecodeError(
            f"byte 0x{data[exc.start]:02X} at offset {exc.start + skipped} is not valid {codec} "
            "(check MSH-18 or the default charset setting)",
            where=where,
        ) from exc


def parse_message(data: bytes | str, *, default_charset: str = "utf-8") -> Message:
    """Parse one ER7 message (bytes are decoded per MSH-18).

    Raises :class:`HL7ParseError` (no MSH, bad delimiters, a line that is not a segment) or
    :class:`HL7DecodeError`.
    """
    text = data if isinstance(data, str) else decode(data, default_charset)
    lines = _split_lines(_strip_frame(text))
    if not lines:
        raise HL7ParseError("empty message: no MSH segment")
    return _from_lines(lines, default_charset)


def _from_lines(lines: list[str], default_charset: str) -> Message:
    first = lines[0]
    if not first.startswith("MSH"):
        if first[:3] in ("FHS", "BHS"):
            raise HL7ParseError(
                f"input starts with a {first[:3]} batch header: read it as a batch file",
                where="segment 1",
            )
        raise HL7ParseError("no MSH segment: a message must start with MSH", where="segment 1")
    d = Delimiters.from_header(first)
    charset = python_charset(_msh18(first), default_charset)
    f = d.field
    segs: list[Segment] = []
    for n, line in enumerate(lines, start=1):
        if (len(line) > 3 and line[3] != f) or not _SEG_ID_RE.match(line[:3]):
            raise HL7ParseError(
                f"{line[:3]!r} is not a segment ID followed by the field separator {f!r}",
                where=f"segment {n}",
            )
        segs.append(Segment(line, d, charset))
    return Message(segs, d, charset)


_S = TypeVar("_S", str, bytes)


def split_units(data: bytes | str) -> Iterator[tuple[int, bool, bytes | str]]:
    """Cut a file into ``(line_number, is_envelope, text)`` units, without parsing them.

    A unit is either one batch envelope line (FHS, BHS, BTS or FTS, HL7 v2.5.1 section 2.10.3;
    ``is_envelope`` true) or one message: an MSH line and every following line up to the next MSH
    or envelope line, joined by CR. Lines before the first MSH that are not envelope lines form a
    unit of their own, which :func:`parse_message` then rejects. ``line_number`` is the 1-based
    line of the unit's first line in ``data`` (a CRLF counts as one terminator). Blank lines and
    MLLP block bytes at the ends of lines are skipped. Bytes stay bytes: each message is decoded
    later in the charset its own MSH-18 names.
    """
    if isinstance(data, bytes):
        if data.startswith(_BOM):
            data = data[3:]
        blines = data.replace(b"\r\n", b"\r").replace(b"\n", b"\r").split(b"\r")
        yield from _group(blines, b"MSH", _WRAPPER_BYTES, b"\r", b"\x0b\x1c")
    else:
        slines = data.lstrip("\ufeff").replace("\r\n", "\r").replace("\n", "\r").split("\r")
        yield from _group(slines, "MSH", _WRAPPER_IDS, "\r", "\x0b\x1c")


def split_messages(data: bytes | str) -> Iterator[tuple[int, bytes | str]]:
    """Split back-to-back messages (and batch wrappers) into ``(line_number, message)`` pieces.

    FHS/BHS/BTS/FTS lines are skipped here; :mod:`engine.hl7v2.batch` reads them.
    """
    for line_no, envelope, text in split_units(data):
        if not envelope:
            yield line_no, text


def _group(
    lines: list[_S], msh: _S, wrappers: tuple[_S, ...], sep: _S, frame: _S
) -> Iterator[tuple[int, bool, _S]]:
    cur: list[_S] = []
    start = 0
    for i, raw in enumerate(lines, start=1):
        line = raw.strip(frame)
        if not line or line.isspace():
            continue
        tag = line[:3]
        if tag in wrappers:
            if cur:
                yield start, False, sep.join(cur)
                cur = []
            yield i, True, line
            continue
        if tag == msh and cur:
            yield start, False, sep.join(cur)
            cur = []
        if not cur:
            start = i
        cur.append(line)
    if cur:
        yield start, False, sep.join(cur)
