"""Eligibility checks (X12 270/271): a history of every check, attached to its appointment.

The eligibility job writes a row per check and reads back whether a patient was already checked
with a payer today; the CLI and the API list a day's results. A check made by a scheduled run is
recorded as one of that run's items (``job_run_items``) in the same transaction: a run resumed
by another node after the first died knows exactly which appointments were checked, and sends no
second 270 for them.

Only the node that holds the run (its owner in ``job_runs``, the run not finished) starts or
records its items, checked in the same transaction (engine/store/nodes.py :func:`holds_run`): a
node that stood still while another resumed its run is refused (:class:`RunTakenOver`) before
it sends a 270 the run's new owner may send too. And an item is started once: the 270 goes out
only from the call that wrote its row.

An item is a digest, 64 hex digits and no PHI (engine/jobs/targets.py ``Target.key``): the
first :data:`CHECK_DIGITS` name the check (appointment, patient, coverage, payer), the last 32 its
member (patient, payer: whom a 270 asks about, whichever appointment it is for). An item written
before the member was part of it (64 digits of the check, a run of an earlier version) is the same
check by its first 32.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import cached_property
from typing import Any

from sqlalchemy import and_, insert, not_, select, update

from engine.store.db import Repository, utcnow
from engine.store.nodes import RunTakenOver, holds_run
from engine.store.tables import eligibility_checks, job_run_items

__all__ = ["CHECK_DIGITS", "EligibilityChecks", "RunItem", "RunProgress", "RunTakenOver"]

#: an item's first hex digits, which name its check; the rest name its member (patient, payer)
CHECK_DIGITS = 32


@dataclass(frozen=True)
class RunItem:
    """One item of a scheduled run: the run (job id, fire time), the item's digest, the node."""

    job_id: str
    run_at: datetime
    item: str
    node: str


@dataclass(frozen=True)
class RunProgress:
    """A scheduled run of the checks: which run (job id, fire time), on which node, and the
    items it has done already (a resumed run: the digest of each, its check's id)."""

    job_id: str
    run_at: datetime
    node: str
    done: Mapping[str, int | None]

    def item(self, key: str) -> RunItem:
        return RunItem(self.job_id, self.run_at, key, self.node)

    @cached_property
    def _by_check(self) -> dict[str, str]:
        return {stored[:CHECK_DIGITS]: stored for stored in self.done}

    def earlier(self, key: str) -> str | None:
        """The item this run recorded for the check ``key`` already, as it is stored (an earlier
        version's digest for the same check too), or None."""
        return self._by_check.get(key[:CHECK_DIGITS])


def _item_key(item: RunItem) -> dict[str, Any]:
    return {"job_id": item.job_id, "run_at": item.run_at.astimezone(UTC), "item": item.item}


def _item_is(item: RunItem) -> tuple[Any, ...]:
    return (
        job_run_items.c.job_id == item.job_id,
        job_run_items.c.run_at == item.run_at.astimezone(UTC),
        job_run_items.c.item == item.item,
    )


def _utc(value: datetime) -> datetime:
    """An aware time in UTC. SQLite drops the offset and keeps the wall time, and the readers
    take a naive time as UTC: an appointment at 09:00-05:00 kept as "09:00" came back as 04:00
    in New York."""
    return value.astimezone(UTC) if value.tzinfo is not None else value


