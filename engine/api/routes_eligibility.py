"""``/api/eligibility``: the front desk's list for a day, and an on-demand check.

``GET /api/eligibility?date=YYYY-MM-DD`` (viewers): who is covered, the copay to collect, the
deductible left, who needs a call — the latest check per appointment that day, with the patient's
name and MRN and the time in the practice's time zone (engine.jobs.eligibility.worklist).
``POST /api/eligibility/check?date=YYYY-MM-DD[&force=true]`` (admins and integrations): check that
day's appointments now.
"""

from __future__ import annotations

import logging
from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request

from engine.api.auth import IntegrationDep, ViewerDep
from engine.api.deps import MessagesDep, peer_of

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/eligibility")


def _service(request: Request) -> Any:
    service = getattr(request.app.state, "eligibility", None)
    if service is None:
        raise HTTPException(503, detail="eligibility checks are not configured")
    return service


#: the days a front desk can mean; outside them a date is a typo (and near year 9999 the job's
#: date arithmetic would overflow)
_FIRST_DAY = date(1900, 1, 1)
_LAST_DAY = date(2999, 12, 31)


def _required(on: date | None) -> date:
    """The ``date`` query value, or a 400 that says it is missing (FastAPI's own answer, a 422
    listing a "missing" field, left the front desk's scripts guessing)."""
    if on is None:
        raise HTTPException(400, detail="query parameter 'date' is required (YYYY-MM-DD)")
    if not _FIRST_DAY <= on <= _LAST_DAY:  # the job adds business days: 9999-12-31 overflows
        raise HTTPException(
            422, detail=f"query parameter 'date' must lie between {_FIRST_DAY} and {_LAST_DAY}"
        )
    return on


@router.get("")
def day(
    request: Request,
    principal: ViewerDep,
    messages: MessagesDep,
    on: Annotated[date | None, Query(alias="date", description="the day, YYYY-MM-DD")] = None,
) -> list[dict[str, Any]]:
    """The latest eligibility check of every appointment on ``date``, with the patient's name and
    MRN and the appointment time in the practice's time zone. The list is recorded in the audit
    trail (``view-worklist``: the day and how many, once per patient listed, by MRN)."""
    from engine.jobs.eligibility import worklist

    wanted = _required(on)
    service = _service(request)
    rows = worklist(service.store, wanted, service.settings.timezone)
    messages.record_audit(
        action="view-worklist",
        actor=principal.subject,
        source="api",
        peer=peer_of(request),
        message_id=None,
        outcome="ok",
        detail=f"{wanted.isoformat()}: {len(rows)} appointments",
        patients=[r["mrn"] for r in rows],  # one record per patient listed
    )
    return rows


@router.post("/check")
async def check(
    request: Request,
    principal: IntegrationDep,
    on: Annotated[date | None, Query(alias="date", description="the day, YYYY-MM-DD")] = None,
    force: bool = False,
) -> dict[str, Any]:
    """Check ``date``'s appointments now (a patient checked today is not asked again unless
    ``force``)."""
    start = _required(on)
    outcomes = await _service(request).check_upcoming(start=start, days=1, force=force)
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    log.info("eligibility checked on demand", extra={"checked": len(outcomes), **counts})
    return {"checked": len(outcomes), "outcomes": counts}
