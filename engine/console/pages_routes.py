"""The console: routes, mappings, reload (owner: ops pages).

``/console/routes`` shows the running configuration (engine/flow/config.py ``Reloader.current``):
every route (its match, mapping and destinations) and destination (type, retry policy) with the
file it came from, and the mapping set's files by kind. Its validation status is the running
one's (it was checked whole before it ran: start-up and reload refuse anything less) and, on
asking (``?check=1``), the files on disk now, read and checked the way a reload does without
switching to them: an admin sees whether a reload would take before asking for it.

Reload (admin, CSRF; ``POST /console/routes/reload``) is ``POST /api/admin/reload``: the route
and mapping files are read again and applied without a restart when all are valid; otherwise
the running ones stay and the page shows why (file, line and key). Each reload is recorded in
the audit trail (``reload``: ``ok`` with the counts, ``refused`` with the reason; a user without
the role too).

Viewers and integration users (and admins) see the page.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from engine.api.auth import Role
from engine.api.deps import SettingsDep
from engine.console.auth import ConsoleUser, CsrfDep
from engine.console.pages_dashboard import OpsUserDep
from engine.console.pages_messages import local_time, store_of, who_of
from engine.console.render import render
from engine.errors import EngineError
from engine.flow.config import record_reload
from engine.settings import Settings

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter()

#: a mapping file's kind: the folder its key starts with (``segments/PID``)
_KINDS = ("messages", "segments", "datatypes", "tables", "outbound", "documents")


def _reloader(request: Request) -> Any:
    return getattr(request.app.state, "reloader", None)


def _match(route: Any) -> str:
    """``message ADT, SIU; trigger A04`` (empty lists and defaults left out)."""
    data = route.match.model_dump(exclude_none=True, exclude_defaults=True)
    parts = []
    for key, value in data.items():
        if isinstance(value, list):
            value = ", ".join(str(v) if not isinstance(v, dict) else _condition(v) for v in value)
        parts.append(f"{key.replace('_', ' ')} {value}")
    return "; ".join(parts) or "anything"


def _condition(value: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in value.items())


def _shown_path(where: str, snapshot_root: Path, site: Path | None) -> str:
    """A mapping file's origin as the admin knows it: the site folder, not the running copy
    under ``var/config/<time>/mappings`` (the routes' origins are mapped back already)."""
    marker = f"{snapshot_root}/"
    if site is not None and where.startswith(marker):
        tail = where[len(marker) :].split("/", 2)
        if len(tail) == 3 and tail[1] == "mappings":
            return str(site / tail[2])
    return where


def _mapping_files(config: Any, settings: Settings) -> list[tuple[str, list[tuple[str, str]]]]:
    """The mapping files by kind: (kind, [(key, file)])."""
    origin: dict[str, str] = dict(config.mappings.files.origin)
    root = settings.var_dir / "config"
    groups: dict[str, list[tuple[str, str]]] = {}
    for key in sorted(origin):
        kind = key.split("/", 1)[0] if "/" in key else "other"
        groups.setdefault(kind, []).append(
            (key, _shown_path(origin[key], root, settings.mappings_dir))
        )
    order = [k for k in _KINDS if k in groups] + sorted(k for k in groups if k not in _KINDS)
    return [(k, groups[k]) for k in order]


def _retry(spec: Any) -> str:
    policy = getattr(spec, "retry", None)
    if policy is None:
        return ""
    fields = policy.model_dump() if hasattr(policy, "model_dump") else {}
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in fields.items())


def _sources(routes: Any) -> Iterable[tuple[str, str, str]]:
    for name, spec in routes.sources.items():
        yield name, str(getattr(spec, "type", "")), routes.origin.get(f"source:{name}", "")


def _page(
    request: Request,
    user: ConsoleUser,
    settings: Settings,
    *,
    check: dict[str, Any] | None = None,
    result: dict[str, Any] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    reloader = _reloader(request)
    context: dict[str, Any] = {"check": check, "result": result, "may_reload": False}
    if reloader is not None:
        config = reloader.current
        routes = config.routes
        context.update(
            loaded_at=local_time(config.loaded_at, settings.timezone),
            files=config.files,
            routes=[
                {
                    "route": r,
                    "match": _match(r),
                    "file": routes.origin.get(f"route:{r.name}", ""),
                }
                for r in routes.routes
            ],
            destinations=[
                {
                    "name": name,
                    "type": spec.type,
                    "retry": _retry(spec),
                    "file": routes.origin.get(f"destination:{name}", ""),
                }
                for name, spec in routes.destinations.items()
            ],
            sources=list(_sources(routes)),
            mappings=_mapping_files(config, reloader.settings),
            may_reload=user.may(Role.ADMIN),
        )
    return render(
        request,
        "routes.html",
        user=user,
        status_code=status_code,
        running=reloader is not None,
        **context,
    )


def _check_files(settings: Settings) -> dict[str, Any]:
    """Read and check the site's files as a reload would, without running them."""
    from engine.flow.config import load_config

    try:
        config = load_config(settings)
    except EngineError as exc:
        return {"valid": False, "error": str(exc)}
    return {
        "valid": True,
        "routes": len(config.routes.routes),
        "destinations": len(config.routes.destinations),
    }


@router.get("/routes", response_class=HTMLResponse)
async def routes_page(
    request: Request, user: OpsUserDep, settings: SettingsDep, check: bool = False
) -> HTMLResponse:
    """The running routes, destinations and mappings; ``check``: the files on disk too."""
    reloader = _reloader(request)
    checked = None
    if check and reloader is not None:
        checked = await run_in_threadpool(_check_files, reloader.settings)
    return _page(request, user, settings, check=checked)


@router.post("/routes/reload", response_class=HTMLResponse)
async def reload_routes(request: Request, user: CsrfDep, settings: SettingsDep) -> HTMLResponse:
    """Apply the route and mapping files now, or keep the running ones and say why."""
    store = store_of(request)
    who = who_of(user)
    record = partial(record_reload, store, who)

    if not user.may(Role.ADMIN):
        await run_in_threadpool(record, "refused", "requires the admin role")
        from engine.console.sessions import forbidden

        raise forbidden(Role.ADMIN, user)
    reloader = _reloader(request)
    if reloader is None:
        await run_in_threadpool(record, "refused", "this engine cannot reload its configuration")
        return _page(
            request,
            user,
            settings,
            result={"applied": False, "error": "this engine cannot reload its configuration"},
            status_code=503,
        )
    done = await run_in_threadpool(reloader.reload)
    await run_in_threadpool(record, *done.audit())
    log.info("reload asked from the console", extra={"by": who.actor, "applied": done.applied})
    return _page(
        request,
        user,
        settings,
        result=done.as_dict() | {"applied": done.applied},
        status_code=200 if done.applied else 422,
    )