class EligibilityChecks(Repository):
    """Rows of ``eligibility_checks``, as dicts keyed by column name."""

    def save_eligibility(self, row: dict[str, Any], item: RunItem | None = None) -> int:
        """Store one eligibility check (history: a new row every time); its id. ``item``: the
        scheduled run's item this check is, recorded done in the same transaction (the row
        :meth:`start_run_item` made before its 270 went out, or a new one) while its node
        still holds the run. When it does not (another node resumed the run) the check is
        stored all the same, as what the payer said, but the item is left to the run's owner."""
        row = {k: _utc(v) if isinstance(v, datetime) else v for k, v in row.items()}
        with self._tx() as conn:
            pk = conn.execute(insert(eligibility_checks).values(**row)).inserted_primary_key
            assert pk is not None
            if item is not None and holds_run(conn, item.job_id, item.run_at, item.node):
                done = {"result_id": int(pk[0]), "node": item.node, "done_at": utcnow()}
                updated = conn.execute(
                    update(job_run_items).where(*_item_is(item)).values(**done)
                ).rowcount
                if not updated:
                    conn.execute(insert(job_run_items).values(**_item_key(item), **done))
            return int(pk[0])

    def start_run_item(self, item: RunItem) -> bool:
        """Record that a scheduled run's item is about to ask the payer (its 270 may be out from
        now on): a run resumed after this node died finds the item without a result and does
        not send a second 270 for it (see engine/jobs/eligibility.py). True: recorded now, the
        270 may go. False: the item has a row already (started or done by another node of the
        run): no 270. Raises :class:`RunTakenOver` when ``item.node`` no longer holds the run."""
        with self._tx() as conn:
            if not holds_run(conn, item.job_id, item.run_at, item.node):
                raise RunTakenOver(f"job run {item.job_id} is no longer this node's")
            exists = conn.execute(select(job_run_items.c.item).where(*_item_is(item))).first()
            if exists is not None:
                return False
            # ``done_at`` is when it started until the result comes (``result_id`` None)
            conn.execute(
                insert(job_run_items).values(**_item_key(item), node=item.node, done_at=utcnow())
            )
            return True

    def run_item_open(self, item: str, since: datetime, other_than: RunItem | None) -> bool:
        """Whether a scheduled run started, since ``since``, an item of the same member as
        ``item`` (a check's digest: the same patient with the same payer, for this appointment
        or another) or of the same check, and has no result for it: its 270 went out from a
        node that stopped before the answer was recorded (or is still waiting for it). A new
        run, which may start before that run is resumed, must not send a second 270 about that
        member: the payer would be asked the same question twice. Nor may the resumed run
        itself, for another of the member's appointments. ``other_than``: the asking item (not
        itself in flight; a run's own checks of one member go one at a time)."""
        since = since.astimezone(UTC)
        check, member = item[:CHECK_DIGITS], item[CHECK_DIGITS:]
        same = job_run_items.c.item.startswith(check, autoescape=True)
        if member:
            same = same | job_run_items.c.item.endswith(member, autoescape=True)
        query = select(job_run_items.c.item).where(
            same,
            job_run_items.c.result_id.is_(None),
            job_run_items.c.done_at >= since,
        )
        if other_than is not None:
            query = query.where(not_(and_(*_item_is(other_than))))
        with self.db_engine.connect() as conn:
            return conn.execute(query.limit(1)).first() is not None

    def eligibility_checked(
        self, patient_url: str, payer_id: str, since: datetime
    ) -> dict[str, Any] | None:
        """The newest check of a patient with a payer since ``since`` (no repeat the same day)."""
        since = since.astimezone(UTC)  # SQLite keeps naive UTC
        with self.db_engine.connect() as conn:
            row = conn.execute(
                select(eligibility_checks)
                .where(
                    eligibility_checks.c.patient_url == patient_url,
                    eligibility_checks.c.payer_id == payer_id,
                    eligibility_checks.c.checked_at >= since,
                    eligibility_checks.c.status != "payer_unavailable",
                )
                .order_by(eligibility_checks.c.id.desc())
                .limit(1)
            ).one_or_none()
        return {str(k): v for k, v in row._mapping.items()} if row else None

    def eligibility_for_day(self, day: date) -> list[dict[str, Any]]:
        """The latest check per appointment (or patient) for appointments on ``day``."""
        with self.db_engine.connect() as conn:
            # str(): the keys are SQLAlchemy's quoted_name, which orjson refuses as keys
            rows = [
                {str(k): v for k, v in r._mapping.items()}
                for r in conn.execute(
                    select(eligibility_checks)
                    .where(eligibility_checks.c.service_date == day)
                    .order_by(eligibility_checks.c.id)
                )
            ]
        latest: dict[str, dict[str, Any]] = {}
        for r in rows:
            latest[r["appointment_url"] or r["patient_url"]] = r
        return sorted(
            latest.values(), key=lambda r: (r["appointment_start"] is None, r["appointment_start"])
        )
