"""``/api/audit``: the audit trail for admins — read it (filters, keyset paging) and verify its
hash chain. Both are recorded in the trail itself (``view-audit``), and so is a caller without
the admin role, before the 403.

``GET /api/audit?actor=&action=&mrn=&since=&until=&before=&limit=``: records newest first; the
next page is ``before`` = the last ``seq`` of this one. ``GET /api/audit/verify``: the chain
walked from its anchor (engine/audit/chain.py): ``ok``, how many verified, the head's seq and
hash, or the first broken record and what is wrong with it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Protocol, runtime_checkable
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel

from engine.api.auth import Principal, Role, current_principal
from engine.api.deps import MessagesDep, SettingsDep, peer_of
from engine.api.refusals import refuse_role
from engine.audit.chain import ChainRecord, Verified
from engine.store import Who
from engine.store.audit import AuditQuery, AuditSearchTimeout

__all__ = ["AuditRecordOut", "AuditVerifyOut", "router"]

router = APIRouter(prefix="/api/audit", tags=["audit"])

BIGINT_MAX = 2**63 - 1


@runtime_checkable
class AuditTrailPort(Protocol):
    """What the endpoints need of the store (``SqlMessageStore`` is one)."""

    def audit_page(
        self, query: AuditQuery, who: Who, *, message_id: int | None = None
    ) -> list[ChainRecord]: ...

    def verify_audit(self, who: Who | None = None) -> Verified: ...


class AuditRecordOut(BaseModel):
    """One record of the trail, with its place in the hash chain."""

    seq: int
    id: int
    at: datetime
    actor: str
    source: str
    action: str
    message_id: int | None
    patient_key: str | None
    outcome: str
    detail: str | None
    peer: str | None
    prev_hash: str
    hash: str


class AuditVerifyOut(BaseModel):
    """The chain checked: intact with ``count`` records, or the first problem."""

    ok: bool
    count: int
    head_seq: int
    head_hash: str
    problem_id: int | None
    problem_seq: int | None
    problem: str
    summary: str


def _admin(
    request: Request,
    messages: MessagesDep,
    principal: Annotated[Principal, Depends(current_principal)],
) -> tuple[Who, AuditTrailPort]:
    """The caller as an audit actor when an admin; otherwise the refusal recorded and a 403."""
    who = Who(principal.subject, "api", peer_of(request))
    if not principal.may(Role.ADMIN):
        refuse_role(messages, who, "view-audit", Role.ADMIN.value)
    if not isinstance(messages, AuditTrailPort):
        raise HTTPException(503, detail="the audit trail is not available")
    return who, messages


AdminTrail = Annotated[tuple[Who, AuditTrailPort], Depends(_admin)]


def _when(value: datetime | None, zone: str) -> datetime | None:
    """A time without an offset is in the engine's time zone (``timezone`` setting)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=ZoneInfo(zone))


@router.get("", response_model=list[AuditRecordOut])
def list_audit(
    admin: AdminTrail,
    settings: SettingsDep,
    actor: Annotated[str | None, Query(max_length=255)] = None,
    action: Annotated[str | None, Query(max_length=32)] = None,
    mrn: Annotated[str | None, Query(max_length=255)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before: Annotated[int | None, Query(ge=1, le=BIGINT_MAX)] = None,
    message_id: Annotated[int | None, Query(ge=1, le=BIGINT_MAX)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AuditRecordOut]:
    """Records newest first (keyset paging: ``before`` = the last seq of this page)."""
    who, trail = admin
    try:
        query = AuditQuery(
            actor=actor,
            action=action,
            mrn=mrn,
            since=_when(since, settings.timezone),
            until=_when(until, settings.timezone),
            before=before,
            limit=limit,
        )
    except ValueError as exc:
        raise HTTPException(422, detail=str(exc)) from None
    try:
        records = trail.audit_page(query, who, message_id=message_id)
    except AuditSearchTimeout as exc:
        raise HTTPException(503, detail=str(exc)) from None
    return [AuditRecordOut(**vars(r)) for r in records]


@router.get("/verify", response_model=AuditVerifyOut)
def verify_audit(admin: AdminTrail) -> AuditVerifyOut:
    """Walk the hash chain; the first changed, deleted or missing record, or that it is intact."""
    who, trail = admin
    done = trail.verify_audit(who)
    return AuditVerifyOut(
        ok=done.ok,
        count=done.count,
        head_seq=done.head_seq,
        head_hash=done.head_hash,
        problem_id=done.problem_id,
        problem_seq=done.problem_seq,
        problem=done.problem,
        summary=done.describe(),
    )
