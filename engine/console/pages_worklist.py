"""The console: the front desk's eligibility worklist (owner: front-office pages).

``/console/worklist?day=YYYY-MM-DD`` (default: the next business day where the practice is,
ENGINE_TIMEZONE: Monday after a Friday)
lists the day's appointments, at their time in the practice's zone, with the patient's name and
MRN and the latest eligibility check of each (engine.jobs.eligibility.worklist, the shape of
``engine eligibility list`` and ``GET /api/eligibility``): the verdict, the copay to collect,
the deductible left, and what needs a call and why. An appointment not checked yet is listed
too (the job skips a cancelled one and one whose patient has no coverage with a payer; so does
the page), so the list is the day's, not only the checked part of it.

Re-check (POST, CSRF) asks the payer again now, for one appointment or the whole day, through
the engine's eligibility service as ``POST /api/eligibility/check?force=true`` and ``engine
eligibility check --force`` do (the same service method per appointment; a check made today is
asked again: the front desk asked). The page shows what came back.

Front desk and viewers see the page; front desk (and admins) re-check. Each view and re-check
is recorded in the audit trail (source ``console``): the list names patients. Names are shown on
the page and never logged (logs carry counts and outcomes).

This module also holds what the front desk's two pages share (pages_documents imports it): who
may see, who may act, and the store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse

from engine.api.auth import Role
from engine.api.deps import SettingsDep
from engine.console.auth import ConsoleUser, ConsoleUserDep, CsrfDep, require_console
from engine.console.days import next_business_day
from engine.console.render import render
from engine.jobs.targets import payer_coverages
from engine.store import SqlMessageStore, Who

__all__ = [
    "FrontDeskDep",
    "FrontDeskViewerDep",
    "WorklistRow",
    "day_rows",
    "router",
    "store_of",
    "who_of",
]

log = logging.getLogger(__name__)

router = APIRouter()

#: the days a front desk can mean (as GET /api/eligibility takes them)
_FIRST_DAY = date(1900, 1, 1)
_LAST_DAY = date(2999, 12, 31)
#: appointment states the eligibility job does not check (nor lists)
_SKIPPED = frozenset({"cancelled", "entered-in-error", "noshow"})
#: the longest a re-check of a whole day may take before the page answers (the checks go on)
_RECHECK_S = 120.0
#: re-checks still running after the page answered (kept so they are not collected)
_RUNNING: set[asyncio.Future[list[Any]]] = set()
#: the verdicts as the front desk reads them
_LABELS = {
    "eligible": "eligible",
    "inactive": "not active",
    "needs_action": "needs action",
    "payer_unavailable": "payer unavailable",
    "not_checked": "not checked",
    "no_coverage": "no coverage on file",
}


def _front_desk_viewer() -> Callable[..., Awaitable[ConsoleUser]]:
    async def dependency(user: ConsoleUserDep) -> ConsoleUser:
        if not (user.may(Role.FRONT_DESK) or user.may(Role.VIEWER)):
            from engine.console.sessions import forbidden

            raise forbidden(Role.FRONT_DESK, user)
        return user

    return dependency


#: may see the front desk's pages: front desk, viewers (and admins)
FrontDeskViewerDep = Annotated[ConsoleUser, Depends(_front_desk_viewer())]
#: may act on them (upload, match, re-check): front desk and admins
FrontDeskDep = Annotated[ConsoleUser, Depends(require_console(Role.FRONT_DESK))]


def who_of(user: ConsoleUser) -> Who:
    """The user as the store's audit actor, from the console."""
    return Who(user.username, "console", user.peer or None)


def store_of(request: Request) -> SqlMessageStore | None:
    """The engine's store (None when the app runs without one: the pages say so)."""
    context = getattr(request.app.state, "context", None)
    store = getattr(context, "messages", None)
    return store if isinstance(store, SqlMessageStore) else None


def _eligibility(request: Request) -> Any:
    return getattr(request.app.state, "eligibility", None)


@dataclass(frozen=True)
class WorklistRow:
    """One appointment of the day as the page shows it."""

    appointment: str | None
    time: str | None
    patient_name: str | None
    mrn: str | None
    payer: str | None
    status: str
    copay: str | None
    deductible_remaining: str | None
    #: somebody must call (the patient or the payer) before the visit
    call: bool
    #: why, or what the verdict rests on
    why: str
    checked_at: str | None

    @property
    def label(self) -> str:
        return _LABELS.get(self.status, self.status.replace("_", " "))


