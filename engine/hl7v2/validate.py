"""Strict validation of an HL7v2 message against its message structure, with hl7apy's knowledge.

hl7apy carries HL7's reference data for every version from 2.1 to 2.8.2: which segments and segment
groups each message structure has, in which order and how often (HL7 v2.5.1 chapter 2, 2.5.1
messages and 2.5.2 segments and segment groups), each segment's fields with their data types,
optionality and repetition (2.5.3 fields), and the HL7 tables. Its own validator stops at the first
problem and names neither the segment nor the field, so the checks here walk that reference data
themselves and report *every* problem with its place:

* version (MSH-12) and message structure (MSH-9, table 0354 when MSH-9.3 is empty): 203, 200, 201;
* segment order and cardinality, segment groups included: 100, e.g. ``segment 3 (OBR) is not
  allowed in ADT_A01 here``, ``required segment PV1 is missing at the end of the message``;
* required fields: 101, e.g. ``segment 4 (PV1): field 2 (Patient Class) is required but empty``;
* repetitions, components and primitive values (NM, SI, DT, TM, DTM checked by hl7apy's data type
  classes): 102;
* coded values against HL7 tables: 103 (an error for HL7 tables, type ID; a warning for user
  tables, type IS, whose listed values are only suggestions, and for coding system names, table
  0396, which grows every year).

Then, when none of that found an error, hl7apy's own parser runs at ``VALIDATION_LEVEL.STRICT`` and
its validator on the result, so anything it knows that the walk above does not still surfaces; its
exceptions are translated here and never reach a user raw.

Segments whose ID starts with Z are locally defined (2.5.2) and may go anywhere: they are reported
as information, not checked. Issue texts never copy a field value: they may end up in an ACK or a
log.

hl7apy manages ~45 messages a second, far too slow for the receive path: this runs on demand
(``engine validate FILE``). Incomplete: conditional optionality (C) is read as optional; field
lengths are not checked against the standard's per-field lengths; message profiles are not used;
the reference data is hl7apy's, including its occasional disagreements with the published standard.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from types import SimpleNamespace
from typing import Any, Literal

from engine.errors import HL7ValidationError
from engine.hl7v2.codec import Message, Segment, parse_message
from engine.hl7v2.structure import structure_for

__all__ = ["SUPPORTED_VERSIONS", "Severity", "ValidationIssue", "check", "validate"]

#: HL7 table 0516, error severity: error, warning, information.
Severity = Literal["E", "W", "I"]

_SEVERITY_WORDS = {"E": "error", "W": "warning", "I": "information"}
_HEADER_IDS = ("MSH", "FHS", "BHS")
_ANY_SEGMENT = "ANYHL7SEGMENT"  # hl7apy's wildcard slot (QBP/RSP "any HL7 segment")
_SMALL_WORDS = frozenset("A AN AND AS AT BY FOR FROM IN OF ON OR THE TO WITH".split())
_CODING_SYSTEM_RE = re.compile(r"^(?:HL7\d{4}|99[A-Za-z0-9]+)$")
_KEEP_UPPER = frozenset("ID SSN NDC URL HL7 DRG VIP ISO UCUM CLIA".split())


@dataclass(frozen=True)
class ValidationIssue:
    """One problem: a table 0357 ``code``, a table 0516 ``severity``, where it is, and a sentence.

    ``location`` is a terse path (``PV1-2``, ``OBX[2]-5.1``, ``MSH-12``) for a field, the segment ID
    for a missing segment, or ``segment 4 (PV1)`` for a segment that is out of place; ``text`` reads
    on its own ("segment 4 (PV1): field 2 (Patient Class) is required but empty").
    """

    code: str
    severity: Severity
    location: str
    text: str
    field_name: str = ""

    def __str__(self) -> str:
        return f"{self.text} ({_SEVERITY_WORDS[self.severity]} {self.code})"


# -- hl7apy, loaded on first use -----------------------------------------------------------------


@contextmanager
def _quiet() -> Iterator[None]:
    """hl7apy is old code: keep any deprecation warning it raises from failing strict test runs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        warnings.simplefilter("ignore", SyntaxWarning)
        yield


