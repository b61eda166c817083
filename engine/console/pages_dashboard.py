"""The console: the dashboard (owner: ops pages).

``/console/`` shows, per route and destination, the deliveries made in the last hour and the
last day and where they stand (delivered, errors: dead or waiting for their patient), each
destination's queue and the age of its oldest waiting delivery, its dead letters (of messages
not marked handled), its circuit breaker (as the worker nodes report it: engine/flow/deliver.py
writes each opening and closing) and its last error; the messages received (and refused) in
the hour and day; the ingest rate as a server-drawn SVG sparkline (the last 24 hours by hour,
``?span=hour``: the last hour by minute); the eligibility verdicts of the next business day
where the practice is (ENGINE_TIMEZONE; the day the worklist opens on); the alerts raised
(engine/alerts/state.py, when that part is there); and the
nodes (engine/store/cluster.py): which one leads (runs the scheduled jobs), each one's role and
last heartbeat, and the configuration generation each runs against the one last published, a
node behind it flagged.

The figures refresh themselves: console.js fetches ``/console/dashboard/live`` (the same
figures, without the page around them) every 15 seconds, as the ``data-refresh`` attribute
says; no inline script. Every query is bounded by time and indexed (engine/store/
console_stats.py). The reads that grow with traffic (the hour's and the day's counts, the rate)
are made at most once a minute per node, whatever the number of open dashboards; the queue,
dead letters, breakers, last errors, eligibility, alerts and nodes every 5 s (the page says when
each was read). Nothing here names a patient (counts, destinations, PHI-free errors), so
views are not audited.

Viewers and integration users (and admins) see it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup

from engine.api.auth import Role
from engine.api.deps import SettingsDep
from engine.console.auth import ConsoleUser, ConsoleUserDep
from engine.console.days import next_business_day
from engine.console.pages_messages import local_time, store_of
from engine.console.render import environment, first_page, render
from engine.console.sessions import forbidden, wants_json
from engine.store import SqlMessageStore
from engine.store.cluster import ClusterState
from engine.store.console_stats import DashboardFigures, DestinationFigures, RouteFigures

__all__ = ["OpsUserDep", "require_any", "router", "sparkline"]

log = logging.getLogger(__name__)

router = APIRouter()

#: seconds between refreshes of the figures (console.js reads it from the page)
REFRESH_S = 15
#: figures younger than this are shown again rather than read again: many open dashboards cost
#: the database one read per span every few seconds, not one per browser
CACHE_S = 5.0
#: the hour's and the day's traffic (deliveries per route and state, messages received, the
#: rate) is read at most this often: its reads grow with the traffic of the window (at 1,000
#: messages/s, 3.6 million rows an hour), while the queue, dead letters, breakers and last
#: errors are read every CACHE_S
TRAFFIC_S = 60.0
#: a part read in T seconds is not read again for READ_SHARE * T seconds (if longer than its
#: own period): at most about 1 % of the time spent reading, however slow the reads become
READ_SHARE = 100.0
#: the verdicts as the page names them (engine/jobs/eligibility.py's statuses)
VERDICTS = {
    "eligible": "eligible",
    "inactive": "not active",
    "needs_action": "needs action",
    "payer_unavailable": "payer unavailable",
}


def require_any(*roles: Role) -> Callable[..., Awaitable[ConsoleUser]]:
    """A dependency that lets through users holding any of ``roles`` (or admin); 403 else."""

    async def dependency(user: ConsoleUserDep) -> ConsoleUser:
        if not any(user.may(r) for r in roles):
            raise forbidden(roles[0], user)
        return user

    return dependency


OpsUserDep = Annotated[ConsoleUser, Depends(require_any(Role.VIEWER, Role.INTEGRATION))]


def _age(seconds: float | None) -> str:
    """``42 s``, ``7 min``, ``3 h 5 min``, ``2 d 4 h``."""
    if seconds is None:
        return ""
    s = int(seconds)
    if s < 120:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def sparkline(points: list[tuple[datetime, int]], zone: str, *, width: int = 600) -> Markup:
    """An SVG line of counts over time, drawn here (no script, no CDN): a polyline scaled to
    the largest count, its area under it, and a title per bucket for a pointer's hover."""
    height, pad = 60, 2
    if not points:
        return Markup("")
    top = max(n for _, n in points) or 1
    step = (width - 2 * pad) / max(1, len(points) - 1)

    def y(n: int) -> float:
        return round(height - pad - (height - 2 * pad) * n / top, 1)

    xy = [(round(pad + i * step, 1), y(n)) for i, (_, n) in enumerate(points)]
    line = " ".join(f"{x},{yy}" for x, yy in xy)
    area = f"{xy[0][0]},{height - pad} {line} {xy[-1][0]},{height - pad}"
    tz = ZoneInfo(zone)
    marks = Markup("").join(
        Markup('<circle cx="{}" cy="{}" r="2"><title>{}: {}</title></circle>').format(
            x, yy, at.astimezone(tz).strftime("%H:%M"), n
        )
        for (x, yy), (at, n) in zip(xy, points, strict=True)
    )
    total = sum(n for _, n in points)
    return Markup(
        '<svg class="spark" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" '
        'aria-label="{label}"><polygon class="area" points="{area}"/>'
        '<polyline class="line" points="{line}"/>{marks}</svg>'
    ).format(
        w=width,
        h=height,
        label=f"{total} messages, at most {top} in one bucket",
        area=area,
        line=line,
        marks=marks,
    )


