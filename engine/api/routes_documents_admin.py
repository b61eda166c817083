"""``/api/documents``: the operator's documents — list (``?state=needs-patient``), show, match a
document to its patient, resend it.

Viewers list and show (metadata, never bytes); admins and integrations match (an EHR's own
patient matching may call it); admins resend. A document's metadata names a patient, so every
list, show, match and resend is recorded in the audit trail with the token's subject and the
caller's address, refusals too (a 403 is recorded before it is answered). Uploading a document
is ``POST /documents`` (engine/api/routes_documents.py). Handlers are sync: the store is.

A document id is 1 .. 2**63 - 1 (422 otherwise, before the store is asked); an unknown one
answers 404; a match or resend the document's state does not allow answers 409 with the reason,
an identifier that cannot be an MRN 422.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Protocol, runtime_checkable

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from pydantic import BaseModel, Field

from engine.api.auth import Principal, Role, current_principal
from engine.api.deps import MessagesDep, peer_of
from engine.api.ports import AuditPort
from engine.api.refusals import answer_refusals, refuse_role
from engine.api.schemas import ResendAccepted
from engine.store import (
    DocumentLine,
    DocumentMatched,
    DocumentQuery,
    DocumentView,
    ResendOutcome,
    UnknownDestination,
    Who,
)
from engine.store.operator import InvalidIdentifier

__all__ = ["DocumentsPort", "MatchRequest", "router"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/documents")

BIGINT_MAX = 2**63 - 1
DocumentId = Annotated[int, Path(ge=1, le=BIGINT_MAX)]


@runtime_checkable
class DocumentsPort(AuditPort, Protocol):
    """What these endpoints need of the store (``SqlMessageStore`` is one)."""

    def list_documents(self, query: DocumentQuery, who: Who) -> list[DocumentLine]: ...

    def show_document(self, document_id: int, who: Who) -> DocumentView | None: ...

    def match_document(
        self, document_id: int, mrn: str, authority: str | None = None, *, who: Who
    ) -> DocumentMatched: ...

    def resend_document(
        self, document_id: int, who: Who, destination: str | None = None
    ) -> ResendOutcome: ...


def _documents(messages: MessagesDep) -> DocumentsPort:
    """The store as the documents' port (503 when the engine runs without one that has them)."""
    if not isinstance(messages, DocumentsPort):
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail="no document store")
    return messages


DocumentsDep = Annotated[DocumentsPort, Depends(_documents)]


def _caller(
    action: str, *roles: Role, document: bool = True
) -> Callable[..., tuple[Who, DocumentsPort]]:
    """A dependency: the caller as an audit actor when they hold one of ``roles``; otherwise the
    refusal is recorded and answered 403."""

    def dependency(
        request: Request,
        documents: DocumentsDep,
        principal: Annotated[Principal, Depends(current_principal)],
    ) -> tuple[Who, DocumentsPort]:
        who = Who(principal.subject, "api", peer_of(request))
        if not any(principal.may(role) for role in roles):
            needed = " or ".join(role.value for role in roles)
            subject = request.path_params.get("document_id") if document else None
            refuse_role(
                documents, who, action, needed, subject=f"document {subject}: " if subject else ""
            )
        return who, documents

    return dependency


class MatchRequest(BaseModel):
    """The patient a document is for, as the EHR knows them."""

    mrn: str = Field(min_length=1, max_length=64)
    #: the MRN's assigning authority; the document's own when absent
    authority: str | None = Field(default=None, max_length=64)


@router.get("", response_model=list[DocumentLine])
def list_documents(
    caller: Annotated[
        tuple[Who, DocumentsPort], Depends(_caller("list-documents", Role.VIEWER, document=False))
    ],
    state: Annotated[str | None, Query(max_length=32)] = None,
    mrn: Annotated[str | None, Query(max_length=130)] = None,
    type: Annotated[str | None, Query(max_length=64)] = None,  # noqa: A002  (the query's name)
    before: Annotated[int | None, Query(ge=1, le=BIGINT_MAX)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[DocumentLine]:
    """Documents newest first, with their message's state and the destinations waiting for
    the patient (keyset paging: ``before`` = the last id of this page). Audited."""
    who, documents = caller
    try:
        query = DocumentQuery(state=state, mrn=mrn, document_type=type, before=before, limit=limit)
    except ValueError as exc:
        raise HTTPException(422, detail=str(exc)) from None
    return documents.list_documents(query, who)


@router.get("/{document_id}", response_model=DocumentView)
def show_document(
    document_id: DocumentId,
    caller: Annotated[tuple[Who, DocumentsPort], Depends(_caller("view-document", Role.VIEWER))],
) -> DocumentView:
    """One document's metadata, SHA-256 and deliveries (never its bytes). Audited."""
    who, documents = caller
    view = documents.show_document(document_id, who)
    if view is None:
        raise HTTPException(404, detail=f"no document {document_id}")
    return view


@router.post(
    "/{document_id}/match", status_code=status.HTTP_202_ACCEPTED, response_model=DocumentMatched
)
def match_document(
    document_id: DocumentId,
    body: MatchRequest,
    caller: Annotated[
        tuple[Who, DocumentsPort],
        Depends(_caller("match-document", Role.ADMIN, Role.INTEGRATION)),
    ],
) -> DocumentMatched:
    """Record the document's patient and send it again with the new metadata, to the
    destinations that have not taken it (a new message, ``replay_of`` the old one)."""
    who, documents = caller
    with answer_refusals(f"no document {document_id}", InvalidIdentifier):
        done = documents.match_document(document_id, body.mrn, body.authority, who=who)
    log.info(
        "document matched",
        extra={"document_id": document_id, "message_id": done.message_id, "by": who.actor},
    )
    return done


@router.post(
    "/{document_id}/resend", status_code=status.HTTP_202_ACCEPTED, response_model=ResendAccepted
)
def resend_document(
    document_id: DocumentId,
    caller: Annotated[tuple[Who, DocumentsPort], Depends(_caller("resend", Role.ADMIN))],
    destination: Annotated[str | None, Query(max_length=128)] = None,
) -> ResendAccepted:
    """Queue the document's deliveries that failed or wait for its patient again (the EHR knows
    the patient now), or its delivery to one ``destination``."""
    who, documents = caller
    with answer_refusals(f"no document {document_id}", UnknownDestination):
        done = documents.resend_document(document_id, who, destination)
    log.info(
        "document resent",
        extra={"document_id": document_id, "deliveries": len(done.queued), "by": who.actor},
    )
    return ResendAccepted.of(done)
