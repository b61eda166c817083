"""What the eligibility job checks: each appointment of the coming business days whose patient
has an active Coverage whose payor is an Organization, read from the resource index
(engine/store/index.py), never from a FHIR server.

A run reads the window's appointments a page at a time (:data:`PAGE`, in the order of their
start; the next page starts after the last one's start and row), and each page's patients,
coverages, payers and subscribers in one query each. Its memory is a page's resources whatever
the window holds, and its queries are a handful a page. Reading every appointment of the window
at once, four queries each, made the run's peak memory and its time grow with the day's
appointments: in the hour-long soak (5 December 2026, one new appointment every 2 s, eligibility
every 2 minutes) the worker's RSS climbed 16 MB an hour with it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from engine.store.eligibility import CHECK_DIGITS
from engine.store.index import ResourceIndex

__all__ = ["PAGE", "Target", "business_days", "payer_coverages", "payer_id", "target_pages"]

#: appointments read at a time
PAGE = 200

#: appointments the job does not check
_SKIPPED = frozenset({"cancelled", "entered-in-error", "noshow"})


def business_days(start: date, count: int) -> list[date]:
    """``count`` business days from ``start`` (inclusive), skipping Saturdays and Sundays."""
    out: list[date] = []
    day = start
    while len(out) < count:
        if day.weekday() < 5:
            out.append(day)
        day += timedelta(days=1)
    return out


def payer_id(org: dict[str, Any]) -> str:
    """The payer's ID: the payer Organization's first identifier with a value."""
    for ident in org.get("identifier", []):
        if ident.get("value"):
            return str(ident["value"])
    return ""


def digest(*parts: str) -> str:
    """:data:`CHECK_DIGITS` hex digits of a digest of ``parts`` (no PHI in the run's items)."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:CHECK_DIGITS]


@dataclass(frozen=True)
class Target:
    """One check: an appointment, its patient, one of the patient's coverages and its payer."""

    appointment_url: str | None
    appointment_start: datetime | None
    service_date: date
    patient: dict[str, Any]
    coverage: dict[str, Any]
    payer: dict[str, Any]
    subscriber: dict[str, Any] | None

    @property
    def member(self) -> str:
        """Whom the check asks the payer about (patient, payer), as 32 hex digits of a digest."""
        return digest(str(self.patient.get("_full_url", "")), payer_id(self.payer))

    @property
    def key(self) -> str:
        """The check's identity within a run, as a digest (no PHI in ``job_run_items``): 32 hex
        digits of the check (appointment, patient, coverage, payer), then the :attr:`member`'s
        (engine/store/eligibility.py)."""
        return (
            digest(
                self.appointment_url or "",
                str(self.patient.get("_full_url", "")),
                str(self.coverage.get("_full_url", "")),
                payer_id(self.payer),
            )
            + self.member
        )


def target_pages(
    index: ResourceIndex, timezone: str, start: date, days: int, page: int = PAGE
) -> Iterator[list[Target]]:
    """The checks of the appointments in ``days`` business days from ``start``, a page of
    appointments at a time (a page may give no check, or several for one appointment: one per
    active coverage). Each page is read when asked for, each query on its own connection: no
    read stays open between pages."""
    tz = ZoneInfo(timezone)
    dates = business_days(start, days)
    first = datetime.combine(dates[0], time.min, tz)
    last = datetime.combine(dates[-1] + timedelta(days=1), time.min, tz)
    after: tuple[datetime, int] | None = None
    while True:
        appointments, after = index.appointment_page(first, last, after, page)
        yield _targets(index, appointments, frozenset(dates), tz)
        if after is None:
            return


def _targets(
    index: ResourceIndex,
    appointments: Iterable[dict[str, Any]],
    dates: frozenset[date],
    tz: ZoneInfo,
) -> list[Target]:
    """The checks of one page of appointments, in their order (then the participants', then
    each patient's coverages oldest first)."""
    booked: list[tuple[dict[str, Any], datetime, list[str]]] = []
    for appt in appointments:
        if appt.get("status") in _SKIPPED:
            continue
        start_at = datetime.fromisoformat(str(appt["start"]).replace("Z", "+00:00"))
        if start_at.astimezone(tz).date() not in dates:
            continue
        refs = [(p.get("actor") or {}).get("reference", "") for p in appt.get("participant", [])]
        booked.append((appt, start_at, [r for r in refs if r]))
    found = index.resources_by_url(r for _, _, refs in booked for r in refs)
    patients = {u: r for u, r in found.items() if r.get("resourceType") == "Patient"}
    insured = payer_coverages(index, patients)
    subscribers = index.resources_by_url(
        sub
        for url, pairs in insured.items()
        for coverage, _ in pairs
        if (sub := _ref(coverage.get("subscriber"))) and sub != url
    )
    out: list[Target] = []
    for appt, start_at, refs in booked:
        for ref in refs:
            patient = patients.get(ref)
            if patient is None:
                continue
            for coverage, payer in insured[ref]:
                sub_ref = _ref(coverage.get("subscriber"))
                out.append(
                    Target(
                        appt["_full_url"],
                        start_at,
                        start_at.astimezone(tz).date(),
                        patient,
                        coverage,
                        payer,
                        subscribers.get(sub_ref) if sub_ref and sub_ref != ref else None,
                    )
                )
    return out


def payer_coverages(
    index: ResourceIndex, patient_urls: Iterable[str]
) -> dict[str, list[tuple[dict[str, Any], dict[str, Any]]]]:
    """Each patient's active Coverages whose payor is an Organization, with that payer, oldest
    first: what the job asks a payer about (a self-pay Coverage, whose payor is the Patient,
    has no payer to ask). Two queries whatever the number of patients."""
    coverages = index.resources_for_patients("Coverage", patient_urls)
    active = {
        url: [c for c in covs if c.get("status", "active") == "active"]
        for url, covs in coverages.items()
    }
    payors = index.resources_by_url(
        ref for covs in active.values() for c in covs if (ref := _ref(c.get("payor")))
    )
    return {
        url: [
            (c, payer)
            for c in covs
            if (payer := payors.get(_ref(c.get("payor")))) is not None
            and payer.get("resourceType") == "Organization"
        ]
        for url, covs in active.items()
    }


def _ref(value: Any) -> str:
    """The reference of a Reference, or of the first of a list of them ("" when none)."""
    if isinstance(value, list):
        value = value[0] if value else None
    return str((value or {}).get("reference", "")) if isinstance(value, dict) else ""
