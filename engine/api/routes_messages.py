"""``/api/messages``: list, show and replay stored messages (metadata only, never payloads).

Viewers read; only admins replay, and each replay is logged with who asked (an audit trail of ids,
never content). Handlers are sync: the store is, and FastAPI runs them in a worker thread.

A message id is 1 .. 2**63 - 1, the range of the store's BIGINT key. Anything else where an id
belongs — 0, -1, 2**63, 10**30, a word — is not an id at all and answers 422 before the store is
asked (a database driver raises on an integer it cannot bind); a valid id with no message answers
404.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, status

from engine.api.auth import AdminDep, ViewerDep
from engine.api.deps import MessagesDep
from engine.api.schemas import ReplayAccepted
from engine.store import MessageSummary, MessageView

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/messages")

BIGINT_MAX = 2**63 - 1

MessageId = Annotated[int, Path(ge=1, le=BIGINT_MAX)]


@router.get("", response_model=list[MessageSummary])
def list_messages(
    principal: ViewerDep,
    messages: MessagesDep,
    state: Annotated[str | None, Query(max_length=32, pattern=r"^[a-z_]+$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[MessageView]:
    """The newest messages first, optionally only those in one state (each line the view's
    summary: ``response_model`` leaves out the rest)."""
    return messages.list(state=state, limit=limit)


@router.get("/{message_id}", response_model=MessageView)
def show_message(message_id: MessageId, principal: ViewerDep, messages: MessagesDep) -> MessageView:
    """One message with its deliveries."""
    view = messages.get(message_id)
    if view is None:
        raise HTTPException(404, detail=f"no message {message_id}")
    return view


@router.post(
    "/{message_id}/replay", status_code=status.HTTP_202_ACCEPTED, response_model=ReplayAccepted
)
def replay_message(
    message_id: MessageId, principal: AdminDep, messages: MessagesDep
) -> ReplayAccepted:
    """Receive a stored message again, as a new message that goes through the whole flow."""
    try:
        new_id = messages.replay(message_id)
    except KeyError:
        raise HTTPException(404, detail=f"no message {message_id}") from None
    log.info(
        "message replayed",
        extra={"message_id": message_id, "new_message_id": new_id, "by": principal.subject},
    )
    return ReplayAccepted(message_id=new_id, replay_of=message_id)