@dataclass
class _Row:
    """One line of the table: a route's destination and that destination's state now."""

    route: str
    destination: str
    figures: RouteFigures
    now: DestinationFigures


def _rows(figures: DashboardFigures, configured: list[tuple[str, str]]) -> list[_Row]:
    """Every configured (route, destination), and any other the deliveries name (a route since
    removed: its queue still drains)."""
    by_route = {(f.route, f.destination): f for f in figures.routes}
    destinations = figures.destinations
    keys = list(dict.fromkeys([*configured, *sorted(by_route)]))
    named = {d for _, d in keys}
    keys += [("", d) for d in sorted(destinations) if d not in named]
    return [
        _Row(
            route,
            dest,
            by_route.get((route, dest)) or RouteFigures(route, dest),
            destinations.get(dest) or DestinationFigures(dest),
        )
        for route, dest in keys
    ]


def _configured(request: Request) -> list[tuple[str, str]]:
    """(route, destination) of the running configuration, in the route files' order."""
    reloader: Any = getattr(request.app.state, "reloader", None)
    if reloader is None:
        return []
    routes = reloader.current.routes
    return [(r.name, d) for r in routes.routes for d in r.destinations]


def _alerts(store: SqlMessageStore) -> list[Any]:
    """The alerts raised now, or none while the alerts part is not there."""
    try:
        from engine.alerts.state import active_alerts
    except ImportError:
        return []
    try:
        return list(active_alerts(store.db_engine))
    except Exception as exc:  # its table not there yet: the dashboard still shows the rest
        log.warning("alerts not read", extra={"error": type(exc).__name__})
        return []


def _cluster(store: SqlMessageStore) -> ClusterState | None:
    """The nodes, the leader and the configuration generations, or None when they could not be
    read (the dashboard still shows the rest)."""
    try:
        return store.cluster_state()
    except Exception as exc:
        log.warning("nodes not read", extra={"error": type(exc).__name__})
        return None


#: one read of the figures at a time per app: dashboards that find them stale together wait
#: for the first one's read instead of each reading them again
_READING = threading.Lock()


