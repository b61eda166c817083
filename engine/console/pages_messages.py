"""The console: message search and one message (owner: ops pages).

``/console/messages`` searches by MRN (``AUTH|MRN``, or a bare MRN of any authority), control id,
type and trigger (``ADT^A04``), sender (MSH-3, MSH-4 or ``MSH-3^MSH-4``), state and a received
date range (in the practice's time zone, ENGINE_TIMEZONE), newest first, 50 a page with keyset
paging both ways (Older: ``before`` the page's last id; Newer: the store finds the ``before``
that shows the page above), on the indexed queries of engine/store/search.py. Each search is
recorded in the audit trail (``search-messages``, the MRN as its patient when one was given):
the lines name what failed for whom.

``/console/messages/{id}`` shows one message: the raw ER7 with each segment and field named
(engine/console/er7.py), the FHIR each destination got, the ACK sent, every delivery with its
attempts and last error, and the operator's "handled" mark. Opening it is recorded
(``view-message``); the bytes as received download from ``/raw`` (``view-payload``). Actions
(admin, CSRF): reprocess (a replay: received again, routed and mapped with today's files),
resend to one destination, mark handled. Each is recorded by the store in the transaction that
does it, a refusal too; a user without the role is refused and recorded here.

Viewers (and admins) see these pages: they show payloads, as ``GET /api/messages/{id}/raw``
does for a viewer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import orjson
from fastapi import APIRouter, Depends, Form, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from engine.api.auth import Role
from engine.api.deps import SettingsDep
from engine.console.auth import ConsoleUser, CsrfDep, require_console
from engine.console.er7 import name_segments, rebuilt_ack
from engine.console.forms import BIGINT_MAX, SearchForm, form_time, keyset_cursor
from engine.console.render import render
from engine.settings import Settings
from engine.store import (
    MESSAGE_STATES,
    ActionRefused,
    MessageQuery,
    SqlMessageStore,
    UnknownDestination,
    Who,
)
from engine.store.console_stats import HANDLEABLE_STATES, MessageDetail

__all__ = ["ViewerUserDep", "local_time", "router", "store_of", "who_of"]

log = logging.getLogger(__name__)

router = APIRouter()

PAGE = 50
MessageId = Annotated[int, Path(ge=1, le=BIGINT_MAX)]
Text = Annotated[str, Query(max_length=255)]
ViewerUserDep = Annotated[ConsoleUser, Depends(require_console(Role.VIEWER))]
#: how much of a payload the page pretty-prints (JSON) before it shows the text as it is
_PRETTY_BYTES = 256 * 1024


def store_of(request: Request) -> SqlMessageStore:
    """The engine's store; 503 when the app runs without one (the API alone, on fakes)."""
    context = getattr(request.app.state, "context", None)
    store = getattr(context, "messages", None)
    if not isinstance(store, SqlMessageStore):
        raise HTTPException(503, detail="the console needs the engine's message store")
    return store


def who_of(user: ConsoleUser) -> Who:
    """The user as the store's audit actor, from the console."""
    return Who(user.username, "console", user.peer or None)


def local_time(value: datetime | None, zone: str) -> str:
    """A stored (UTC) time as the practice reads it: ``2026-12-03 09:15:02 EST``."""
    if value is None:
        return ""
    return value.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S %Z")


@dataclass(frozen=True)
class _Filters(SearchForm):
    """The search form as typed (shown again as typed)."""

    mrn: str = ""
    control_id: str = ""
    type: str = ""
    trigger: str = ""
    sender: str = ""
    state: str = ""
    since: str = ""
    until: str = ""

    def query(self, zone: str, before: int | None) -> MessageQuery:
        """The store's query; ValueError names what is wrong."""
        return MessageQuery(
            state=self.state.strip() or None,
            message_type=self.type.strip() or None,
            trigger=self.trigger.strip() or None,
            sender=self.sender.strip() or None,
            mrn=self.mrn.strip() or None,
            control_id=self.control_id.strip() or None,
            since=form_time(self.since, zone, "from"),
            until=form_time(self.until, zone, "to", end=True),
            before=before,
            limit=PAGE,
        )

    def describe(self) -> str:
        """The filters used, for the audit trail: names, never the MRN's value (it is the
        record's patient)."""
        used = [
            f"{name} {getattr(self, name).strip()}"
            for name in ("control_id", "type", "trigger", "sender", "state", "since", "until")
            if getattr(self, name).strip()
        ]
        if self.mrn.strip():
            used.insert(0, "one patient")
        return ", ".join(used) or "no filter"


