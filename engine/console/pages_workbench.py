"""The console: the mapping workbench (owner: workbench-reports).

``/console/workbench``: an IT admin pastes an HL7v2 message and sees the FHIR Bundle the site's
mappings make of it — the running engine's set (after its last reload), else the set
``ENGINE_MAPPINGS_DIR`` names — with, for every element, the mapping file and line of each rule
that made it (engine.mappings.provenance); what the message carries that no map takes; the
checks ``engine validate`` makes (hl7apy, engine.hl7v2.validate) and the FHIR model's
(fhir.resources R4B, engine.mappings.fhir_validate); and, when an expected Bundle is pasted
too, the difference by path (added, removed, changed; instants compared as instants, as
``engine mappings test`` does). The other way, a FHIR Bundle or resource pasted becomes the
HL7v2 v2.5.1 message ``engine convert --to hl7v2`` makes, checked the same way.

Nothing pasted is stored or logged: the audit trail records the use (action ``workbench``,
which way, the message type, the outcome), never the text. Limits: each pasted text at most
:data:`MAX_TEXT` bytes (UTF-8) and :data:`MAX_SEGMENTS` segments; the form at most
:data:`MAX_BODY` bytes, read before anything is parsed; at most :data:`SLOTS` conversions at
once (a busy workbench answers 503), each given :data:`TIMEOUT_S` before the page says it took
too long. A text that cannot be read is named by its segment or field and the line of the
pasted text it is on, or by the JSON line and column.

Viewers, integration users and admins use it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse

from engine.api.auth import Role
from engine.api.deps import SettingsDep
from engine.console.auth import ConsoleUser, ConsoleUserDep, CsrfDep
from engine.console.render import render
from engine.errors import EngineError
from engine.mappings import Mappings, load_mappings
from engine.mappings.golden import same_instant
from engine.mappings.provenance import ElementSource
from engine.settings import Settings

__all__ = [
    "MAX_BODY",
    "MAX_SEGMENTS",
    "MAX_TEXT",
    "Change",
    "bundle_diff",
    "router",
]

log = logging.getLogger(__name__)

router = APIRouter()

#: the most a pasted text may have (UTF-8 bytes)
MAX_TEXT = 1024 * 1024
#: the most a form may have: url-encoding makes HL7's | ^ ~ \ & three bytes each
MAX_BODY = 8 * MAX_TEXT
#: the most segments a pasted message may have
MAX_SEGMENTS = 5000
#: conversions at once, and how long the page waits for one
SLOTS = 2
TIMEOUT_S = 20.0
#: the most rows of provenance and of differences shown
MAX_ROWS = 3000
MAX_CHANGES = 500

_slots = threading.BoundedSemaphore(SLOTS)
_DIRECTIONS = ("to-fhir", "to-hl7")
_EVENTS = ("", "new", "reschedule", "modify", "update")
_SEGMENT_WHERE = re.compile(r"^segment (\d+)")
_FIELD_WHERE = re.compile(r"^([A-Z][A-Z0-9]{2})(?:\[(\d+)\])?(?:-|$)")
_DT_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$")


async def _workbench_user(user: ConsoleUserDep) -> ConsoleUser:
    if not (user.may(Role.VIEWER) or user.may(Role.INTEGRATION)):
        from engine.console.sessions import forbidden

        raise forbidden(Role.INTEGRATION, user)
    return user


WorkbenchUserDep = Annotated[ConsoleUser, Depends(_workbench_user)]


async def _form(request: Request, user: WorkbenchUserDep) -> dict[str, str]:
    """The posted form, read (at most :data:`MAX_BODY` bytes, 413 beyond) before the CSRF check
    reads it again from the same bytes; only a logged-in user's body is read at all."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise HTTPException(413, detail=f"the form is larger than {MAX_BODY // 2**20} MiB")
    if not hasattr(request, "_body"):
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                raise HTTPException(413, detail=f"the form is larger than {MAX_BODY // 2**20} MiB")
            chunks.append(chunk)
        request._body = b"".join(chunks)
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        raise HTTPException(415, detail="post the workbench's form (url-encoded)")
    body: bytes = await request.body()
    fields: dict[str, str] = {}
    for key, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        fields.setdefault(key, value)
    return fields


