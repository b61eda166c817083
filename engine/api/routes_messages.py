"""``/api/messages``: find and show messages (metadata), read one's payload, replay, resend,
mark handled.

Viewers search and show metadata, and may read a payload as received (``/raw``); only admins
replay, resend and mark handled (as in the console). Each payload read, replay, resend and mark
is recorded in the audit trail with the token's subject and the caller's address, refused ones
too (a 403 here is recorded before it is answered). Handlers are sync: the store is, and FastAPI
runs them in a worker thread.

A message id is 1 .. 2**63 - 1, the range of the store's BIGINT key. Anything else where an id
belongs — 0, -1, 2**63, 10**30, a word — is not an id at all and answers 422 before the store is
asked (a database driver raises on an integer it cannot bind); a valid id with no message answers
404. An unknown state answers 422 naming it and the valid ones; a state is read in any case
(``DEAD``), and ``type`` may carry the trigger as the list shows it (``ADT^A01``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, status

from engine.api.auth import Principal, Role, ViewerDep, current_principal
from engine.api.deps import MessagesDep, SettingsDep, peer_of
from engine.api.refusals import answer_refusals, caller_as
from engine.api.schemas import HandledMark, HandledNote, ReplayAccepted, ResendAccepted
from engine.store import (
    MessageLine,
    MessageQuery,
    MessageView,
    UnknownDestination,
    Who,
)
from engine.store.audit import search_detail

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/messages")

BIGINT_MAX = 2**63 - 1

MessageId = Annotated[int, Path(ge=1, le=BIGINT_MAX)]
HL7_MEDIA_TYPE = "x-application/hl7-v2+er7"
FHIR_MEDIA_TYPE = "application/fhir+json"
Header = Annotated[str | None, Query(max_length=227)]


def _audited(role: Role, action: str) -> Callable[..., Who]:
    """A dependency: the caller as an audit actor when they hold ``role``; otherwise the refusal
    is recorded and answered 403."""

    def dependency(
        message_id: MessageId,
        request: Request,
        messages: MessagesDep,
        principal: Annotated[Principal, Depends(current_principal)],
    ) -> Who:
        return caller_as(request, messages, principal, role, action, message_id)

    return dependency


def _when(value: datetime | None, zone: str) -> datetime | None:
    """A time without an offset is in the engine's time zone (``timezone`` setting)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=ZoneInfo(zone))


