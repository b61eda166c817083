"""The console: reports, drawn on the server as SVG, each with a CSV export (owner:
workbench-reports).

``/console/reports?from=YYYY-MM-DD&to=YYYY-MM-DD`` (default: three weeks back to a week ahead,
days of the practice's zone ``ENGINE_TIMEZONE``; at most a year): patients per day, new
patients, the no-show rate, cancellations, charges per day and eligibility outcomes by payer
(what each counts: engine.store.reports). Each chart is an inline SVG (engine.console.svg: no
script, no CDN) and has a CSV of the same range at ``/console/reports/<name>.csv``; a text cell
that a spreadsheet would read as a formula (starting with ``= + - @``, a tab or a carriage
return) is written with a leading quote.

Reports count patients: each view and each export is recorded in the audit trail (action
``view-report``, source ``console``, the report and range; no patient is named). Viewers (and
admins) see them.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response
from markupsafe import Markup

from engine.api.auth import Role
from engine.api.deps import SettingsDep
from engine.console.auth import ConsoleUser, require_console
from engine.console.render import render
from engine.console.svg import Series, bar_chart, line_chart
from engine.store import SqlMessageStore
from engine.store.audit import YEARS
from engine.store.reports import MAX_DAYS, AppointmentDay, ChargeDay, Reports

__all__ = ["REPORTS", "csv_cell", "router"]

router = APIRouter()

ReportUserDep = Annotated[ConsoleUser, Depends(require_console(Role.VIEWER))]

#: the reports in page order: name (the CSV's), title
REPORTS: tuple[tuple[str, str], ...] = (
    ("patients-per-day", "Patients per day"),
    ("new-patients", "New patients"),
    ("no-show-rate", "No-show rate"),
    ("cancellations", "Cancellations"),
    ("charges", "Charges per day (DFT)"),
    ("eligibility-by-payer", "Eligibility outcomes by payer"),
)
_TITLES = dict(REPORTS)
_VERDICTS = ("eligible", "inactive", "needs_action", "payer_unavailable")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A value as a CSV cell a spreadsheet will not run: text that starts like a formula gets
    a leading quote (OWASP's CSV injection advice); numbers stay numbers."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


@dataclass(frozen=True)
class Figures:
    """Everything the page and the CSVs show, for one range."""

    days: list[date]
    appointments: dict[date, AppointmentDay]
    new_patients: dict[date, int]
    charges: dict[date, ChargeDay]
    eligibility: dict[date, dict[tuple[str, str], int]]

    def by_payer(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for per_day in self.eligibility.values():
            for (payer, status), n in per_day.items():
                into = out.setdefault(payer, {})
                into[status] = into.get(status, 0) + n
        return dict(sorted(out.items(), key=lambda kv: (-sum(kv[1].values()), kv[0])))


def _range(settings: Any, start: str | None, end: str | None) -> tuple[date, date]:
    """The days asked for, or the default; 422 naming the problem."""
    today = datetime.now(ZoneInfo(settings.timezone)).date()
    try:
        first = date.fromisoformat(start) if start else today - timedelta(days=21)
        last = date.fromisoformat(end) if end else today + timedelta(days=7)
    except ValueError:
        raise HTTPException(422, detail="from and to are days: YYYY-MM-DD") from None
    for name, day in (("from", first), ("to", last)):
        if not YEARS[0] <= day.year <= YEARS[1]:
            raise HTTPException(
                422, detail=f"{name}: {day} is out of range (years {YEARS[0]} to {YEARS[1]})"
            )
    if last < first:
        raise HTTPException(422, detail="to is before from")
    if (last - first).days + 1 > MAX_DAYS:
        raise HTTPException(422, detail=f"a report covers at most {MAX_DAYS} days")
    return first, last


def _store(request: Request) -> SqlMessageStore:
    store = getattr(getattr(request.app.state, "context", None), "messages", None)
    if not isinstance(store, SqlMessageStore):
        raise HTTPException(503, detail="reports need the engine's store")
    return store


#: which of the store's reports each CSV reads (the page reads them all)
_SOURCES = {
    "patients-per-day": "appointments",
    "no-show-rate": "appointments",
    "cancellations": "appointments",
    "new-patients": "new_patients",
    "charges": "charges",
    "eligibility-by-payer": "eligibility",
}


def _figures(
    store: SqlMessageStore, timezone: str, first: date, last: date, only: str | None = None
) -> Figures:
    """The figures of the range: every report's, or only what the CSV ``only`` needs."""
    reports = Reports(store.db_engine, timezone)
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    wanted = set(_SOURCES.values()) if only is None else {_SOURCES[only]}

    def read(source: str) -> Any:
        return getattr(reports, source)(first, last) if source in wanted else {}

    return Figures(
        days, read("appointments"), read("new_patients"), read("charges"), read("eligibility")
    )


async def _audited(request: Request, user: ConsoleUser, store: SqlMessageStore, what: str) -> None:
    await asyncio.to_thread(
        store.record_audit,
        action="view-report",
        actor=user.username,
        source="console",
        message_id=None,
        outcome="ok",
        detail=what,
        peer=user.peer or None,
    )


