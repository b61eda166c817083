"""The console: documents: upload, waiting for a patient, match (owner: front-office pages).

``/console/documents``: the front desk uploads a scan (drag and drop, or a plain file field:
the form works without script), sees the documents that wait for their patient (a destination
did not know the MRN they came with) and matches each to the right MRN, and sees the recent
documents with the state of each delivery. ``/console/documents/{id}``: one document's metadata
and deliveries.

The upload goes through the intake ``POST /documents`` uses, by the same streaming read of the
multipart body (:func:`engine.api.routes_documents.receive_upload`): the same size cap (read
stops past ENGINE_MAX_DOCUMENT_BYTES), the type told by the bytes' magic, the metadata checked
against the site's document type table, every refusal recorded with its reason. Its channel is
``console``, its sender the user.

CSRF: the upload's body is a document of up to 25 MiB read as it arrives, so its token cannot be
read the way ``CsrfDep`` reads a form's (that parses the whole body first, and the stream is then
spent). The form puts ``csrf_token`` first; the streaming read checks it when the file part
begins, before a byte of the document is spooled, against the session's token (or the
``X-CSRF-Token`` header), and answers 403 otherwise. The match form takes ``CsrfDep``.

Front desk and viewers see; front desk (and admins) upload and match. Each list, view, upload
and match is recorded in the audit trail (source ``console``): documents name patients.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path as FilePath
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Form, HTTPException, Path, Request
from fastapi.responses import HTMLResponse

from engine.api.auth import Role
from engine.api.deps import MetricsDep
from engine.api.routes_documents import receive_upload
from engine.console.auth import ConsoleUser, CsrfDep
from engine.console.pages_worklist import FrontDeskDep, FrontDeskViewerDep, store_of, who_of
from engine.console.render import render
from engine.documents.intake import DocumentIntake, DocumentRefused, StoreUnavailable
from engine.store import ActionRefused, DocumentQuery
from engine.store.operator import InvalidIdentifier
from engine.store.worklist import desk_documents

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter()

BIGINT_MAX = 2**63 - 1
DocumentId = Annotated[int, Path(ge=1, le=BIGINT_MAX)]
#: the upload form's field besides those POST /documents takes
_PAGE_FIELDS = frozenset({"csrf_token"})
#: how many of each list the page shows
_WAITING = 100
_RECENT = 30
#: a refusal's HTTP status, as POST /documents answers it
_STATUS = {"size": 413, "type": 415, "pdf": 422, "metadata": 422}


class _CsrfRefused(Exception):
    """The upload's CSRF token is missing or not the session's."""


@dataclass(frozen=True)
class _Notice:
    """What the last action did, shown above the lists."""

    ok: bool
    text: str


def _intake(request: Request) -> DocumentIntake | None:
    intake = getattr(request.app.state, "documents", None)
    return intake if isinstance(intake, DocumentIntake) else None


@functools.lru_cache(maxsize=4)
def _displays(site_dir: FilePath | None) -> dict[str, str]:
    """Each document type's name people read, from the table (built-in with the site's over)."""
    from engine.mappings.document_types import load_document_types

    return {code: t.display for code, t in load_document_types(site_dir).types.items()}


def _type_choices(request: Request) -> list[tuple[str, str]] | None:
    """The document types the intake takes, as (code, name); None: any code (no table)."""
    intake = _intake(request)
    codes = intake.document_types if intake is not None else None  # a reload swaps them
    if intake is None or codes is None:
        return None
    names = intake.type_names
    if not names:  # an intake given the codes alone: the names from the files
        context = getattr(request.app.state, "context", None)
        site = getattr(getattr(context, "settings", None), "mappings_dir", None)
        try:
            names = _displays(site)
        except Exception:  # the intake has its table; names are a nicety
            names = {}
    return sorted(((c, names.get(c, c)) for c in codes), key=lambda t: t[1])


def _zone(request: Request) -> ZoneInfo:
    context = getattr(request.app.state, "context", None)
    return ZoneInfo(getattr(getattr(context, "settings", None), "timezone", "America/New_York"))


def _page(
    request: Request,
    user: ConsoleUser,
    *,
    notice: _Notice | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    """The documents page: the upload form, those waiting for a patient, the recent ones; the
    list recorded in the audit trail (blocking)."""
    store = store_of(request)
    intake = _intake(request)
    zone = _zone(request)
    waiting: list[Any] = []
    recent: list[Any] = []
    if store is None:
        notice, status_code = _Notice(False, "no document store: documents need engine serve"), 503
    else:
        with store.db_engine.connect() as conn:
            waiting = desk_documents(conn, DocumentQuery(state="needs-patient", limit=_WAITING))
            recent = desk_documents(conn, DocumentQuery(limit=_RECENT))
        store.record_audit(
            action="list-documents",
            actor=user.username,
            source="console",
            message_id=None,
            outcome="ok",
            detail=f"{len(waiting)} waiting for a patient and {len(recent)} recent shown",
            peer=user.peer or None,
            # one record per patient shown, keyed as its message is (``authority|mrn``)
            patients=[f"{d.patient_authority}|{d.patient_mrn}" for d in (*waiting, *recent)],
        )

    def local(at: datetime) -> str:
        return at.astimezone(zone).strftime("%Y-%m-%d %H:%M")

    return render(
        request,
        "documents.html",
        user=user,
        status_code=status_code,
        notice=notice,
        waiting=waiting,
        recent=recent,
        local=local,
        types=_type_choices(request),
        today=intake.today() if intake is not None else datetime.now(zone).date().isoformat(),
        max_mib=f"{intake.max_bytes / (1024 * 1024):.0f}" if intake is not None else "",
        can_upload=intake is not None and user.may(Role.FRONT_DESK),
        can_act=user.may(Role.FRONT_DESK),
    )


@router.get("/documents", response_class=HTMLResponse)
def documents_page(request: Request, user: FrontDeskViewerDep) -> HTMLResponse:
    """Upload, the documents waiting for a patient, the recent documents (audited)."""
    return _page(request, user)


@router.post("/documents/upload", response_class=HTMLResponse)
async def upload(request: Request, user: FrontDeskDep, metrics: MetricsDep) -> HTMLResponse:
    """One document uploaded from the page, through the intake POST /documents uses."""
    intake = _intake(request)
    store = store_of(request)
    if intake is None or store is None:
        notice = _Notice(False, "documents are not taken here (no intake configured)")
        return await asyncio.to_thread(_page, request, user, notice=notice, status_code=503)

    def before_file(fields: dict[str, str]) -> None:
        token = request.headers.get("x-csrf-token") or fields.get("csrf_token", "")
        if not user.csrf_token or not hmac.compare_digest(
            token.encode("utf-8", "replace"), user.csrf_token.encode()
        ):
            raise _CsrfRefused

    who: dict[str, Any] = {"channel": "console", "sender": user.username, "peer": user.peer}
    try:
        accepted = await receive_upload(
            request, intake, who, metrics, extra_fields=_PAGE_FIELDS, before_file=before_file
        )
    except _CsrfRefused:
        raise HTTPException(403, detail="CSRF token missing or wrong") from None
    except DocumentRefused as refused:
        await asyncio.to_thread(
            store.record_audit,
            action="upload-document",
            actor=user.username,
            source="console",
            message_id=refused.message_id,
            outcome="refused",
            detail=f"refused ({refused.kind})",
            peer=user.peer or None,
        )
        notice = _Notice(False, f"Not stored: {refused}")
        return await asyncio.to_thread(
            _page, request, user, notice=notice, status_code=_STATUS.get(refused.kind, 422)
        )
    except StoreUnavailable as exc:
        notice = _Notice(False, f"Not stored: {exc}")
        return await asyncio.to_thread(_page, request, user, notice=notice, status_code=503)
    await asyncio.to_thread(
        store.record_audit,
        action="upload-document",
        actor=user.username,
        source="console",
        message_id=accepted.message_id,
        outcome="ok",
        detail=f"document {accepted.document_id}" + (" (duplicate)" if accepted.duplicate else ""),
        peer=user.peer or None,
    )
    if accepted.duplicate:
        text = (
            f"Already stored: the same file for this patient is document "
            f"{accepted.document_id}; nothing new was kept"
        )
    else:
        text = f"Stored as document {accepted.document_id} ({accepted.media_type}); on its way"
    return await asyncio.to_thread(
        _page,
        request,
        user,
        notice=_Notice(True, text),
        status_code=200 if accepted.duplicate else 201,
    )


@router.get("/documents/{document_id}", response_class=HTMLResponse)
def document_page(
    request: Request, document_id: DocumentId, user: FrontDeskViewerDep
) -> HTMLResponse:
    """One document's metadata and deliveries, never its bytes (audited)."""
    store = store_of(request)
    if store is None:
        return _page(request, user)
    view = store.show_document(document_id, who_of(user))
    zone = _zone(request)
    return render(
        request,
        "document.html",
        user=user,
        status_code=200 if view is not None else 404,
        document_id=document_id,
        doc=view,
        local=lambda at: at.astimezone(zone).strftime("%Y-%m-%d %H:%M"),
        can_act=user.may(Role.FRONT_DESK),
    )


