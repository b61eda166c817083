"""``/api/admin``: what only an admin does to the running engine.

``POST /api/admin/reload`` reads the route and mapping files again (as ``SIGHUP`` does). When all
of them are valid the engine switches to them and answers 200 ``{"status": "reloaded", ...}``; when
any is not, the running configuration stays and the answer is 422 ``{"status": "kept", "error":
"<file>:<line>: ..."}``. Applied here but not published to the other nodes (the database away),
the answer is 200 with ``warning`` saying so. An engine started without a reloader (tests,
``create_app`` alone) answers 503. Each attempt is recorded in the audit trail (``reload``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from engine.api.auth import Principal, Role, current_principal
from engine.api.deps import MessagesDep, peer_of
from engine.api.refusals import refuse_role
from engine.store import Who

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/admin")


def _caller(role: Role, action: str) -> Callable[..., Who]:
    """A dependency: the caller as an audit actor when they hold ``role``; otherwise the refusal
    is recorded and answered 403 (``role`` by that name: the OpenAPI document reads it)."""

    def dependency(
        request: Request,
        messages: MessagesDep,
        principal: Annotated[Principal, Depends(current_principal)],
    ) -> Who:
        who = Who(principal.subject, "api", peer_of(request))
        if not principal.may(role):
            refuse_role(messages, who, action, role.value)
        return who

    return dependency


@router.post("/reload")
async def reload_configuration(
    request: Request,
    messages: MessagesDep,
    who: Annotated[Who, Depends(_caller(Role.ADMIN, "reload"))],
) -> JSONResponse:
    """Reload routes and mappings; keep the running ones when the new ones are invalid. Every
    attempt is a record of the audit trail, as a reload from the console is (a refusal too)."""

    def record(outcome: str, detail: str) -> None:
        messages.record_audit(
            action="reload",
            actor=who.actor,
            source=who.source,
            peer=who.peer,
            message_id=None,
            outcome=outcome,
            detail=detail[:2000],
        )

    reloader: Any = getattr(request.app.state, "reloader", None)
    if reloader is None:
        await run_in_threadpool(record, "refused", "this engine cannot reload its configuration")
        raise HTTPException(503, detail="this engine cannot reload its configuration")
    result = await run_in_threadpool(reloader.reload)
    log.info("reload asked", extra={"by": who.actor, "applied": result.applied})
    if result.applied:
        detail = f"applied: {result.routes} routes, {result.destinations} destinations"
        if result.warning:
            detail += f"; {result.warning}"
        await run_in_threadpool(record, "ok", detail)
    else:
        await run_in_threadpool(record, "refused", f"kept the running files: {result.error}")
    return JSONResponse(result.as_dict(), status_code=200 if result.applied else 422)
