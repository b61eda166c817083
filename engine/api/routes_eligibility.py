"""``/api/eligibility``: the front desk's list for a day, and an on-demand check.

``GET /api/eligibility?date=YYYY-MM-DD`` (viewers): who is covered, the copay to collect, the
deductible left, who needs a call — the latest check per appointment that day.
``POST /api/eligibility/check?date=YYYY-MM-DD[&force=true]`` (admins and integrations): check that
day's appointments now.
"""

from __future__ import annotations

import logging
from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request

from engine.api.auth import IntegrationDep, ViewerDep

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/eligibility")

_FIELDS = (
    "appointment_start",
    "payer_id",
    "payer_name",
    "status",
    "copay",
    "deductible",
    "deductible_remaining",
    "plan",
    "reason",
    "checked_at",
)


def _service(request: Request) -> Any:
    service = getattr(request.app.state, "eligibility", None)
    if service is None:
        raise HTTPException(503, detail="eligibility checks are not configured")
    return service


def _row(r: dict[str, Any], timezone: str) -> dict[str, Any]:
    from engine.jobs.eligibility import local_time

    out = {k: r.get(k) for k in _FIELDS}
    out["appointment_start"] = local_time(r.get("appointment_start"), timezone)
    out["checked_at"] = local_time(r.get("checked_at"), timezone)
    out["check_id"] = r.get("id")
    out["appointment"] = r.get("appointment_url")
    out["patient"] = r.get("patient_url")
    for k in ("appointment_start", "checked_at"):
        value = out.get(k)
        if value is not None:
            out[k] = value.isoformat()
    return out


@router.get("")
def day(
    request: Request, principal: ViewerDep, on: Annotated[date, Query(alias="date")]
) -> list[dict[str, Any]]:
    """The latest eligibility check of every appointment on ``date``."""
    service = _service(request)
    return [_row(r, service.settings.timezone) for r in service.store.eligibility_for_day(on)]


@router.post("/check")
async def check(
    request: Request,
    principal: IntegrationDep,
    on: Annotated[date, Query(alias="date")],
    force: bool = False,
) -> dict[str, Any]:
    """Check ``date``'s appointments now (a patient checked today is not asked again unless
    ``force``)."""
    outcomes = await _service(request).check_upcoming(start=on, days=1, force=force)
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    log.info("eligibility checked on demand", extra={"checked": len(outcomes), **counts})
    return {"checked": len(outcomes), "outcomes": counts}