@router.post("/documents/{document_id}/match", response_class=HTMLResponse)
def match(
    request: Request,
    document_id: DocumentId,
    user: CsrfDep,
    actor: FrontDeskDep,
    mrn: Annotated[str, Form(max_length=128)],
    authority: Annotated[str, Form(max_length=128)] = "",
) -> HTMLResponse:
    """File a waiting document under the patient ``mrn`` names, as ``engine documents match``
    does: the document sent again with it to the destinations that did not take it."""
    store = store_of(request)
    if store is None:
        return _page(request, user)
    status_code = 200
    try:
        done = store.match_document(
            document_id, mrn.strip(), authority.strip() or None, who=who_of(user)
        )
    except KeyError:
        notice, status_code = _Notice(False, f"No document {document_id}"), 404
    except InvalidIdentifier as exc:
        notice, status_code = _Notice(False, f"Document {document_id} not matched: {exc}"), 422
    except ActionRefused as exc:
        notice, status_code = _Notice(False, f"Document {document_id} not matched: {exc}"), 409
    else:
        log.info(
            "document matched",
            extra={"document_id": document_id, "message_id": done.message_id, "by": user.username},
        )
        notice = _Notice(
            True,
            f"Document {document_id} matched: sent again as message {done.message_id} to "
            f"{', '.join(done.resent) or 'its destinations'}",
        )
    return _page(request, user, notice=notice, status_code=status_code)