@router.get("/messages", response_class=HTMLResponse)
def messages_page(
    request: Request,
    user: ViewerUserDep,
    settings: SettingsDep,
    mrn: Text = "",
    control_id: Text = "",
    type: Text = "",  # noqa: A002  (the form's name, as the API's)
    trigger: Text = "",
    sender: Text = "",
    state: Text = "",
    since: Text = "",
    until: Text = "",
    before: Annotated[str, Query(max_length=20)] = "",
) -> HTMLResponse:
    """The search form and a page of results."""
    store = store_of(request)
    filters = _Filters(mrn, control_id, type, trigger, sender, state, since, until)
    zone = settings.timezone
    try:
        cursor = keyset_cursor(before, "a message id")
        query = filters.query(zone, cursor)
    except ValueError as exc:
        return _list_page(request, user, filters, error=str(exc), status_code=422)
    lines = store.search(query)
    marks = store.handled_marks([m.id for m in lines])
    newer: str | None = None
    if cursor is not None and lines:
        back = store.newer_cursor(query, lines[0].id)
        newer = filters.link(before=back)
    elif cursor is not None:
        newer = filters.link()
    older = filters.link(before=lines[-1].id) if len(lines) == PAGE else None
    who = who_of(user)
    store.record_audit(
        action="search-messages",
        actor=who.actor,
        source=who.source,
        peer=who.peer,
        message_id=None,
        outcome="ok",
        detail=f"{len(lines)} shown; {filters.describe()}",
        patient_key=query.mrn,
        # not by MRN: one record per patient of the messages shown (at most a page of them)
        messages_shown=[m.id for m in lines] if query.mrn is None else (),
    )
    rows = [
        {
            "line": m,
            "received": local_time(m.received_at, zone),
            "handled": marks.get(m.id),
        }
        for m in lines
    ]
    return _list_page(request, user, filters, rows=rows, newer=newer, older=older)