@lru_cache(maxsize=1)
def _hl7apy() -> SimpleNamespace:
    with _quiet():
        import hl7apy
        from hl7apy import core, exceptions, factories, parser
        from hl7apy.consts import VALIDATION_LEVEL
        from hl7apy.validation import Validator
    return SimpleNamespace(
        load_reference=hl7apy.load_reference,
        load_library=hl7apy.load_library,
        datatype_factory=factories.datatype_factory,
        message_info=parser.get_message_info,
        parse_segments=parser.parse_segments,
        Message=core.Message,
        validate=Validator.validate,
        strict=VALIDATION_LEVEL.STRICT,
        exc=exceptions,
    )


def _sort_key(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in version.split("."))


#: The HL7 versions that can be validated (hl7apy's: 2.1 ... 2.8.2).
SUPPORTED_VERSIONS: tuple[str, ...] = (
    "2.1", "2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.8", "2.8.1", "2.8.2",
)  # fmt: skip


def _ref(name: str, kind: str, version: str) -> Any:
    """hl7apy's reference structure for an element, or None when it has none."""
    lib = _hl7apy()
    try:
        with _quiet():
            return lib.load_reference(name, kind, version)
    except lib.exc.HL7apyException:
        return None


@lru_cache(maxsize=256)
def _table(table: str, version: str) -> frozenset[str] | None:
    ref = _ref(table, "Table", version)
    if not ref or not ref[1]:
        return None
    return frozenset(ref[1])


@lru_cache(maxsize=32)
def _base_types(version: str) -> frozenset[str]:
    return frozenset(_hl7apy().load_library(version).get_base_datatypes())


def _title(name: str | None, segment: str = "") -> str:
    """``PATIENT_CLASS`` → ``Patient Class``, ``SET_ID_PID`` → ``Set ID PID``."""
    if not name:
        return ""
    words = []
    for i, w in enumerate(name.split("_")):
        if w == segment or w in _KEEP_UPPER or any(ch.isdigit() for ch in w):
            words.append(w)
        elif i and w in _SMALL_WORDS:
            words.append(w.lower())
        else:
            words.append(w.capitalize())
    return " ".join(words)


# -- the message structure -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Slot:
    """A segment or segment group in a message structure, with its cardinality."""

    name: str
    group: bool
    min: int
    max: int  # -1: unbounded
    children: tuple[_Slot, ...] = ()
    choice: bool = False

    def first_segment(self) -> str:
        if not self.group:
            return self.name
        return self.children[0].first_segment() if self.children else self.name

    def segment_names(self) -> Iterator[str]:
        if not self.group:
            yield self.name
        for c in self.children:
            yield from c.segment_names()


def _slots(ref: Any, version: str) -> tuple[_Slot, ...]:
    out = []
    for name, child, (mn, mx), kind in ref[1]:
        if kind == "GRP":
            gref = child if child is not None else _ref(name, "Group", version)
            kids = _slots(gref, version) if gref else ()
            choice = bool(gref) and gref[0] == "choice"
            out.append(_Slot(name, True, mn, mx, kids, choice))
        else:
            out.append(_Slot(name, False, mn, mx))
    return tuple(out)


@lru_cache(maxsize=128)
def _structure(name: str, version: str) -> _Slot | None:
    ref = _ref(name, "Message", version)
    if ref is None:
        return None
    return _Slot(name, True, 1, 1, _slots(ref, version))


@dataclass
class _Frame:
    """An open instance of a group while matching: the slot reached and how often each matched."""

    slot: _Slot
    idx: int
    counts: list[int] = field(default_factory=list)