# -- results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """Something that stopped or marred the conversion, and where (a segment and its line)."""

    where: str
    text: str


@dataclass(frozen=True)
class Change:
    """One difference between the expected Bundle and the one made: added (only in what was
    made), removed (only in what was expected) or changed, at a path."""

    kind: str
    path: str
    expected: str = ""
    actual: str = ""


@dataclass(frozen=True)
class SourceRow:
    """One element of the Bundle as the page lists it: which entry, its path in the resource,
    its value, and the rules that made it (file, line, rule), outermost first."""

    entry: int
    resource_type: str
    path: str
    value: str
    origins: tuple[tuple[str, int, str], ...]


@dataclass
class Outcome:
    """What the page shows after a conversion."""

    direction: str
    #: the output: the Bundle as JSON, or the HL7v2 message (one segment a line)
    output: str = ""
    label: str = ""
    errors: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: (severity word, where, text) of the HL7v2 checks; the FHIR model's problems
    hl7_issues: list[tuple[str, str, str]] = field(default_factory=list)
    hl7_checked: bool = False
    fhir_issues: list[Problem] = field(default_factory=list)
    fhir_checked: bool = False
    sources: list[SourceRow] = field(default_factory=list)
    sources_left: int = 0
    changes: list[Change] | None = None
    changes_left: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def outcome(self) -> str:
        return "error" if self.errors else "ok"


# -- the mapping set -----------------------------------------------------------------------


@lru_cache(maxsize=4)
def _load(site_dir: Path | None) -> Mappings:
    return load_mappings(site_dir)


def _mappings(request: Request, settings: Settings) -> Mappings:
    """The running engine's mapping set (after its last reload), else the settings' one."""
    current = getattr(getattr(request.app.state, "reloader", None), "current", None)
    mappings = getattr(current, "mappings", None)
    if isinstance(mappings, Mappings):
        return mappings
    return _load(settings.mappings_dir)


# -- HL7v2 -> FHIR -------------------------------------------------------------------------


def _segment_lines(text: str) -> list[int]:
    """The line (from 1) of each segment of the pasted text, as the codec counts segments."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return [i + 1 for i, line in enumerate(lines) if line.strip(" \x0b\x1c")]


def _place(where: str | None, text: str) -> str:
    """An error's place with the line of the pasted text it is on."""
    if not where:
        return ""
    lines = _segment_lines(text)
    m = _SEGMENT_WHERE.match(where)
    if m is not None:
        n = int(m.group(1))
        return f"{where}, line {lines[n - 1]}" if 0 < n <= len(lines) else where
    m = _FIELD_WHERE.match(where)
    if m is None:
        return where
    wanted, seen = int(m.group(2) or 1), 0
    for line_no, line in zip(lines, _nonblank(text), strict=False):
        if line.startswith(m.group(1)):
            seen += 1
            if seen == wanted:
                return f"{where}, line {line_no}"
    return where


def _nonblank(text: str) -> list[str]:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return [line.strip(" \x0b\x1c") for line in lines if line.strip(" \x0b\x1c")]


