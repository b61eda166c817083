"""The console's reports: figures per day of the practice, from what the store already holds.

=====================  =====================================================================
patients per day       distinct patients with an appointment that day (the resource index:
                       Appointment by ``start``), cancelled, no-show and entered-in-error ones
                       left out
new patients           patients (``messages.patient_key``: PID-3's authority and ID) whose
                       first message the engine ever received arrived that day
appointments           per appointment day, how many there are by status: the no-show rate
                       (SIU S26, Appointment ``noshow``) over those not cancelled, and the
                       cancellations (SIU S15/S16, ``cancelled``)
charges                DFT messages received that day (not refused, not replayed), their
                       charge lines (FT1 whose type, table 0017, is not CD/PY/AJ/CO) and the
                       amount (FT1-11, else FT1-12 × FT1-10 quantity)
eligibility            per payer, the latest check of each appointment (or patient) and
                       service day, by verdict
=====================  =====================================================================

A day is the practice's (``ENGINE_TIMEZONE``): the range's days are cut into spans of one UTC
offset (:func:`offset_spans`, split at daylight-saving changes), and each span's rows are
grouped by ``date(t + offset)`` in SQL, so the database hands back a row per day (and status,
or payer), not a row per message. Every statement is bounded by the range on an indexed column
(``ix_messages_received``, ``ix_fhir_resources_start``, ``ix_eligibility_day``; the new
patients' "seen before?" probes ``ix_messages_patient``).

A store of a million messages holds tens of thousands a day, and reading a month of them takes
seconds however it is grouped; so a closed day's figures (an hour after it ends) are read from
the rows once and stored (engine/store/rollups.py: ``report_rollups``), and read from there
after; a late change to a closed day (a no-show recorded the day after, a DFT replayed, a check
for a past day) is noted by the database's triggers and drops that day's rollup, so it is read
from the rows again: a report shows the same figures as reading every row would. Today and the
days not yet closed are read from the rows, kept per process for :data:`KEEP_TODAY_S`. Only the
days not stored or kept are read, in as few statements as there are runs of them. Retention's
deletes change no stored day: purged messages stay counted on their days.

Incomplete: the "first message" of new patients is the first the store still holds (retention
purges old messages); amounts assume one currency.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from typing import Any, Generic, TypeVar
from zoneinfo import ZoneInfo

import orjson
from sqlalchemy import (
    ColumnElement,
    Date,
    and_,
    cast,
    exists,
    func,
    literal_column,
    or_,
    select,
)
from sqlalchemy.engine import Connection

from engine.store.db import Repository
from engine.store.rollups import CLOSE_AFTER, Rollups
from engine.store.tables import eligibility_checks, fhir_resources, messages

__all__ = [
    "KEEP_TODAY_S",
    "MAX_DAYS",
    "AppointmentDay",
    "ChargeDay",
    "Reports",
    "clear_kept",
    "offset_spans",
]

#: how long the figures of a day not yet closed (today, days ahead) are kept in the process
KEEP_TODAY_S = 60.0
#: the longest range a report covers
MAX_DAYS = 366
#: appointment states that are no visit
_NOT_A_VISIT = ("cancelled", "noshow", "entered-in-error")
#: FT1-6 transaction types that are not charges (table 0017: credit, payment, adjustment, co-pay)
_NOT_CHARGES = frozenset({"CD", "PY", "AJ", "CO"})
_KEPT_MAX = 50_000

V = TypeVar("V")


@dataclass(frozen=True)
class AppointmentDay:
    """One day's appointments: how many in each status, and distinct patients with a visit."""

    by_status: dict[str, int]
    patients: int

    @property
    def visits(self) -> int:
        """Appointments neither cancelled nor entered in error (the no-show rate's base)."""
        return sum(
            n for s, n in self.by_status.items() if s not in ("cancelled", "entered-in-error")
        )

    @property
    def noshow_rate(self) -> float | None:
        """No-shows per visit booked, in percent (None: no visit that day)."""
        return 100.0 * self.by_status.get("noshow", 0) / self.visits if self.visits else None


@dataclass(frozen=True)
class ChargeDay:
    """One day's charge messages (DFT), charge lines and their amount."""

    messages: int = 0
    lines: int = 0
    amount: float = 0.0


@dataclass(frozen=True)
class Span:
    """Part of a range with one UTC offset: [start, end) in UTC, the offset in minutes."""

    start: datetime
    end: datetime
    offset: int