class _Matcher:
    """Places segments, in order, into the slots of a message structure.

    Each segment goes to the nearest slot at or after the current position that takes it: in the
    innermost open group first, then in a new instance of a repeating group, then outwards. A
    segment no slot takes is out of place and leaves the position where it was. Required slots
    passed over, or left empty when a group instance closes, are missing segments.
    """

    def __init__(self, root: _Slot, issues: list[ValidationIssue]) -> None:
        self.root = root
        self.issues = issues
        self.stack = [_Frame(root, 0, [0] * len(root.children))]

    def place(self, name: str, before: str) -> bool:
        for level in range(len(self.stack) - 1, -1, -1):
            frame = self.stack[level]
            found = self._search(frame, name)
            if found is None:
                continue
            j, entered = found
            for deeper in reversed(self.stack[level + 1 :]):
                self._missing(deeper, deeper.idx, len(deeper.slot.children), before)
            del self.stack[level + 1 :]
            if not frame.slot.choice:
                self._missing(frame, frame.idx, j, before)
            frame.idx = j
            frame.counts[j] += 1
            for new in entered:
                self._missing(new, 0, new.idx, before)
            self.stack.extend(entered)
            return True
        return False

    def finish(self) -> None:
        for frame in reversed(self.stack):
            self._missing(frame, frame.idx, len(frame.slot.children), "at the end of the message")
        self.stack = []

    def _search(self, frame: _Frame, name: str) -> tuple[int, list[_Frame]] | None:
        kids = frame.slot.children
        if frame.slot.choice:
            candidates = range(frame.idx, frame.idx + 1)
        else:
            candidates = range(frame.idx, len(kids))
        for j in candidates:
            slot = kids[j]
            if slot.max != -1 and frame.counts[j] >= slot.max:
                continue
            if not slot.group:
                if slot.name in (name, _ANY_SEGMENT):
                    return j, []
                continue
            entered = self._enter(slot, name)
            if entered is not None:
                return j, entered
        return None

    def _enter(self, group: _Slot, name: str) -> list[_Frame] | None:
        """Frames for a new instance of ``group`` starting at the first slot that takes ``name``."""
        for j, slot in enumerate(group.children):
            inner: list[_Frame] | None
            if not slot.group:
                inner = [] if slot.name in (name, _ANY_SEGMENT) else None
            else:
                inner = self._enter(slot, name)
            if inner is not None:
                frame = _Frame(group, j, [0] * len(group.children))
                frame.counts[j] = 1
                return [frame, *inner]
        return None

    def _missing(self, frame: _Frame, start: int, stop: int, before: str) -> None:
        if frame.slot.choice:
            return
        for k in range(start, stop):
            slot = frame.slot.children[k]
            if frame.counts[k] >= slot.min:
                continue
            if slot.group:
                short = slot.name.removeprefix(self.root.name + "_")
                first = slot.first_segment()
                text = f"required segment group {short} (starting with {first}) is missing {before}"
                self.issues.append(ValidationIssue("100", "E", first, text))
            else:
                text = f"required segment {slot.name} is missing {before}"
                self.issues.append(ValidationIssue("100", "E", slot.name, text))


# -- fields --------------------------------------------------------------------------------------