def _short(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _rows(bundle: dict[str, Any], sources: list[ElementSource]) -> list[SourceRow]:
    types = [e.get("resource", {}).get("resourceType", "") for e in bundle.get("entry", [])]
    rows = []
    for s in sources:
        head, _, rest = s.path.partition("]")
        entry = int(head.removeprefix("entry["))
        rtype = types[entry] if entry < len(types) else ""
        path = rest.removeprefix(".resource.").removeprefix(".")
        shown = f"{rtype}.{path}" if rest.startswith(".resource.") else f"(entry) {path}"
        origins = tuple((o.file, o.line, o.rule) for o in s.origins)
        rows.append(SourceRow(entry, rtype, shown, _short(s.value), origins))
    return rows


def _check_hl7(message: Any, out: Outcome) -> None:
    from engine.hl7v2.validate import validate

    words = {"E": "error", "W": "warning", "I": "information"}
    try:
        issues = validate(message)
    except EngineError as exc:
        out.hl7_issues.append(("error", exc.where or "", exc.message))
    else:
        out.hl7_issues += [(words[i.severity], i.location, i.text) for i in issues]
    out.hl7_checked = True


def _check_fhir(doc: dict[str, Any], out: Outcome) -> None:
    """The FHIR model's verdict on every resource (one problem each at most), then the Bundle."""
    from engine.mappings.fhir_validate import validate_bundle, validate_resource

    if doc.get("resourceType") == "Bundle":
        for i, entry in enumerate(doc.get("entry") or []):
            resource = entry.get("resource") if isinstance(entry, dict) else None
            try:
                validate_resource(resource if isinstance(resource, dict) else {}, f"entry[{i}]")
            except EngineError as exc:
                out.fhir_issues.append(Problem(exc.where or f"entry[{i}]", exc.message))
    if out.fhir_issues:
        out.fhir_checked = True
        return
    try:  # the whole (entries' structure, the Bundle's own elements), once each resource passed
        if doc.get("resourceType") == "Bundle":
            validate_bundle(doc)
        else:
            validate_resource(doc)
    except EngineError as exc:
        out.fhir_issues.append(Problem(exc.where or doc.get("resourceType", ""), exc.message))
    out.fhir_checked = True


def to_fhir(mappings: Mappings, text: str, expected: str, charset: str) -> Outcome:
    """HL7v2 pasted → the Bundle, its provenance, checks and the difference with ``expected``."""
    from engine.hl7v2.codec import parse_message, split_messages

    out = Outcome("to-fhir")
    data = text.replace("\r\n", "\r").replace("\n", "\r").encode("utf-8")
    pieces = [raw for _line, raw in split_messages(data) if isinstance(raw, bytes)]
    if not pieces or not data.lstrip(b" \r\x0b").startswith((b"MSH", b"FHS", b"BHS")):
        out.errors.append(Problem("", "no HL7v2 message found: it must start with MSH"))
        return out
    if len(pieces) > 1:
        out.notes.append(f"the text holds {len(pieces)} messages: the first is converted")
    if pieces[0].count(b"\r") + 1 > MAX_SEGMENTS:
        out.errors.append(Problem("", f"more than {MAX_SEGMENTS} segments"))
        return out
    try:
        message = parse_message(pieces[0], default_charset=charset)
        out.label = f"{message.type.code}^{message.type.trigger}"
    except EngineError as exc:
        out.errors.append(Problem(_place(exc.where, text), exc.message))
        return out
    _check_hl7(message, out)
    try:
        bundle, sources = mappings.to_fhir_traced(message, out.warnings)
    except EngineError as exc:
        out.errors.append(Problem(_place(exc.where, text), exc.message))
        return out
    out.output = orjson.dumps(bundle, option=orjson.OPT_INDENT_2).decode()
    _check_fhir(bundle, out)
    rows = _rows(bundle, sources)
    out.sources, out.sources_left = rows[:MAX_ROWS], max(0, len(rows) - MAX_ROWS)
    if expected.strip():
        wanted = _json(expected, "expected Bundle", out)
        if wanted is not None:
            changes = bundle_diff(wanted, bundle)
            out.changes, out.changes_left = (
                changes[:MAX_CHANGES],
                max(0, len(changes) - MAX_CHANGES),
            )
    return out


def _json(text: str, what: str, out: Outcome) -> Any:
    """The JSON of a pasted text, or None with a problem naming its line and column."""
    try:
        return orjson.loads(text.encode("utf-8"))
    except orjson.JSONDecodeError as exc:
        out.errors.append(
            Problem(f"{what}, line {exc.lineno}, column {exc.colno}", f"not valid JSON: {exc.msg}")
        )
        return None


# -- the difference ------------------------------------------------------------------------


def _same_leaf(expected: Any, actual: Any) -> bool:
    if isinstance(expected, str) and isinstance(actual, str):
        return expected == actual or bool(
            _DT_RE.match(expected) and _DT_RE.match(actual) and same_instant(expected, actual)
        )
    numbers = (int, float)
    if (
        isinstance(expected, numbers)
        and isinstance(actual, numbers)
        and not isinstance(expected, bool)
        and not isinstance(actual, bool)
    ):
        return float(expected) == float(actual)
    return bool(expected == actual and type(expected) is type(actual))


def bundle_diff(expected: Any, actual: Any, path: str = "") -> list[Change]:
    """Every difference between ``expected`` and ``actual`` by path, in document order: keys in
    any order, lists by position (FHIR gives order meaning), instants and numbers by value."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        out: list[Change] = []
        for key, value in expected.items():
            sub = f"{path}.{key}" if path else str(key)
            if key in actual:
                out += bundle_diff(value, actual[key], sub)
            else:
                out.append(Change("removed", sub, expected=_short(value)))
        for key, value in actual.items():
            if key not in expected:
                sub = f"{path}.{key}" if path else str(key)
                out.append(Change("added", sub, actual=_short(value)))
        return out
    if isinstance(expected, list) and isinstance(actual, list):
        out = []
        for i in range(max(len(expected), len(actual))):
            sub = f"{path}[{i}]"
            if i >= len(actual):
                out.append(Change("removed", sub, expected=_short(expected[i])))
            elif i >= len(expected):
                out.append(Change("added", sub, actual=_short(actual[i])))
            else:
                out += bundle_diff(expected[i], actual[i], sub)
        return out
    if _same_leaf(expected, actual):
        return []
    return [Change("changed", path or "(root)", _short(expected), _short(actual))]


# -- FHIR -> HL7v2 -------------------------------------------------------------------------


def to_hl7(mappings: Mappings, text: str, event: str) -> Outcome:
    """FHIR pasted (a Bundle or a resource) → the HL7v2 message, checked both sides."""
    from engine.hl7v2.codec import parse_message

    out = Outcome("to-hl7")
    doc = _json(text, "FHIR", out)
    if doc is None:
        return out
    if not isinstance(doc, dict) or not isinstance(doc.get("resourceType"), str):
        out.errors.append(Problem("FHIR, line 1", "JSON without a resourceType is not FHIR"))
        return out
    out.label = doc["resourceType"]
    _check_fhir(doc, out)
    now = datetime.now(UTC)
    try:
        message = mappings.to_hl7(
            doc,
            control_id=now.strftime("W%Y%m%d%H%M%S%f"),
            timestamp=now,
            event=event or None,
            warnings=out.warnings,
        )
    except EngineError as exc:
        out.errors.append(Problem(exc.where or "", exc.message))
        return out
    raw = message.to_bytes("\r")
    out.output = raw.decode("utf-8", "replace").replace("\r", "\n").rstrip("\n")
    out.label = f"{message.type.code}^{message.type.trigger}"
    _check_hl7(parse_message(raw), out)
    return out


# -- the page ------------------------------------------------------------------------------


def _convert(mappings: Mappings, form: dict[str, str], charset: str) -> Outcome:
    """The conversion the form asks for (in a worker thread, holding a slot). An error no
    check foresaw (a bug) is named by its class only, as ``engine convert`` names it."""
    direction = form.get("direction", "to-fhir")
    try:
        if direction == "to-hl7":
            return to_hl7(mappings, form.get("fhir", ""), form.get("event", ""))
        return to_fhir(mappings, form.get("message", ""), form.get("expected", ""), charset)
    except Exception as exc:
        log.warning("workbench: unexpected error", extra={"error": type(exc).__name__})
        out = Outcome(direction)
        out.errors.append(Problem("", f"internal error ({type(exc).__name__})"))
        return out
    finally:
        _slots.release()


def _settle(task: asyncio.Future[Outcome]) -> None:
    """A conversion the page stopped waiting for: its end is noted, never raised."""
    if not task.cancelled():
        task.exception()


def _too_large(form: dict[str, str]) -> str | None:
    for name, label in (("message", "message"), ("expected", "expected Bundle"), ("fhir", "FHIR")):
        if len(form.get(name, "").encode("utf-8")) > MAX_TEXT:
            return f"the {label} is larger than {MAX_TEXT // 2**20} MiB"
    return None


def _page(
    request: Request, user: ConsoleUser, form: dict[str, str], **context: Any
) -> HTMLResponse:
    return render(
        request,
        "workbench.html",
        user=user,
        form=form,
        events=_EVENTS,
        max_mib=MAX_TEXT // 2**20,
        **context,
    )


@router.get("/workbench", response_class=HTMLResponse)
async def workbench(request: Request, user: WorkbenchUserDep) -> HTMLResponse:
    """The empty workbench."""
    return _page(request, user, {"direction": "to-fhir"}, result=None)


@router.post("/workbench", response_class=HTMLResponse)
async def convert(
    request: Request,
    form: Annotated[dict[str, str], Depends(_form)],
    user: CsrfDep,
    settings: SettingsDep,
) -> HTMLResponse:
    """Convert what was pasted; the use is audited, never the text."""
    direction = form.get("direction", "to-fhir")
    if direction not in _DIRECTIONS or form.get("event", "") not in _EVENTS:
        raise HTTPException(422, detail="direction must be to-fhir or to-hl7, event one listed")
    problem = _too_large(form)
    if problem is not None:
        await _audit(request, user, direction, "", "refused", problem)
        return _page(
            request, user, {"direction": direction}, result=None, refused=problem, status_code=413
        )
    try:
        mappings = await asyncio.to_thread(_mappings, request, settings)
    except EngineError as exc:
        await _audit(request, user, direction, "", "error", "the mappings did not load")
        return _page(request, user, form, result=None, refused=f"mappings: {exc}", status_code=503)
    if not _slots.acquire(blocking=False):
        await _audit(request, user, direction, "", "error", "busy")
        return _page(
            request,
            user,
            form,
            result=None,
            status_code=503,
            refused="the workbench is busy with other conversions: try again shortly",
        )
    work = asyncio.ensure_future(
        asyncio.to_thread(_convert, mappings, form, settings.default_charset)
    )
    work.add_done_callback(_settle)
    try:
        result = await asyncio.wait_for(asyncio.shield(work), TIMEOUT_S)
    except TimeoutError:
        await _audit(request, user, direction, "", "error", "took too long")
        return _page(
            request,
            user,
            form,
            result=None,
            status_code=503,
            refused=f"the conversion took longer than {TIMEOUT_S:.0f} s",
        )
    await _audit(request, user, direction, result.label, result.outcome)
    log.info("workbench", extra={"direction": direction, "outcome": result.outcome})
    return _page(request, user, form, result=result)


async def _audit(
    request: Request, user: ConsoleUser, direction: str, label: str, outcome: str, why: str = ""
) -> None:
    """The use, in the audit trail: which way and what type of message, never the text; a
    refusal (too large, busy, no mappings) with ``why``."""
    messages = getattr(getattr(request.app.state, "context", None), "messages", None)
    record = getattr(messages, "record_audit", None)
    if record is None:
        return
    what = "HL7v2 to FHIR" if direction == "to-fhir" else "FHIR to HL7v2"
    await asyncio.to_thread(
        record,
        action="workbench",
        actor=user.username,
        source="console",
        message_id=None,
        outcome=outcome,
        detail=f"{what}{f', {label}' if label else ''}{f'; {why}' if why else ''}",
        peer=user.peer or None,
    )