def _to_do(status: str, reason: str | None, plan: str | None) -> tuple[bool, str]:
    """Whether the front desk must call before the visit, and why (the payer's words kept)."""
    said = f": {reason}" if reason else ""
    if status == "eligible":
        return False, f"covered{f' ({plan})' if plan else ''}"
    if status == "inactive":
        return True, f"coverage not active: ask the patient for their current insurance{said}"
    if status == "needs_action":
        return True, f"the payer could not confirm coverage{said}"
    if status == "payer_unavailable":
        return False, f"the payer did not answer: re-check later{said}"
    if status == "no_coverage":
        return True, "no insurance with a payer on file: confirm self-pay or get the card"
    if status == "not_checked":
        return False, "not checked yet: re-check, or wait for the schedule"
    return True, reason or status


def _checked_row(r: dict[str, Any]) -> WorklistRow:
    call, why = _to_do(r["status"], r.get("reason"), r.get("plan"))
    checked = r.get("checked_at")
    return WorklistRow(
        appointment=r.get("appointment"),
        time=r.get("time"),
        patient_name=r.get("patient_name"),
        mrn=r.get("mrn"),
        payer=r.get("payer_name") or r.get("payer_id"),
        status=r["status"],
        copay=r.get("copay"),
        deductible_remaining=r.get("deductible_remaining"),
        call=call,
        why=why,
        checked_at=checked[:16].replace("T", " ") if checked else None,
    )


def day_rows(store: SqlMessageStore, day: date, timezone: str) -> list[WorklistRow]:
    """The day's appointments: each checked one's latest check, then those not checked yet,
    in the order of their time in ``timezone``."""
    from engine.jobs.eligibility import patient_label, worklist

    zone = ZoneInfo(timezone)
    checked = worklist(store, day, timezone)
    rows = [_checked_row(r) for r in checked]
    seen = {r["appointment"] for r in checked if r.get("appointment")}
    first = datetime.combine(day, time.min, zone)
    waiting: list[tuple[str | None, datetime, list[str]]] = []
    for appt in store.appointments_between(first, first + timedelta(days=1)):
        url = appt.get("_full_url")
        if url in seen or appt.get("status") in _SKIPPED:
            continue
        start = datetime.fromisoformat(str(appt["start"]).replace("Z", "+00:00")).astimezone(zone)
        if start.date() != day:
            continue
        refs = [(p.get("actor") or {}).get("reference", "") for p in appt.get("participant", [])]
        waiting.append((url, start, [r for r in refs if r]))
    found = store.resources_by_url(r for _, _, refs in waiting for r in refs)
    patients = {u: r for u, r in found.items() if r.get("resourceType") == "Patient"}
    insured = {url for url, pairs in payer_coverages(store, patients).items() if pairs}
    for url, start, refs in waiting:
        for ref in refs:
            patient = patients.get(ref)
            if patient is None:
                continue
            name, mrn = patient_label(patient)
            status = "not_checked" if ref in insured else "no_coverage"
            call, why = _to_do(status, None, None)
            rows.append(
                WorklistRow(
                    appointment=url,
                    time=start.strftime("%H:%M"),
                    patient_name=name,
                    mrn=mrn,
                    payer=None,
                    status=status,
                    copay=None,
                    deductible_remaining=None,
                    call=call,
                    why=why,
                    checked_at=None,
                )
            )
    return sorted(rows, key=lambda r: (r.time is None, r.time or ""))


def _day(value: str | None, timezone: str) -> tuple[date, str | None]:
    """The day asked for (the next business day when none), or that day and what is wrong with
    the one asked for."""
    if not value:
        return next_business_day(timezone), None
    try:
        day = date.fromisoformat(value.strip())
    except ValueError:
        return next_business_day(timezone), f"{value[:32]!r} is not a day (YYYY-MM-DD)"
    if not _FIRST_DAY <= day <= _LAST_DAY:
        return next_business_day(timezone), f"the day must lie between {_FIRST_DAY} and {_LAST_DAY}"
    return day, None


@dataclass(frozen=True)
class _Notice:
    ok: bool
    text: str