def _list_page(
    request: Request,
    user: ConsoleUser,
    filters: _Filters,
    *,
    rows: list[dict[str, Any]] | None = None,
    newer: str | None = None,
    older: str | None = None,
    error: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    return render(
        request,
        "messages.html",
        user=user,
        status_code=status_code,
        filters=filters,
        states=MESSAGE_STATES,
        rows=rows or [],
        newer=newer,
        older=older,
        error=error,
    )


# -- one message -------------------------------------------------------------------------------


def _text(data: bytes) -> str:
    """Bytes as text for the page (ER7 segments on lines of their own)."""
    return data.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")


def _pretty(data: bytes, content_type: str) -> str:
    """JSON indented; anything else as text."""
    if "json" in content_type or data[:1] in (b"{", b"["):
        if len(data) <= _PRETTY_BYTES:
            try:
                return orjson.dumps(orjson.loads(data), option=orjson.OPT_INDENT_2).decode()
            except orjson.JSONDecodeError:
                pass
    return _text(data)


def _ack(detail: MessageDetail, settings: Settings) -> tuple[str | None, str]:
    if detail.kind != "hl7v2":
        return None, f"a {detail.kind} message: no HL7 ACK (the HTTP answer said it was taken)"
    if detail.channel in ("replay", "replay-all"):
        return None, "a replay: received again inside the engine, acknowledged to no one"
    ack, note = rebuilt_ack(
        detail.raw,
        message_id=detail.id,
        received_at=detail.received_at,
        identity=(settings.application_name, settings.facility_name),
        refused_at_receipt=detail.state == "error" and not detail.accepted,
        default_charset=settings.default_charset,
    )
    return (_text(ack) if ack is not None else None), note


def _message_page(
    request: Request,
    user: ConsoleUser,
    settings: Settings,
    detail: MessageDetail,
    *,
    notice: str | None = None,
    error: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    zone = settings.timezone
    ack, ack_note = _ack(detail, settings)
    deliveries = [
        {
            "d": d,
            "created": local_time(d.created_at, zone),
            "delivered": local_time(d.delivered_at, zone),
            "next": local_time(d.next_attempt_at, zone) if d.state == "pending" else "",
            "payload": _pretty(d.payload, d.content_type),
            "cut": d.payload_size > len(d.payload),
            "attempts": [
                {
                    "a": a,
                    "when": local_time(a.at, zone),
                    "took": "" if a.duration_ms is None else f"{a.duration_ms} ms",
                }
                for a in d.history
            ],
            "unlisted": max(0, d.attempts - len(d.history)),
        }
        for d in detail.deliveries
    ]
    return render(
        request,
        "message.html",
        user=user,
        status_code=status_code,
        m=detail,
        received=local_time(detail.received_at, zone),
        handled_at=local_time(detail.handled.handled_at, zone) if detail.handled else "",
        segments=name_segments(detail.raw, default_charset=settings.default_charset)
        if detail.kind == "hl7v2"
        else None,
        raw=_pretty(detail.raw, "") if detail.kind != "hl7v2" else _text(detail.raw),
        ack=ack,
        ack_note=ack_note,
        deliveries=deliveries,
        may_act=user.may(Role.ADMIN),
        # the resend's choice starts on a destination that failed, if one did
        failed=next(
            (d.destination for d in detail.deliveries if d.state in ("dead", "needs-patient")),
            None,
        ),
        handleable=detail.state in HANDLEABLE_STATES and detail.handled is None,
        notice=notice,
        error=error,
    )


def _not_found(request: Request, user: ConsoleUser, message_id: int) -> HTMLResponse:
    return render(
        request,
        "message.html",
        user=user,
        status_code=404,
        m=None,
        error=f"no message {message_id}",
    )


_DONE = {
    "reprocessed": "Reprocessed: this is the new message, received again from message {of}.",
    "resent": "Resent: a new delivery is queued.",
    "handled": "Marked handled.",
}


@router.get("/messages/{message_id}", response_class=HTMLResponse)
def message_page(
    request: Request,
    message_id: MessageId,
    user: ViewerUserDep,
    settings: SettingsDep,
    done: Annotated[str, Query(max_length=16)] = "",
    of: Annotated[int | None, Query(ge=1, le=BIGINT_MAX)] = None,
) -> HTMLResponse:
    """One message in full (the view is audited)."""
    store = store_of(request)
    detail = store.message_detail(message_id, who_of(user))
    if detail is None:
        return _not_found(request, user, message_id)
    notice = _DONE[done].format(of=of or "?") if done in _DONE else None
    return _message_page(request, user, settings, detail, notice=notice)


@router.get("/messages/{message_id}/raw")
def message_raw(request: Request, message_id: MessageId, user: ViewerUserDep) -> Response:
    """The bytes exactly as they arrived, as a download (audited ``view-payload``)."""
    payload = store_of(request).read_payload(message_id, who_of(user))
    if payload is None:
        raise HTTPException(404, detail=f"no message {message_id}")
    return Response(
        payload,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="message-{message_id}.hl7"'},
    )


def _admin(store: SqlMessageStore, user: ConsoleUser, action: str, message_id: int) -> Who:
    """The user as actor when an admin; otherwise the refusal recorded, then 403."""
    who = who_of(user)
    if not user.may(Role.ADMIN):
        store.record_audit(
            action=action,
            actor=who.actor,
            source=who.source,
            peer=who.peer,
            message_id=message_id,
            outcome="refused",
            detail="requires the admin role",
        )
        from engine.console.sessions import forbidden

        raise forbidden(Role.ADMIN, user)
    return who


def _refused(
    request: Request,
    user: ConsoleUser,
    settings: Settings,
    store: SqlMessageStore,
    message_id: int,
    exc: Exception,
) -> HTMLResponse:
    """The message page again, saying why the action did not happen (the store recorded it)."""
    detail = store.message_detail(message_id, who_of(user))
    if detail is None:
        return _not_found(request, user, message_id)
    status = 422 if isinstance(exc, UnknownDestination) else 409
    return _message_page(request, user, settings, detail, error=str(exc), status_code=status)


def _done(message_id: int, done: str, of: int | None = None) -> RedirectResponse:
    tail = f"&of={of}" if of is not None else ""
    return RedirectResponse(f"/console/messages/{message_id}?done={done}{tail}", status_code=303)


@router.post("/messages/{message_id}/reprocess", response_model=None)
def reprocess(
    request: Request, message_id: MessageId, user: CsrfDep, settings: SettingsDep
) -> Response:
    """Receive the message again (a replay): routed and mapped with today's files, to the
    destinations it did not reach; the original becomes ``replayed``."""
    store = store_of(request)
    who = _admin(store, user, "replay", message_id)
    try:
        done = store.replay_message(message_id, who)
    except KeyError:
        return _not_found(request, user, message_id)
    except ActionRefused as exc:
        return _refused(request, user, settings, store, message_id, exc)
    log.info(
        "message reprocessed from the console",
        extra={"message_id": message_id, "new_message_id": done.message_id, "by": who.actor},
    )
    return _done(done.message_id, "reprocessed", of=message_id)


@router.post("/messages/{message_id}/resend", response_model=None)
def resend(
    request: Request,
    message_id: MessageId,
    user: CsrfDep,
    settings: SettingsDep,
    destination: Annotated[str, Form(min_length=1, max_length=128)],
) -> Response:
    """Send the message's payload for one destination again (even one delivered: asked for)."""
    store = store_of(request)
    who = _admin(store, user, "resend", message_id)
    try:
        outcome = store.resend(message_id, who, destination)
    except KeyError:
        return _not_found(request, user, message_id)
    except ActionRefused as exc:
        return _refused(request, user, settings, store, message_id, exc)
    log.info(
        "message resent from the console",
        extra={"message_id": message_id, "deliveries": len(outcome.queued), "by": who.actor},
    )
    if not outcome.queued:  # already queued: nothing made, and the page says why
        detail = store.message_detail(message_id, who)
        if detail is None:
            return _not_found(request, user, message_id)
        return _message_page(request, user, settings, detail, notice=outcome.note)
    return _done(message_id, "resent")


@router.post("/messages/{message_id}/handled", response_model=None)
def mark_handled(
    request: Request,
    message_id: MessageId,
    user: CsrfDep,
    settings: SettingsDep,
    note: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    """Record that an operator has dealt with this error or dead message."""
    store = store_of(request)
    who = _admin(store, user, "mark-handled", message_id)
    try:
        store.mark_handled(message_id, who, note)
    except KeyError:
        return _not_found(request, user, message_id)
    except ActionRefused as exc:
        return _refused(request, user, settings, store, message_id, exc)
    return _done(message_id, "handled")