def _midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, dtime.min, zone).astimezone(UTC)


def _offset(at: datetime, zone: ZoneInfo) -> int:
    delta = at.astimezone(zone).utcoffset() or timedelta(0)
    return int(delta.total_seconds() // 60)


def offset_spans(first: date, last: date, zone: ZoneInfo) -> list[Span]:
    """The days ``first``..``last`` (inclusive) of ``zone`` as spans of one UTC offset each,
    split at the instant the offset changes (found to the second: zones change on seconds)."""
    spans: list[Span] = []

    def add(start: datetime, end: datetime, offset: int) -> None:
        if spans and spans[-1].offset == offset and spans[-1].end == start:
            spans[-1] = Span(spans[-1].start, end, offset)
        else:
            spans.append(Span(start, end, offset))

    day = first
    while day <= last:
        start, end = _midnight(day, zone), _midnight(day + timedelta(days=1), zone)
        offset = _offset(start, zone)
        if _offset(end - timedelta(seconds=1), zone) == offset:
            add(start, end, offset)
        else:  # the change is in (lo, hi] seconds: halve to the second
            lo, hi = int(start.timestamp()), int(end.timestamp())
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _offset(datetime.fromtimestamp(mid, UTC), zone) == offset:
                    lo = mid
                else:
                    hi = mid
            change = datetime.fromtimestamp(hi, UTC)
            add(start, change, offset)
            add(change, end, _offset(change, zone))
        day += timedelta(days=1)
    return spans


def _local_day(conn: Connection, column: Any, offset: int) -> ColumnElement[Any]:
    """The practice's day of a UTC time column, for a span of one offset (SQLite and
    PostgreSQL spell it differently; both are read back with :func:`_as_date`)."""
    if conn.dialect.name == "sqlite":
        return func.date(column, f"{offset:+d} minutes")
    shifted = func.timezone("UTC", column) + literal_column(f"INTERVAL '{int(offset)} minutes'")
    return cast(shifted, Date)


def _as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def _utc(value: datetime) -> datetime:
    """SQLite keeps naive UTC (the store writes every time in UTC)."""
    return value.replace(tzinfo=None) if value.tzinfo is not None else value


class _Kept:
    """Days' figures by database (weakly: a disposed engine takes its figures along), report
    and day, each until its time is up."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: weakref.WeakKeyDictionary[Any, dict[tuple[str, date], tuple[float, Any]]]
        self._items = weakref.WeakKeyDictionary()

    def get(self, db_engine: Any, key: tuple[str, date]) -> tuple[bool, Any]:
        with self._lock:
            found = self._items.get(db_engine, {}).get(key)
        if found is None or found[0] < time.monotonic():
            return False, None
        return True, found[1]

    def put(self, db_engine: Any, key: tuple[str, date], value: Any, keep_s: float) -> None:
        with self._lock:
            items = self._items.setdefault(db_engine, {})
            if len(items) >= _KEPT_MAX:
                now = time.monotonic()
                live = {k: v for k, v in items.items() if v[0] >= now}
                items.clear()
                if len(live) < _KEPT_MAX:
                    items.update(live)
            items[key] = (time.monotonic() + keep_s, value)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_kept = _Kept()


def _runs(days: Iterable[date]) -> Iterator[tuple[date, date]]:
    """Consecutive days as (first, last) runs."""
    run: list[date] = []
    for day in sorted(days):
        if run and day != run[-1] + timedelta(days=1):
            yield run[0], run[-1]
            run = []
        run.append(day)
    if run:
        yield run[0], run[-1]


@dataclass(frozen=True)
class _Codec(Generic[V]):
    """A day's figures as the JSON a rollup keeps, and back (the same values: floats and
    ints round-trip exactly)."""

    encode: Callable[[V], str]
    decode: Callable[[str], V]


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _appointment_day(text: str) -> AppointmentDay:
    got = orjson.loads(text)
    return AppointmentDay(dict(got["by_status"]), int(got["patients"]))


_APPOINTMENTS: _Codec[AppointmentDay] = _Codec(
    lambda a: _json({"by_status": a.by_status, "patients": a.patients}), _appointment_day
)
_COUNT: _Codec[int] = _Codec(_json, lambda t: int(orjson.loads(t)))
_CHARGES: _Codec[ChargeDay] = _Codec(
    lambda c: _json([c.messages, c.lines, c.amount]),
    lambda t: ChargeDay(*orjson.loads(t)),
)
_ELIGIBILITY: _Codec[dict[tuple[str, str], int]] = _Codec(
    lambda e: _json(sorted([payer, status, n] for (payer, status), n in e.items())),
    lambda t: {(payer, status): n for payer, status, n in orjson.loads(t)},
)


class Reports(Repository):
    """The reports' statements (``Reports(store.db_engine)``); days in ``timezone``."""

    def __init__(self, db_engine: Any, timezone: str) -> None:
        super().__init__(db_engine)
        self.zone = ZoneInfo(timezone)

    # -- per day: closed days stored, the others kept briefly ------------------------------

    def _per_day(
        self,
        report: str,
        first: date,
        last: date,
        compute: Callable[[Connection, date, date], dict[date, V]],
        empty: V,
        codec: _Codec[V],
    ) -> dict[date, V]:
        """``compute`` over the days neither stored (closed days, engine/store/rollups.py) nor
        kept (the others, :data:`KEEP_TODAY_S`), as few runs as possible; then the closed days
        computed are stored, the others kept."""
        if (last - first).days + 1 > MAX_DAYS:
            raise ValueError(f"a report covers at most {MAX_DAYS} days")
        # days before ``closed_before`` have been over for CLOSE_AFTER
        closed_before = (datetime.now(self.zone) - CLOSE_AFTER).date()
        days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
        out: dict[date, V] = {}
        rollups = Rollups(self.db_engine, self.zone.key)
        generation = None
        if first < closed_before:
            generation = rollups.settle()  # before any row is read (rollups.py says why)
        if generation is not None:
            last_closed = min(last, closed_before - timedelta(days=1))
            for day, text in rollups.read(report, first, last_closed).items():
                out[day] = codec.decode(text)
        kept_key = f"{report}@{self.zone.key}"
        missing = []
        for day in days:
            if day in out:
                continue
            if day >= closed_before:
                found, value = _kept.get(self.db_engine, (kept_key, day))
                if found:
                    out[day] = value
                    continue
            missing.append(day)
        closed: dict[date, str] = {}
        if missing:
            with self.db_engine.connect() as conn:
                for run_first, run_last in _runs(missing):
                    got = compute(conn, run_first, run_last)
                    for i in range((run_last - run_first).days + 1):
                        day = run_first + timedelta(days=i)
                        out[day] = got.get(day, empty)
                        if day < closed_before:
                            closed[day] = codec.encode(out[day])
                        else:
                            _kept.put(self.db_engine, (kept_key, day), out[day], KEEP_TODAY_S)
        if generation is not None:
            rollups.store(report, closed, generation)
        return out

    def appointments(self, first: date, last: date) -> dict[date, AppointmentDay]:
        """Per appointment day: counts by status, and distinct patients with a visit."""
        return self._per_day(
            "appointments", first, last, self._appointments, AppointmentDay({}, 0), _APPOINTMENTS
        )

    def _appointments(
        self, conn: Connection, first: date, last: date
    ) -> dict[date, AppointmentDay]:
        statuses: dict[date, dict[str, int]] = {}
        patients: dict[date, int] = {}
        fr = fhir_resources.c
        for span in offset_spans(first, last, self.zone):
            day = _local_day(conn, fr.start, span.offset)
            where = and_(
                fr.resource_type == "Appointment",
                fr.start >= _utc(span.start),
                fr.start < _utc(span.end),
            )
            for d, status, n in conn.execute(
                select(day, fr.status, func.count()).where(where).group_by(day, fr.status)
            ):
                into = statuses.setdefault(_as_date(d), {})
                into[status or "unknown"] = into.get(status or "unknown", 0) + int(n)
            visits = and_(
                where,
                fr.patient_url.is_not(None),
                or_(fr.status.is_(None), fr.status.not_in(_NOT_A_VISIT)),
            )
            for d, n in conn.execute(
                select(day, func.count(fr.patient_url.distinct())).where(visits).group_by(day)
            ):
                patients[_as_date(d)] = patients.get(_as_date(d), 0) + int(n)
        return {d: AppointmentDay(s, patients.get(d, 0)) for d, s in statuses.items()}

    def new_patients(self, first: date, last: date) -> dict[date, int]:
        """Per day: patients whose first message in the store arrived that day."""
        return self._per_day("new-patients", first, last, self._new_patients, 0, _COUNT)

    def _new_patients(self, conn: Connection, first: date, last: date) -> dict[date, int]:
        m = messages.c
        out: dict[date, int] = {}
        for span in offset_spans(first, last, self.zone):
            start, end = _utc(span.start), _utc(span.end)
            first_id = conn.execute(
                select(m.id).where(m.received_at >= start).order_by(m.received_at, m.id).limit(1)
            ).scalar_one_or_none()
            if first_id is None:
                continue
            seen = (
                select(m.patient_key.label("patient"), func.min(m.received_at).label("at"))
                .where(m.received_at >= start, m.received_at < end, m.patient_key.is_not(None))
                .group_by(m.patient_key)
                .subquery()
            )
            earlier = messages.alias("earlier")
            before = exists().where(
                earlier.c.patient_key == seen.c.patient, earlier.c.id < first_id
            )
            day = _local_day(conn, seen.c.at, span.offset)
            for d, n in conn.execute(
                select(day, func.count()).select_from(seen).where(~before).group_by(day)
            ):
                out[_as_date(d)] = out.get(_as_date(d), 0) + int(n)
        return out

    def charges(self, first: date, last: date) -> dict[date, ChargeDay]:
        """Per day: DFT messages received (not refused, not replayed), charge lines, amount."""
        return self._per_day("charges", first, last, self._charges, ChargeDay(), _CHARGES)

    def _charges(self, conn: Connection, first: date, last: date) -> dict[date, ChargeDay]:
        from engine.hl7v2.codec import parse_message

        m = messages.c
        totals: dict[date, list[float]] = {}
        start, end = _midnight(first, self.zone), _midnight(last + timedelta(days=1), self.zone)
        rows = conn.execute(
            select(m.received_at, m.raw).where(
                m.received_at >= _utc(start),
                m.received_at < _utc(end),
                m.message_type == "DFT",
                m.state.not_in(("error", "replayed")),
            )
        )
        for received, raw in rows:
            at = received if received.tzinfo else received.replace(tzinfo=UTC)
            into = totals.setdefault(at.astimezone(self.zone).date(), [0, 0, 0.0])
            into[0] += 1
            try:
                segments = parse_message(bytes(raw)).all("FT1")
            except Exception:  # a DFT the engine could not read still counts as a message
                continue
            for ft1 in segments:
                if ft1.get(6) in _NOT_CHARGES:
                    continue
                into[1] += 1
                into[2] += _amount(ft1)
        return {d: ChargeDay(int(v[0]), int(v[1]), round(v[2], 2)) for d, v in totals.items()}

    def eligibility(self, first: date, last: date) -> dict[date, dict[tuple[str, str], int]]:
        """Per service day: (payer, verdict) -> appointments (or patients) whose latest check
        that day for that payer had that verdict."""
        return self._per_day("eligibility", first, last, self._eligibility, {}, _ELIGIBILITY)

    def _eligibility(
        self, conn: Connection, first: date, last: date
    ) -> dict[date, dict[tuple[str, str], int]]:
        e = eligibility_checks.c
        who = func.coalesce(e.appointment_url, e.patient_url)
        ranked = (
            select(
                e.service_date,
                func.coalesce(e.payer_name, e.payer_id).label("payer"),
                e.status,
                func.row_number()
                .over(partition_by=(who, e.payer_id, e.service_date), order_by=e.id.desc())
                .label("n"),
            )
            .where(e.service_date >= first, e.service_date <= last)
            .subquery()
        )
        out: dict[date, dict[tuple[str, str], int]] = {}
        for d, payer, status, n in conn.execute(
            select(ranked.c.service_date, ranked.c.payer, ranked.c.status, func.count())
            .where(ranked.c.n == 1)
            .group_by(ranked.c.service_date, ranked.c.payer, ranked.c.status)
        ):
            out.setdefault(_as_date(d), {})[(payer or "", status)] = int(n)
        return out


def _amount(ft1: Any) -> float:
    """A charge line's amount: FT1-11 (extended), else FT1-12 (unit) × FT1-10 (quantity, 1)."""
    for text, times in ((ft1.get(11), "1"), (ft1.get(12), ft1.get(10) or "1")):
        try:
            if text:
                return float(text) * float(times)
        except ValueError:
            continue
    return 0.0


def clear_kept() -> None:
    """Forget every kept day (tests; a database rewritten under a running engine)."""
    _kept.clear()
