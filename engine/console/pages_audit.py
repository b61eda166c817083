"""The console: the audit trail (admin; owner: audit).

``/console/audit`` lists the trail newest first, filtered by actor, action, patient (MRN, or
``AUTH|MRN``) and a date range in the practice's time zone (ENGINE_TIMEZONE), 50 a page with
keyset paging by the chain's seq (Older: ``before`` the page's last seq). Each reading is
recorded (``view-audit``: the filters, never the MRN's value); a user without the admin role
is refused and the refusal recorded. ``POST /console/audit/verify`` (CSRF) walks the hash chain
(engine/audit/chain.py) and shows whether it is intact or the first record that is not; the
check is recorded too. The chain's head and the anchor retention left are shown beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse

from engine.api.auth import Role
from engine.api.deps import SettingsDep
from engine.audit.chain import Verified
from engine.console.auth import ConsoleUser, CsrfDep, current_console_user
from engine.console.forms import SearchForm, form_time, keyset_cursor
from engine.console.pages_messages import local_time, store_of, who_of
from engine.console.render import render
from engine.store.audit import ACTIONS, AuditQuery, AuditSearchTimeout

__all__ = ["router"]

router = APIRouter()

PAGE = 50
Text = Annotated[str, Query(max_length=255)]


def _admin(
    request: Request, user: Annotated[ConsoleUser, Depends(current_console_user)]
) -> ConsoleUser:
    """Admins only; anyone else's attempt is recorded (``view-audit`` refused), then 403."""
    if not user.may(Role.ADMIN):
        from engine.console.sessions import forbidden

        who = who_of(user)
        store_of(request).record_audit(
            action="view-audit",
            actor=who.actor,
            source=who.source,
            peer=who.peer,
            message_id=None,
            outcome="refused",
            detail="requires the admin role",
        )
        raise forbidden(Role.ADMIN, user)
    return user


AuditAdminDep = Annotated[ConsoleUser, Depends(_admin)]


@dataclass(frozen=True)
class _Filters(SearchForm):
    """The filter form as typed (shown again as typed)."""

    actor: str = ""
    action: str = ""
    mrn: str = ""
    since: str = ""
    until: str = ""

    def query(self, zone: str, before: int | None) -> AuditQuery:
        """The store's query (``until`` a whole day: up to its end); ValueError names what is
        wrong."""
        return AuditQuery(
            actor=self.actor.strip() or None,
            action=self.action.strip() or None,
            mrn=self.mrn.strip() or None,
            since=form_time(self.since, zone, "from", times=False),
            until=form_time(self.until, zone, "to", end=True, times=False),
            before=before,
            limit=PAGE,
        )


def _page(
    request: Request,
    user: ConsoleUser,
    zone: str,
    filters: _Filters,
    before: str,
    *,
    verified: Verified | None = None,
) -> HTMLResponse:
    store = store_of(request)
    try:
        cursor = keyset_cursor(before, "a record's seq")
        query = filters.query(zone, cursor)
    except ValueError as exc:
        return _render(request, user, filters, [], error=str(exc), status_code=422)
    try:
        records = store.audit_page(query, who_of(user))
    except AuditSearchTimeout as exc:
        return _render(request, user, filters, [], error=str(exc), status_code=503)
    rows = [{"r": r, "at": local_time(r.at, zone)} for r in records]
    older = filters.link(before=records[-1].seq) if len(records) == PAGE else None
    return _render(
        request,
        user,
        filters,
        rows,
        older=older,
        newest=filters.link() if cursor is not None else None,
        head=store.audit_head(),
        verified=verified,
    )


def _render(
    request: Request,
    user: ConsoleUser,
    filters: _Filters,
    rows: list[dict[str, Any]],
    *,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    return render(
        request,
        "audit.html",
        user=user,
        status_code=status_code,
        filters=filters,
        rows=rows,
        actions=sorted(ACTIONS),
        **context,
    )


@router.get("/audit", response_class=HTMLResponse)
def audit_page(
    request: Request,
    user: AuditAdminDep,
    settings: SettingsDep,
    actor: Text = "",
    action: Annotated[str, Query(max_length=32)] = "",
    mrn: Text = "",
    since: Annotated[str, Query(max_length=10)] = "",
    until: Annotated[str, Query(max_length=10)] = "",
    before: Annotated[str, Query(max_length=20)] = "",
) -> HTMLResponse:
    """The filter form, a page of records, the chain's head and the verify button."""
    filters = _Filters(actor, action, mrn, since, until)
    return _page(request, user, settings.timezone, filters, before)


@router.post("/audit/verify", response_class=HTMLResponse)
def verify_chain(
    request: Request, user: AuditAdminDep, checked: CsrfDep, settings: SettingsDep
) -> HTMLResponse:
    """Walk the chain now; the first page of the trail with the result above it."""
    verified = store_of(request).verify_audit(who_of(user))
    return _page(request, user, settings.timezone, _Filters(), "", verified=verified)