def _page(
    request: Request,
    user: ConsoleUser,
    day: date,
    timezone: str,
    *,
    notice: _Notice | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    """The worklist for ``day``, its view recorded in the audit trail (blocking)."""
    store = store_of(request)
    service = _eligibility(request)
    rows: list[WorklistRow] = []
    if store is None and service is not None:
        store = service.store if isinstance(service.store, SqlMessageStore) else None
    if store is None:
        notice = _Notice(False, "no store: the worklist is shown by engine serve")
        status_code = 503
    else:
        rows = day_rows(store, day, timezone)
        store.record_audit(
            action="view-worklist",
            actor=user.username,
            source="console",
            message_id=None,
            outcome="ok",
            detail=f"day {day.isoformat()}: {len(rows)} appointments shown",
            peer=user.peer or None,
            patients=[r.mrn for r in rows],  # one record per patient shown
        )
    return render(
        request,
        "worklist.html",
        user=user,
        status_code=status_code,
        day=day,
        previous_day=day - timedelta(days=1),
        next_day=day + timedelta(days=1),
        timezone=timezone,
        rows=rows,
        calls=sum(1 for r in rows if r.call),
        notice=notice,
        can_act=user.may(Role.FRONT_DESK),
        can_check=service is not None,
    )


@router.get("/worklist", response_class=HTMLResponse)
def worklist_page(
    request: Request,
    user: FrontDeskViewerDep,
    settings: SettingsDep,
    day: Annotated[str | None, Query(max_length=32)] = None,
) -> HTMLResponse:
    """The day's appointments and their eligibility (audited)."""
    wanted, problem = _day(day, settings.timezone)
    notice = _Notice(False, problem) if problem else None
    return _page(
        request,
        user,
        wanted,
        settings.timezone,
        notice=notice,
        status_code=422 if problem else 200,
    )


async def _recheck(service: Any, day: date, appointment: str | None) -> list[Any]:
    """Ask the payer again about ``day``'s appointments (or one of them), each as the job asks
    (:meth:`EligibilityService.check`, forced); one that fails is reported, not raised."""
    from engine.jobs.eligibility import CheckOutcome

    targets = [
        t
        for t in await asyncio.to_thread(service.targets, day, 1)
        if t.service_date == day and (appointment is None or t.appointment_url == appointment)
    ]

    async def one(target: Any) -> Any:
        try:
            return await service.check(target, force=True)
        except Exception as exc:  # one bad check must not lose the others
            log.warning("eligibility re-check failed", extra={"error": type(exc).__name__})
            return CheckOutcome(
                None, "needs_action", "", "", reason=f"internal error ({type(exc).__name__})"
            )

    return list(await asyncio.gather(*(one(t) for t in targets)))


def _patient_of(store: SqlMessageStore, appointment_url: str) -> str | None:
    """The MRN of one appointment's patient (the audit record's patient key), or None."""
    from engine.jobs.eligibility import patient_label

    appointment = store.resource(appointment_url) or {}
    for part in appointment.get("participant") or []:
        ref = (part.get("actor") or {}).get("reference", "")
        patient = store.resource(ref) if ref else None
        if patient is not None and patient.get("resourceType") == "Patient":
            return patient_label(patient)[1]
    return None


def _summary(outcomes: list[Any]) -> str:
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    return ", ".join(f"{n} {_LABELS.get(k, k)}" for k, n in sorted(counts.items()))


@router.post("/worklist/recheck", response_class=HTMLResponse)
async def recheck(
    request: Request,
    user: CsrfDep,
    actor: FrontDeskDep,
    settings: SettingsDep,
    day: Annotated[str, Form(max_length=32)],
    appointment: Annotated[str, Form(max_length=512)] = "",
) -> HTMLResponse:
    """Re-check one appointment (``appointment``: its URL) or every one of ``day`` now."""
    wanted, problem = _day(day, settings.timezone)
    service = _eligibility(request)
    which = appointment.strip() or None
    scope = f"appointment {which}" if which else f"day {wanted.isoformat()}"
    if problem or service is None:
        text = problem or "eligibility checks are not configured (no payers)"
        return await asyncio.to_thread(
            _page,
            request,
            user,
            wanted,
            settings.timezone,
            notice=_Notice(False, text),
            status_code=422 if problem else 503,
        )
    task = asyncio.ensure_future(_recheck(service, wanted, which))
    _RUNNING.add(task)
    task.add_done_callback(_RUNNING.discard)
    try:  # shielded: past the wait the page answers, and the checks go on
        outcomes: list[Any] | None = await asyncio.wait_for(asyncio.shield(task), _RECHECK_S)
    except TimeoutError:
        outcomes = None
    store = service.store
    if outcomes is None:
        notice = _Notice(False, "the payers take long to answer: the checks go on; reload soon")
        outcome = "error"
    elif not outcomes:
        where = "for that appointment" if which else f"on {wanted.isoformat()}"
        notice = _Notice(
            False,
            f"nothing to check {where}: no appointment whose patient has coverage with a payer "
            "on file (or it was cancelled)",
        )
        outcome = "refused"
    else:
        notice = _Notice(True, f"{len(outcomes)} checked: {_summary(outcomes)}")
        outcome = "ok"
    await asyncio.to_thread(
        store.record_audit,
        action="recheck-eligibility",
        actor=user.username,
        source="console",
        message_id=None,
        outcome=outcome,
        detail=f"{scope}: {notice.text}"[:500],
        peer=user.peer or None,
        patient_key=await asyncio.to_thread(_patient_of, store, which) if which else None,
    )
    log.info(
        "eligibility re-checked from the console",
        extra={"checked": len(outcomes or ()), "outcome": outcome},
    )
    return await asyncio.to_thread(_page, request, user, wanted, settings.timezone, notice=notice)