def _charts(f: Figures) -> list[tuple[str, str, Markup, str]]:
    """(name, title, chart, summary) of each report."""
    labels = [d.strftime("%m-%d") for d in f.days]
    appt = [f.appointments.get(d, AppointmentDay({}, 0)) for d in f.days]
    charges = [f.charges.get(d, ChargeDay()) for d in f.days]
    patients = [a.patients for a in appt]
    new = [f.new_patients.get(d, 0) for d in f.days]
    noshows = sum(a.by_status.get("noshow", 0) for a in appt)
    visits = sum(a.visits for a in appt)
    cancelled = [a.by_status.get("cancelled", 0) for a in appt]
    payers = f.by_payer()
    rate = f"{100 * noshows / visits:.1f}% ({noshows} of {visits})" if visits else "no visits"
    amount = sum(c.amount for c in charges)
    lines = sum(c.lines for c in charges)
    dfts = sum(c.messages for c in charges)
    return [
        (
            "patients-per-day",
            _TITLES["patients-per-day"],
            bar_chart("Patients per day", labels, [Series("patients", patients)]),
            f"{sum(patients)} patient visits booked",
        ),
        (
            "new-patients",
            _TITLES["new-patients"],
            bar_chart("New patients", labels, [Series("new patients", new)]),
            f"{sum(new)} new patients",
        ),
        (
            "no-show-rate",
            _TITLES["no-show-rate"],
            line_chart(
                "No-show rate",
                labels,
                [Series("no-show rate", [a.noshow_rate for a in appt])],
                unit="%",
            ),
            f"no-shows: {rate}",
        ),
        (
            "cancellations",
            _TITLES["cancellations"],
            bar_chart("Cancellations", labels, [Series("cancelled", cancelled)]),
            f"{sum(cancelled)} appointments cancelled",
        ),
        (
            "charges",
            _TITLES["charges"],
            bar_chart(
                "Charges per day", labels, [Series("amount", [c.amount for c in charges])], unit="$"
            ),
            f"${amount:,.2f} in {lines} charge lines, {dfts} DFT messages",
        ),
        (
            "eligibility-by-payer",
            _TITLES["eligibility-by-payer"],
            bar_chart(
                "Eligibility outcomes by payer",
                list(payers),
                [
                    Series(v.replace("_", " "), [payers[p].get(v, 0) for p in payers])
                    for v in _VERDICTS
                ],
            ),
            f"{sum(sum(v.values()) for v in payers.values())} checks, {len(payers)} payers",
        ),
    ]


@router.get("/reports", response_class=HTMLResponse)
async def reports(
    request: Request,
    user: ReportUserDep,
    settings: SettingsDep,
    start: Annotated[str | None, Query(alias="from", max_length=10)] = None,
    end: Annotated[str | None, Query(alias="to", max_length=10)] = None,
) -> HTMLResponse:
    """The reports of the range, each a chart with its CSV link."""
    try:
        first, last = _range(settings, start, end)
    except HTTPException as exc:
        first, last = _range(settings, None, None)
        return render(
            request,
            "reports.html",
            user=user,
            status_code=422,
            refused=exc.detail,
            first=first,
            last=last,
            charts=[],
            query="",
        )
    store = _store(request)
    figures = await asyncio.to_thread(_figures, store, settings.timezone, first, last)
    await _audited(request, user, store, f"reports {first}..{last}")
    return render(
        request,
        "reports.html",
        user=user,
        first=first,
        last=last,
        charts=_charts(figures),
        query=f"from={first}&to={last}",
        timezone=settings.timezone,
    )


def _percent(rate: float | None) -> str:
    return "" if rate is None else f"{rate:.1f}"


def _rows(name: str, f: Figures) -> tuple[list[str], list[list[Any]]]:
    """The header and rows of one report's CSV."""
    appt = {d: f.appointments.get(d, AppointmentDay({}, 0)) for d in f.days}
    makers: dict[str, Callable[[], tuple[list[str], list[list[Any]]]]] = {
        "patients-per-day": lambda: (
            ["day", "patients"],
            [[d.isoformat(), appt[d].patients] for d in f.days],
        ),
        "new-patients": lambda: (
            ["day", "new_patients"],
            [[d.isoformat(), f.new_patients.get(d, 0)] for d in f.days],
        ),
        "no-show-rate": lambda: (
            ["day", "visits", "noshows", "noshow_rate_percent"],
            [
                [
                    d.isoformat(),
                    appt[d].visits,
                    appt[d].by_status.get("noshow", 0),
                    _percent(appt[d].noshow_rate),
                ]
                for d in f.days
            ],
        ),
        "cancellations": lambda: (
            ["day", "cancelled"],
            [[d.isoformat(), appt[d].by_status.get("cancelled", 0)] for d in f.days],
        ),
        "charges": lambda: (
            ["day", "dft_messages", "charge_lines", "amount"],
            [
                [d.isoformat(), c.messages, c.lines, f"{c.amount:.2f}"]
                for d in f.days
                for c in [f.charges.get(d, ChargeDay())]
            ],
        ),
        "eligibility-by-payer": lambda: (
            ["payer", "verdict", "count"],
            [
                [payer, status, n]
                for payer, verdicts in f.by_payer().items()
                for status, n in sorted(verdicts.items())
            ],
        ),
    }
    return makers[name]()


@router.get("/reports/{name}.csv")
async def report_csv(
    request: Request,
    name: str,
    user: ReportUserDep,
    settings: SettingsDep,
    start: Annotated[str | None, Query(alias="from", max_length=10)] = None,
    end: Annotated[str | None, Query(alias="to", max_length=10)] = None,
) -> Response:
    """One report of the range as CSV (the same figures as its chart)."""
    if name not in _TITLES:
        raise HTTPException(404, detail=f"no report named {name!r}")
    first, last = _range(settings, start, end)
    store = _store(request)
    figures = await asyncio.to_thread(_figures, store, settings.timezone, first, last, name)
    header, rows = _rows(name, figures)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows([[csv_cell(v) for v in row] for row in rows])
    await _audited(request, user, store, f"{name}.csv {first}..{last}")
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{name}-{first}-{last}.csv"'},
    )
