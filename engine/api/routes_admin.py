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
from engine.api.deps import MessagesDep
from engine.api.refusals import caller_as
from engine.flow.config import record_reload
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
        return caller_as(request, messages, principal, role, action)

    return dependency


@router.post("/reload")
async def reload_configuration(
    request: Request,
    messages: MessagesDep,
    who: Annotated[Who, Depends(_caller(Role.ADMIN, "reload"))],
) -> JSONResponse:
    """Reload routes and mappings; keep the running ones when the new ones are invalid. Every
    attempt is a record of the audit trail, as a reload from the console is (a refusal too)."""
    reloader: Any = getattr(request.app.state, "reloader", None)
    if reloader is None:
        refusal = "this engine cannot reload its configuration"
        await run_in_threadpool(record_reload, messages, who, "refused", refusal)
        raise HTTPException(503, detail="this engine cannot reload its configuration")
    result = await run_in_threadpool(reloader.reload)
    log.info("reload asked", extra={"by": who.actor, "applied": result.applied})
    await run_in_threadpool(record_reload, messages, who, *result.audit())
    return JSONResponse(result.as_dict(), status_code=200 if result.applied else 422)
