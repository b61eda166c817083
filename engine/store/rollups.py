"""The reports' rollup: a closed day's figures, computed once from the rows and kept.

A day of the practice is *closed* :data:`CLOSE_AFTER` after it ends (an hour: a message
received a moment before midnight may commit a moment after it, and the nodes' clocks may
disagree a little); today, and a day that has not been closed that long, is always read from
the rows. A closed day's figures are stored in ``report_rollups`` (per report and day, as JSON,
with the zone they were cut in) the first time a report reads them, and read from there after.

What can still change a closed day is written down by the database itself: triggers (migration
0023) add a row to ``report_changes`` in the same transaction as the change, whichever code
makes it. The changes they note:

=================  =======================================================================
appointments       an Appointment inserted, or its start, status, patient or type changed,
                   once its start has passed: a late no-show (SIU S26), a cancellation or a
                   reschedule recorded after the day (both days), an appointment pulled late
charges            a DFT refused or replayed (or the reverse) over 30 minutes after it came
                   in: a replay takes it from its day, its copy counts today
new patients       a message's patient key changed over 30 minutes after it came in: that
                   day and every later one (who was first may move)
eligibility        a check inserted or changed for a service day up to today (UTC)
=================  =======================================================================

Before a report reads its rollups, :meth:`Rollups.settle` takes those rows and drops the
rollups of the days they touch (an instant's day in the report's zone; a service day as it is);
those days are then read from the rows again and stored again. Nothing else changes a
closed day: a new message is received today, and retention's deletes note nothing, so purging
old messages (or appointments, or checks) leaves the reports as they were.

A rollup computed from rows read before changes were taken must not be stored after them (it
would hide the change for good). ``report_rollup_epoch`` holds a generation that every settle
moves on; a report reads it before it reads the rows, and :meth:`Rollups.store` writes only if
it has not moved, taking that row's lock first (PostgreSQL; SQLite has one writer).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Insert, and_, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from engine.store.db import Repository, aware, utcnow
from engine.store.tables import report_changes, report_rollup_epoch, report_rollups

__all__ = ["CLOSE_AFTER", "Rollups"]

log = logging.getLogger(__name__)

#: how long after its end a day counts as closed (its figures then stored)
CLOSE_AFTER = timedelta(hours=1)
#: changes taken in one transaction (more wait for the next round of the same settle)
_BATCH = 2000
#: days deleted in one statement
_CHUNK = 500
_DAY = timedelta(days=1)


def _upsert_statement(insert: postgresql.Insert | sqlite.Insert) -> Insert:
    excluded = insert.excluded
    return insert.on_conflict_do_update(
        index_elements=[report_rollups.c.report, report_rollups.c.day],
        set_={
            "zone": excluded.zone,
            "figures": excluded.figures,
            "computed_at": excluded.computed_at,
        },
    )


_UPSERT = {
    "postgresql": _upsert_statement(postgresql.insert(report_rollups)),
    "sqlite": _upsert_statement(sqlite.insert(report_rollups)),
}


def _chunks(days: Iterable[date]) -> Iterable[list[date]]:
    ordered = sorted(set(days))
    for i in range(0, len(ordered), _CHUNK):
        yield ordered[i : i + _CHUNK]


class Rollups(Repository):
    """The stored figures of closed days, for one time zone (``Rollups(db_engine, zone)``)."""

    def __init__(self, db_engine: Any, zone: str) -> None:
        super().__init__(db_engine)
        self.zone = zone
        self._zone = ZoneInfo(zone)

    def settle(self) -> int | None:
        """Take the changes noted since the last settle, dropping the rollups of the days they
        touch; the generation a rollup computed from now on is stored under. None when the
        changes could not be taken (SQLite's writer busy past its timeout): then no rollup may
        be read, nor stored."""
        try:
            return self._settle()
        except SQLAlchemyError as exc:
            log.warning("report changes not taken: %s", type(exc).__name__)
            return None

    def _settle(self) -> int:
        e = report_rollup_epoch.c
        while True:
            with self.db_engine.connect() as conn:
                changes = conn.execute(
                    select(
                        report_changes.c.id,
                        report_changes.c.report,
                        report_changes.c.at,
                        report_changes.c.day,
                        report_changes.c.onward,
                    )
                    .order_by(report_changes.c.id)
                    .limit(_BATCH)
                ).all()
                if not changes:  # (no epoch row: nothing is ever stored, store() says so)
                    found = conn.execute(select(e.generation).where(e.id == 1)).scalar()
                    return int(found) if found is not None else -1
            self._take(changes)

    def _take(self, changes: Sequence[Any]) -> None:
        """Drop the rollups the changes touch and the changes, moving the generation on.

        An instant's day in this zone is exact; a rollup cut in another zone (the setting
        changed, or a node disagrees) loses the instant's UTC date and the day either side."""
        here: dict[str, set[date]] = {}  # this zone's days
        elsewhere: dict[str, set[date]] = {}  # other zones' days
        onward: dict[str, tuple[date, date]] = {}  # (this zone's, other zones') first day
        for _, report, at, day, from_on in changes:
            if at is None:  # a service day: the same in every zone
                here.setdefault(report, set()).add(day)
                elsewhere.setdefault(report, set()).add(day)
                continue
            at = aware(at)
            local, utc = at.astimezone(self._zone).date(), at.astimezone(UTC).date()
            if from_on:
                was = onward.get(report, (local, utc - _DAY))
                onward[report] = (min(was[0], local), min(was[1], utc - _DAY))
            else:
                here.setdefault(report, set()).add(local)
                elsewhere.setdefault(report, set()).update((utc - _DAY, utc, utc + _DAY))
        r = report_rollups.c
        with self._tx() as conn:
            conn.execute(
                update(report_rollup_epoch)
                .where(report_rollup_epoch.c.id == 1)
                .values(generation=report_rollup_epoch.c.generation + 1)
            )
            for days_of, zone in ((here, r.zone == self.zone), (elsewhere, r.zone != self.zone)):
                for report, days in days_of.items():
                    for chunk in _chunks(days):
                        conn.execute(
                            delete(report_rollups).where(r.report == report, zone, r.day.in_(chunk))
                        )
            for report, (local, utc) in onward.items():
                conn.execute(
                    delete(report_rollups).where(
                        r.report == report,
                        or_(
                            and_(r.zone == self.zone, r.day >= local),
                            and_(r.zone != self.zone, r.day >= utc),
                        ),
                    )
                )
            ids = [row[0] for row in changes]
            for i in range(0, len(ids), _CHUNK):
                conn.execute(
                    delete(report_changes).where(report_changes.c.id.in_(ids[i : i + _CHUNK]))
                )

    def read(self, report: str, first: date, last: date) -> dict[date, str]:
        """The stored figures (JSON) of the report's days ``first``..``last`` cut in this zone."""
        r = report_rollups.c
        with self.db_engine.connect() as conn:
            rows = conn.execute(
                select(r.day, r.figures).where(
                    r.report == report, r.day >= first, r.day <= last, r.zone == self.zone
                )
            ).all()
        return {(d if isinstance(d, date) else date.fromisoformat(str(d))): f for d, f in rows}

    def store(self, report: str, figures: Mapping[date, str], generation: int) -> bool:
        """Store closed days' figures computed under ``generation``; False (nothing stored)
        when changes were taken since, or the database would not take the write now (the
        figures shown are right either way: the days are read from the rows next time)."""
        if not figures:
            return True
        e = report_rollup_epoch.c
        now = utcnow()
        rows = [
            {"report": report, "day": d, "zone": self.zone, "figures": f, "computed_at": now}
            for d, f in sorted(figures.items())
        ]
        try:
            with self._tx() as conn:
                # takes the row's lock: a settle under way finishes first, and then it shows
                same = conn.execute(
                    update(report_rollup_epoch)
                    .where(e.id == 1, e.generation == generation)
                    .values(generation=e.generation)
                ).rowcount
                if same != 1:
                    return False
                conn.execute(_UPSERT[conn.dialect.name], rows)
        except SQLAlchemyError as exc:  # e.g. SQLite's writer busy past the timeout
            log.warning("report rollup of %s not stored: %s", report, type(exc).__name__)
            return False
        return True