class _FieldChecker:
    """Checks the fields of one segment against hl7apy's segment definition."""

    def __init__(self, version: str, issues: list[ValidationIssue]) -> None:
        self.version = version
        self.issues = issues

    def segment(self, seg: Segment, position: int, occurrence: int) -> None:
        ref = _ref(seg.name, "Segment", self.version)
        if ref is None:
            return
        label = f"segment {position} ({seg.name})"
        prefix = seg.name if occurrence == 1 else f"{seg.name}[{occurrence}]"
        defs = ref[1]
        d = seg.delimiters
        for number, (_, fref, (mn, mx), _) in enumerate(defs, start=1):
            if seg.name in _HEADER_IDS and number <= 2:
                continue  # MSH-1 and MSH-2 are the delimiters, checked by the codec
            raw = seg.raw_field(number)
            name = _title(fref[3] if fref else "", seg.name)
            where = f"{prefix}-{number}"
            what = f"{label}: field {number}" + (f" ({name})" if name else "")
            reps = raw.split(d.repetition) if raw else []
            if not any(reps):
                if mn >= 1:
                    self._add("101", "E", where, f"{what} is required but empty", name)
                continue
            if raw == '""':
                continue  # the explicit null: "delete this value" (2.5.3)
            if mx != -1 and len(reps) > mx:
                allowed = "does not repeat" if mx == 1 else f"repeats at most {mx} times"
                self._add("102", "E", where, f"{what} {allowed} but has {len(reps)}", name)
            if fref is None or (seg.name == "MSH" and number in (9, 12, 18)):
                continue  # checked as message type and version above; MSH-18 by the codec
            for rep_no, rep in enumerate(reps, start=1):
                if rep:
                    rep_where = where if rep_no == 1 else f"{where}[{rep_no}]"
                    self._value(rep, fref, seg, 1, rep_where, what, name)
        present = len(seg)
        if present > len(defs) and not (defs and defs[-1][1] and defs[-1][1][2] == "varies"):
            extra = any(seg.raw_field(n) for n in range(len(defs) + 1, present + 1))
            if extra:
                self._add(
                    "102",
                    "W",
                    f"{prefix}-{len(defs) + 1}",
                    f"{label} has {present} fields; HL7 {self.version} defines {len(defs)}",
                )

    def _value(
        self, text: str, ref: Any, seg: Segment, level: int, where: str, what: str, name: str
    ) -> None:
        """Check one repetition (level 1), component (2) or subcomponent (3) against its ref."""
        if ref[0] == "leaf" or level > 3:
            self._leaf(text, ref, where, what, name)
            return
        d = seg.delimiters
        sep = d.component if level == 1 else d.subcomponent
        kids = ref[1]
        parts = text.split(sep)
        dt = ref[2]
        if len(parts) > len(kids) and any(parts[len(kids) :]):
            unit = "components" if level == 1 else "subcomponents"
            self._add(
                "102", "W", where, f"{what} has {len(parts)} {unit}; {dt} has {len(kids)}", name
            )
        for i, part in enumerate(parts[: len(kids)], start=1):
            if not part:
                continue
            kid = kids[i - 1][1]
            kid_name = _title(kid[3])
            kid_what = f"{what} {'component' if level == 1 else 'subcomponent'} {i}"
            kid_what += f" ({kid_name})" if kid_name else ""
            kid_where = f"{where}.{i}" if level <= 2 else where
            self._value(part, kid, seg, level + 1, kid_where, kid_what, name)

    def _leaf(self, text: str, ref: Any, where: str, what: str, name: str) -> None:
        dt, table = ref[2], ref[4]
        if text == '""' or dt == "varies":
            return
        lib = _hl7apy()
        if dt in _base_types(self.version):
            try:
                with _quiet():
                    lib.datatype_factory(dt, text, self.version, lib.strict)
            except lib.exc.MaxLengthReached as exc:
                msg = f"{what} is longer than the {exc.limit} characters hl7apy allows for {dt}"
                self._add("102", "W", where, msg, name)
            except (ValueError, TypeError, lib.exc.HL7apyException):
                self._add("102", "E", where, f"{what} is not a valid {dt} value", name)
        if table and dt in ("ID", "IS"):
            values = _table(table, self.version)
            if values is None or text in values:
                return
            severity: Severity = "E" if dt == "ID" else "W"
            if table == "HL70396":  # coding systems: HL7nnnn, local 99zzz, and new ones each year
                if _CODING_SYSTEM_RE.match(text):
                    return
                severity = "W"
            number = table.removeprefix("HL7")
            msg = f"{what} has a value that is not in HL7 table {number}"
            self._add("103", severity, where, msg, name)

    def _add(self, code: str, severity: Severity, where: str, text: str, name: str = "") -> None:
        self.issues.append(ValidationIssue(code, severity, where, text, name))


# -- the message ---------------------------------------------------------------------------------


