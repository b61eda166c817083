"""``/api/admin``: what only an admin does to the running engine.

``POST /api/admin/reload`` reads the route and mapping files again (as ``SIGHUP`` does). When all
of them are valid the engine switches to them and answers 200 ``{"status": "reloaded", ...}``; when
any is not, the running configuration stays and the answer is 422 ``{"status": "kept", "error":
"<file>:<line>: ..."}``. An engine started without a reloader (tests, ``create_app`` alone)
answers 503.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from engine.api.auth import AdminDep

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/admin")


@router.post("/reload")
async def reload_configuration(request: Request, principal: AdminDep) -> JSONResponse:
    """Reload routes and mappings; keep the running ones when the new ones are invalid."""
    reloader: Any = getattr(request.app.state, "reloader", None)
    if reloader is None:
        raise HTTPException(503, detail="this engine cannot reload its configuration")
    result = await run_in_threadpool(reloader.reload)
    log.info("reload asked", extra={"by": principal.subject, "applied": result.applied})
    return JSONResponse(result.as_dict(), status_code=200 if result.applied else 422)