@router.get("", response_model=list[MessageLine])
def list_messages(
    request: Request,
    principal: ViewerDep,
    messages: MessagesDep,
    settings: SettingsDep,
    state: Annotated[str | None, Query(max_length=32)] = None,
    type: Annotated[str | None, Query(max_length=33)] = None,  # noqa: A002  (the query's name)
    trigger: Annotated[str | None, Query(max_length=16)] = None,
    sender: Header = None,
    mrn: Annotated[str | None, Query(max_length=255)] = None,
    control_id: Annotated[str | None, Query(max_length=199)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before: Annotated[int | None, Query(ge=1, le=BIGINT_MAX)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[MessageLine]:
    """Messages newest first, filtered, with why each is where it is (keyset paging: the next
    page is ``before`` = the last id of this one). The search is recorded in the audit trail
    (``search-messages``, the MRN asked for as its patient)."""
    try:  # the state in any case, and ADT^A01 as a type and trigger: MessageQuery reads them
        query = MessageQuery(
            state=state,
            message_type=type,
            trigger=trigger,
            sender=sender,
            mrn=mrn,
            control_id=control_id,
            since=_when(since, settings.timezone),
            until=_when(until, settings.timezone),
            before=before,
            limit=limit,
        )
    except ValueError as exc:
        raise HTTPException(422, detail=str(exc)) from None
    lines = messages.search(query)
    messages.record_audit(
        action="search-messages",
        actor=principal.subject,
        source="api",
        peer=peer_of(request),
        message_id=None,
        outcome="ok",
        detail=search_detail(query, len(lines)),
        patient_key=query.mrn,
        # not by MRN: one record per patient of the messages shown (at most ``limit``)
        messages_shown=[m.id for m in lines] if query.mrn is None else (),
    )
    return lines


@router.get("/{message_id}", response_model=MessageView)
def show_message(message_id: MessageId, principal: ViewerDep, messages: MessagesDep) -> MessageView:
    """One message with its deliveries, each with its attempts (when, outcome, HTTP status or
    error class, error, duration)."""
    view = messages.get(message_id)
    if view is None:
        raise HTTPException(404, detail=f"no message {message_id}")
    return view


@router.get("/{message_id}/raw")
def message_payload(
    message_id: MessageId,
    messages: MessagesDep,
    who: Annotated[Who, Depends(_audited(Role.VIEWER, "view-payload"))],
) -> Response:
    """The message's bytes exactly as they arrived (the view is audited): a FHIR resource as
    ``application/fhir+json``, an HL7 v2 message as ER7."""
    payload = messages.read_payload(message_id, who)
    if payload is None:
        raise HTTPException(404, detail=f"no message {message_id}")
    return Response(payload, media_type=_media_type(payload))


def _media_type(payload: bytes) -> str:
    """A stored message's media type, from its bytes: the store keeps FHIR resources as JSON
    (an object), and an HL7 v2 message starts with its MSH (or FHS, BHS) segment, never ``{``."""
    return FHIR_MEDIA_TYPE if payload[:1024].lstrip()[:1] == b"{" else HL7_MEDIA_TYPE


@router.post(
    "/{message_id}/replay", status_code=status.HTTP_202_ACCEPTED, response_model=ReplayAccepted
)
def replay_message(
    message_id: MessageId,
    messages: MessagesDep,
    who: Annotated[Who, Depends(_audited(Role.ADMIN, "replay"))],
    all_destinations: bool = False,
) -> ReplayAccepted:
    """Receive a stored message again, as a new message that goes through the whole flow, to
    the destinations the original was not delivered to (``?all_destinations=true``: to every
    route's); the original becomes ``replayed``."""
    with answer_refusals(f"no message {message_id}"):
        done = messages.replay_message(message_id, who, everywhere=all_destinations)
    log.info(
        "message replayed",
        extra={"message_id": message_id, "new_message_id": done.message_id, "by": who.actor},
    )
    return ReplayAccepted(message_id=done.message_id, replay_of=message_id)


@router.post(
    "/{message_id}/resend", status_code=status.HTTP_202_ACCEPTED, response_model=ResendAccepted
)
def resend_message(
    message_id: MessageId,
    messages: MessagesDep,
    who: Annotated[Who, Depends(_audited(Role.ADMIN, "resend"))],
    destination: Annotated[str | None, Query(max_length=128)] = None,
) -> ResendAccepted:
    """Queue the message's dead deliveries and those waiting for their patient again, or its
    delivery to one ``destination``."""
    with answer_refusals(f"no message {message_id}", UnknownDestination):
        done = messages.resend(message_id, who, destination)
    log.info(
        "message resent",
        extra={"message_id": message_id, "deliveries": len(done.queued), "by": who.actor},
    )
    return ResendAccepted.of(done)


@router.post("/{message_id}/handled", response_model=HandledMark)
def mark_handled(
    message_id: MessageId,
    messages: MessagesDep,
    who: Annotated[Who, Depends(_audited(Role.ADMIN, "mark-handled"))],
    body: HandledNote | None = None,
) -> HandledMark:
    """Record that someone dealt with an error, dead, unrouted or needs-patient message, with an
    optional ``note``; it keeps its state, and the console's list shows the mark. A message in
    another state, or marked already, answers 409 saying why."""
    with answer_refusals(f"no message {message_id}"):
        mark = messages.mark_handled(message_id, who, body.note if body is not None else None)
    log.info("message marked handled", extra={"message_id": message_id, "by": who.actor})
    return HandledMark.of(mark)
