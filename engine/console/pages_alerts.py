"""The console: alert rules and alerts raised (owner: alerts).

``/console/alerts`` shows the rules of ``alerts.yaml`` (ENGINE_ROUTES_DIR; the file named, or its
error with file, line and key when it does not load), the channels (never their secrets), every
alert with when it was raised, notified and recovered, and the recent history of raises,
recoveries and notices. Nothing here is patient data (the alerts hold counts, names and ages), so
no view is audited. Viewers and integration users (and admins) see it; it changes nothing.

The dashboard shows the alerts raised with ``partials/alerts.html`` (context ``alerts``:
:func:`engine.alerts.state.active_alerts`).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from engine.alerts.rules import (
    AlertConfig,
    DeadLetters,
    Disk,
    EligibilityFailures,
    EmailChannel,
    QueueAge,
    SenderSilent,
    load_alert_rules,
)
from engine.alerts.state import alert_rows, recent_events
from engine.api.auth import Role
from engine.api.deps import SettingsDep
from engine.console.auth import ConsoleUser, ConsoleUserDep
from engine.console.render import render
from engine.errors import EngineError

__all__ = ["describe", "router"]

router = APIRouter()


async def _reader(user: ConsoleUserDep) -> ConsoleUser:
    """Viewers and integration users (and admins); 403 for anyone else."""
    if not (user.may(Role.VIEWER) or user.may(Role.INTEGRATION)):
        from engine.console.sessions import forbidden

        raise forbidden(Role.VIEWER, user)
    return user


ReaderDep = Annotated[ConsoleUser, Depends(_reader)]


def describe(rule: Any) -> str:
    """A rule's condition in words, for the page."""
    if isinstance(rule, DeadLetters):
        scope = " ".join(
            f"{k} {v}" for k, v in (("route", rule.route), ("destination", rule.destination)) if v
        )
        return f"≥ {rule.threshold} dead-lettered in {rule.window_minutes} min" + (
            f" ({scope})" if scope else ""
        )
    if isinstance(rule, QueueAge):
        return f"oldest undelivered older than {rule.older_than_minutes} min" + (
            f" at {rule.destination}" if rule.destination else " (each destination)"
        )
    if isinstance(rule, SenderSilent):
        h = rule.business_hours
        return (
            f"nothing from {rule.sender} for {rule.silent_minutes} min, "
            f"{','.join(h.days)} {h.start:%H:%M}-{h.end:%H:%M}"
        )
    if isinstance(rule, EligibilityFailures):
        who = f"payer {rule.payer}" if rule.payer else ("each payer" if rule.per_payer else "any")
        return (
            f"≥ {rule.threshold} checks {', '.join(rule.statuses)} in {rule.window_minutes} min "
            f"({who})"
        )
    if isinstance(rule, Disk):
        limits = []
        if rule.min_free_mb is not None:
            limits.append(f"{rule.min_free_mb} MB")
        if rule.min_free_percent is not None:
            limits.append(f"{rule.min_free_percent:g} %")
        return f"free space under {' or '.join(limits)}" + (f" at {rule.path}" if rule.path else "")
    return f"no answer, or a probe slower than {rule.max_query_ms} ms"


def _channel(name: str, channel: Any) -> dict[str, Any]:
    if isinstance(channel, EmailChannel):
        where = f"{', '.join(channel.to)} via {channel.host}:{channel.port}"
        where += " (STARTTLS)" if channel.starttls else ""
    else:
        where = f"URL from {channel.url_env}" if channel.url_env else "webhook"
    return {"name": name, "type": channel.type, "where": where, "enabled": channel.enabled}


def _read(request: Request, settings: Any) -> dict[str, Any]:
    error: str | None = None
    config = AlertConfig()
    try:
        config = load_alert_rules(settings.routes_dir)
    except EngineError as exc:
        error = str(exc)
    context = getattr(request.app.state, "context", None)
    db_engine = getattr(getattr(context, "messages", None), "db_engine", None)
    rows: list[Any] = []
    events: list[Any] = []
    store_error: str | None = None
    if db_engine is not None:
        try:
            rows = alert_rows(db_engine)
            events = recent_events(db_engine, limit=100)
        except Exception as exc:  # the database away: the page says so
            store_error = f"the alerts could not be read ({type(exc).__name__})"
    rules = [
        {
            "name": r.name,
            "kind": r.kind,
            "condition": describe(r),
            "description": r.description,
            "channels": ", ".join(config.channels_of(r)) or "none",
            "repeat": config.repeat_minutes(r),
        }
        for r in config.rules
    ]
    return {
        "file": config.file,
        "error": error,
        "store_error": store_error,
        "rules": rules,
        "channels": [_channel(n, c) for n, c in config.channels.items()],
        "rows": rows,
        "alerts": [r for r in rows if r.state == "raised"],
        "events": events,
        "timezone": settings.timezone,
        "interval": settings.alerts_interval_s,
    }


@router.get("/alerts", response_class=HTMLResponse)
async def alerts_page(request: Request, user: ReaderDep, settings: SettingsDep) -> HTMLResponse:
    """The rules, their channels, every alert and the recent history."""
    context = await asyncio.to_thread(_read, request, settings)
    return render(request, "alerts.html", user=user, **context)