def _resolve_version(message: Message, version: str | None) -> tuple[str, ValidationIssue | None]:
    wanted = (version or message.version).strip()
    if not wanted:
        text = "MSH-12 (Version ID) is empty: the version to validate against is unknown"
        return "", ValidationIssue("203", "E", "MSH-12", text, "Version ID")
    if wanted not in SUPPORTED_VERSIONS:
        supported = f"{SUPPORTED_VERSIONS[0]} to {SUPPORTED_VERSIONS[-1]}"
        text = f"HL7 version {wanted} cannot be validated (supported: {supported})"
        return "", ValidationIssue("203", "E", "MSH-12", text, "Version ID")
    return wanted, None


def _resolve_structure(
    message: Message, version: str, issues: list[ValidationIssue]
) -> _Slot | None:
    msh = message.msh
    code, trigger, given = msh.get(9, 1, 1), msh.get(9, 1, 2), msh.get(9, 1, 3)
    if not code:
        issues.append(
            ValidationIssue("101", "E", "MSH-9", "MSH-9 (Message Type) is empty", "Message Type")
        )
        return None
    per_event = f"{code}_{trigger}" if trigger else ""
    derived = structure_for(code, trigger)
    if _sort_key(version) < (2, 3, 1):  # before 2.3.1 each trigger event had its own structure
        candidates = [given, per_event, derived, code]
    else:
        candidates = [given, derived, per_event, code]
    for name in dict.fromkeys(c for c in candidates if c):
        root = _structure(name, version)
        if root is None:
            continue
        if given and name != given:
            text = (
                f"MSH-9.3 (Message Structure) {given} is not a message structure of HL7 "
                f"{version}; validated as {name} (table 0354)"
            )
            issues.append(ValidationIssue("103", "W", "MSH-9.3", text, "Message Structure"))
        return root
    known_codes = _table("HL70076", version)
    if known_codes is None:  # versions before 2.3.1 have no table 0076 in hl7apy
        known_codes = frozenset(n.split("_", 1)[0] for n in _message_names(version))
    if code not in known_codes:
        text = f"message type {code} is not defined in HL7 {version}"
        issues.append(ValidationIssue("200", "E", "MSH-9.1", text, "Message Code"))
    else:
        shown = f"{code}^{trigger}" if trigger else code
        text = f"HL7 {version} has no message structure for {shown}"
        issues.append(ValidationIssue("201", "E", "MSH-9.2", text, "Trigger Event"))
    return None


@lru_cache(maxsize=16)
def _message_names(version: str) -> frozenset[str]:
    with _quiet():
        return frozenset(_hl7apy().load_library(version).ELEMENTS["Message"])


def validate(
    message: Message | str | bytes, *, version: str | None = None
) -> list[ValidationIssue]:
    """Every problem of ``message`` against its HL7 message structure, errors and warnings.

    ``version`` overrides MSH-12. Text and bytes are parsed first (HL7ParseError and HL7DecodeError
    propagate: a message that cannot be read has no structure to check). An empty list means valid.
    """
    msg = message if isinstance(message, Message) else parse_message(message)
    issues: list[ValidationIssue] = []
    resolved, problem = _resolve_version(msg, version)
    if problem is not None:
        return [problem]
    root = _resolve_structure(msg, resolved, issues)
    if root is None:
        return issues

    matcher = _Matcher(root, issues)
    fields = _FieldChecker(resolved, issues)
    in_structure = frozenset(root.segment_names())
    seen: dict[str, int] = {}
    for position, seg in enumerate(msg.segments, start=1):
        seen[seg.name] = seen.get(seg.name, 0) + 1
        label = f"segment {position} ({seg.name})"
        if seg.name.startswith("Z"):
            text = f"{label} is a locally defined Z segment: its content is not checked"
            issues.append(ValidationIssue("0", "I", label, text))
            continue
        known = _ref(seg.name, "Segment", resolved) is not None
        if not known:
            text = f"{label} is not a segment of HL7 {resolved}"
            issues.append(ValidationIssue("100", "E", label, text))
            continue
        if not matcher.place(seg.name, f"before {label}"):
            if seg.name in in_structure or _ANY_SEGMENT in in_structure:
                why = "out of order, or repeated more often than allowed"
            else:
                why = f"{root.name} has no {seg.name} segment"
            text = f"{label} is not allowed in {root.name} here ({why})"
            issues.append(ValidationIssue("100", "E", label, text))
        fields.segment(seg, position, seen[seg.name])
    matcher.finish()

    if not any(i.severity == "E" for i in issues):
        issues.extend(_strict_hl7apy(msg, root.name, resolved))
    return issues