def _cached(request: Request, key: str, max_age: float, read: Callable[[], Any]) -> Any:
    """``read()``'s value, read again when older than ``max_age`` seconds (per app), or than
    READ_SHARE times what the last read took when that is longer: a read that has grown slow
    (a queue of a hundred thousand deliveries after an outage, a machine short of CPU) is made
    less often, so the dashboard never spends more than about 1 % of the time reading."""
    cache: dict[str, tuple[float, float, Any]] | None = getattr(
        request.app.state, "ops_dashboard_cache", None
    )
    if cache is None:
        cache = request.app.state.ops_dashboard_cache = {}

    def fresh() -> tuple[float, float, Any] | None:
        seen = cache.get(key)
        if seen is None:
            return None
        read_at, took, _value = seen
        return seen if time.monotonic() - read_at < max(max_age, took * READ_SHARE) else None

    seen = fresh()
    if seen is None:
        with _READING:
            seen = fresh()
            if seen is None:
                start = time.monotonic()
                value = read()
                seen = cache[key] = (time.monotonic(), time.monotonic() - start, value)
    return seen[2]


def _figures(request: Request, store: SqlMessageStore, zone: str, span: str) -> dict[str, Any]:
    """The page's figures: the traffic of ``span`` read at most every TRAFFIC_S seconds, the
    rest every CACHE_S (per app, whatever the number of open dashboards)."""
    day_ahead = next_business_day(zone)
    routes, received, traffic_at = _cached(
        request,
        f"traffic:{span}",
        TRAFFIC_S,
        lambda: (*store.dashboard_traffic(span, datetime.now(UTC)), datetime.now(UTC)),
    )
    destinations, eligibility, alerts, now = _cached(
        request,
        f"now:{day_ahead.isoformat()}",
        CACHE_S,
        lambda: (
            *store.dashboard_now(day_ahead, datetime.now(UTC)),
            _alerts(store),
            datetime.now(UTC),
        ),
    )
    cluster = _cached(request, "cluster", CACHE_S, lambda: _cluster(store))
    figures = DashboardFigures(routes, destinations, received, eligibility)
    hour, day = received.hour, received.day
    return {
        "rows": _rows(figures, _configured(request)),
        "age": _age,
        "received": {
            "hour": (sum(hour.values()), hour.get("error", 0), hour.get("unrouted", 0)),
            "day": (sum(day.values()), day.get("error", 0), day.get("unrouted", 0)),
        },
        "span": span,
        "spark": sparkline(received.rate, zone),
        "eligibility_day": day_ahead.isoformat(),
        "eligibility": [(VERDICTS.get(k, k), k, n) for k, n in eligibility.items()],
        "alerts": alerts,
        "cluster": cluster,
        "local": lambda at: local_time(at, zone),
        "updated": local_time(now, zone),
        "traffic_updated": local_time(traffic_at, zone),
        "refresh_s": REFRESH_S,
        "live_url": f"/console/dashboard/live?span={span}",
    }


Span = Annotated[str, Query(pattern="^(day|hour)$")]


@router.get("/", response_class=HTMLResponse, response_model=None)
def dashboard(
    request: Request, user: ConsoleUserDep, settings: SettingsDep, span: Span = "day"
) -> Response:
    """The dashboard; a browser whose user may not see it goes to the first page they may open
    (a login lands here: the front desk lands on its documents), a JSON client gets 403."""
    if not (user.may(Role.VIEWER) or user.may(Role.INTEGRATION)):
        landing = None if wants_json(request) else first_page(user)
        if landing is None:
            raise forbidden(Role.VIEWER, user)
        return RedirectResponse(landing, status_code=303)
    store = store_of(request)
    return render(
        request, "dashboard.html", user=user, **_figures(request, store, settings.timezone, span)
    )


@router.get("/dashboard/live", response_class=HTMLResponse)
def dashboard_live(
    request: Request, user: OpsUserDep, settings: SettingsDep, span: Span = "day"
) -> HTMLResponse:
    """The figures alone (the page's ``live`` block), for the page to refresh itself."""
    store = store_of(request)
    template = environment().get_template("dashboard.html")
    context = template.new_context(
        {"request": request, "user": user, **_figures(request, store, settings.timezone, span)}
    )
    html = "".join(template.blocks["live"](context))
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})