def check(message: Message | str | bytes, *, version: str | None = None) -> None:
    """Raise :class:`HL7ValidationError` listing every error of ``message`` (warnings pass)."""
    errors = [i for i in validate(message, version=version) if i.severity == "E"]
    if not errors:
        return
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    raise HL7ValidationError(
        first.text + more,
        where=first.location,
        code=first.code,
        issues=[(i.code, i.location, i.text) for i in errors],
    )


# -- hl7apy's own strict parse, as a last check --------------------------------------------------

_MISSING_RE = re.compile(r"^Missing required child (?P<parent>\w+)\.(?P<child>\w+)$")
_FIELD_NAME_RE = re.compile(r"^(?P<seg>[A-Z][A-Z0-9]{2})_(?P<num>\d+)$")
_BAD_VALUE_RE = re.compile(
    r"is not an HL7 valid (?P<dt>\w+) value|Invalid value for a (?P<dt2>\w+)"
)


def _strict_hl7apy(msg: Message, structure: str, version: str) -> list[ValidationIssue]:
    """Parse with hl7apy (STRICT) as ``structure`` of ``version`` and run its validator; its
    first complaint, translated. Z segments are left out: hl7apy drops them anyway."""
    text = "\r".join(s.to_er7() for s in msg.segments if not s.name.startswith("Z"))
    lib = _hl7apy()
    try:
        with _quiet():
            encoding_chars = lib.message_info(text)[0]
            parsed = lib.Message(
                name=structure,
                version=version,
                validation_level=lib.strict,
                encoding_chars=encoding_chars,
            )
            parsed.children = lib.parse_segments(
                text, version, encoding_chars, lib.strict, parsed.reference, True
            )
            lib.validate(parsed)
    except lib.exc.MaxLengthReached as exc:
        what = f"a value is longer than the {exc.limit} characters hl7apy allows"
        return [ValidationIssue("102", "W", "", f"hl7apy strict check: {what}")]
    except Exception as exc:  # hl7apy raises ValueError, its own errors and the odd bug
        return [_translate(exc, msg, version)]
    return []


def _translate(exc: Exception, msg: Message, version: str) -> ValidationIssue:
    """An hl7apy exception as an issue, without the field values its messages may quote."""
    lib = _hl7apy()
    said = str(exc)
    m = _MISSING_RE.match(said)
    if isinstance(exc, lib.exc.ValidationError) and m:
        child = m["child"]
        f = _FIELD_NAME_RE.match(child)
        if f:
            seg_id, number = f["seg"], int(f["num"])
            names = [s.name for s in msg.segments]
            position = names.index(seg_id) + 1 if seg_id in names else 0
            fref = _ref(child, "Field", version)
            name = _title(fref[3] if fref else "", seg_id)
            label = f"segment {position} ({seg_id})" if position else seg_id
            text = f"{label}: field {number}" + (f" ({name})" if name else "")
            where = f"{seg_id}-{number}"
            return ValidationIssue("101", "E", where, f"{text} is required but empty", name)
        short = child.removeprefix(m["parent"] + "_")
        return ValidationIssue("100", "E", short, f"required {short} is missing (hl7apy)")
    b = _BAD_VALUE_RE.search(said)
    if isinstance(exc, ValueError) and b:
        dt = b["dt"] or b["dt2"]
        return ValidationIssue("102", "E", "", f"hl7apy strict check: a value is not a valid {dt}")
    if isinstance(exc, lib.exc.HL7apyException):  # these name elements, not values
        return ValidationIssue("100", "E", "", f"hl7apy strict check: {_one_line(said)}")
    name = type(exc).__name__
    text = f"hl7apy strict check could not run ({name}); the checks above still apply"
    return ValidationIssue("207", "W", "", text)


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."
