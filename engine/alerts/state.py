"""Alerts in the database: raised and recovered, the notice each still owes, and their history.

One row of ``alerts`` per rule and subject (a destination for ``queue-age``, a payer with
``per_payer``, else ``""``). An evaluation's :class:`Finding` moves it::

    (none) ──raised──▶ raised ──clear──▶ recovered ──raised──▶ raised ...
                       notice: raise     notice: recover (only when the raise was notified)

Several worker processes may evaluate the same rules at the same time (each runs the schedule).
Every change is a conditional update (``WHERE state = 'raised'``, an insert that does nothing on
conflict): of two evaluators seeing the same change, one changes the row and records the event;
the other changes nothing. Sending is claimed the same way: the evaluator whose update sets
``sending_by`` on a row that owes a notice (and has no live claim) sends it; the others skip it.
A notice is done when every channel has it (``sent_to``); one that failed on a channel is sent
there, and only there, at the next evaluation. An alert still raised is notified again after
its rule's repeat interval (notice ``repeat``). A raise never notified (every channel failing
until it cleared) is followed by no recovery notice.

Each raise and recovery is also a record of the audit trail (action ``alert``, source ``engine``,
in the same transaction). Only counts, names (rules, routes, destinations, senders, payers) and
ages are stored here, never a message's content.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Connection, Engine, and_, case, delete, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from engine.store.audit import audit
from engine.store.clean import clean_lines
from engine.store.db import Repository, aware, utcnow
from engine.store.tables import alert_events, alerts

__all__ = [
    "ActiveAlert",
    "AlertEvent",
    "AlertRow",
    "AlertStates",
    "Finding",
    "Notice",
    "active_alerts",
    "alert_rows",
    "raised_by_rule",
    "recent_events",
]

#: how long a claim to send a notice holds before another evaluator may take it over
SEND_LEASE = timedelta(minutes=2)
#: how long the history (and alerts recovered) is kept
KEEP = timedelta(days=90)


@dataclass(frozen=True)
class Finding:
    """One rule's verdict for one subject: ``raised`` True or False, or None when it cannot
    tell (outside a sender's business hours, its query failed): the state is left as it is."""

    rule: str
    subject: str
    kind: str
    raised: bool | None
    summary: str


@dataclass(frozen=True)
class Notice:
    """A notice claimed for sending: ``raise``, ``repeat`` or ``recover``, and the channels
    that already have it."""

    rule: str
    subject: str
    kind: str
    notice: str
    summary: str
    raised_at: datetime
    recovered_at: datetime | None
    sent_to: frozenset[str]


@dataclass(frozen=True)
class ActiveAlert:
    """A raised alert, as the dashboard shows it."""

    rule: str
    subject: str
    kind: str
    summary: str
    raised_at: datetime
    notified_at: datetime | None
    last_error: str | None

    def since(self, timezone: str = "UTC") -> str:
        """When it was raised, in ``timezone`` (the page's ENGINE_TIMEZONE)."""
        return _local(self.raised_at, timezone)


@dataclass(frozen=True)
class AlertRow:
    """An alert in any state (the console's list)."""

    rule: str
    subject: str
    kind: str
    state: str
    summary: str
    raised_at: datetime
    recovered_at: datetime | None
    notified_at: datetime | None
    notice: str | None
    last_error: str | None

    def at(self, field: str, timezone: str = "UTC") -> str:
        """One of its times (``raised_at``, ``recovered_at``, ``notified_at``) in ``timezone``."""
        value = getattr(self, field)
        return _local(value if isinstance(value, datetime) else None, timezone)


@dataclass(frozen=True)
class AlertEvent:
    """One line of the history: raised, recovered, notified, failed."""

    at: datetime
    rule: str
    subject: str
    event: str
    detail: str | None

    def when(self, timezone: str = "UTC") -> str:
        """Its time in ``timezone``."""
        return _local(self.at, timezone)


def _local(value: datetime | None, timezone: str) -> str:
    if value is None:
        return ""
    try:
        zone = ZoneInfo(timezone)
    except (ValueError, ZoneInfoNotFoundError):
        zone = ZoneInfo("UTC")
    return value.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")


def _opt(value: datetime | None) -> datetime | None:
    return aware(value) if value is not None else None


def _event(
    conn: Connection, now: datetime, rule: str, subject: str, event: str, detail: str | None
) -> None:
    conn.execute(
        insert(alert_events).values(
            at=now, rule=rule, subject=subject, event=event, detail=clean_lines(detail, 2000)
        )
    )


_key = (alerts.c.rule, alerts.c.subject)


def _is(rule: str, subject: str) -> Any:
    return and_(alerts.c.rule == rule, alerts.c.subject == subject)


class AlertStates(Repository):
    """The ``alerts`` and ``alert_events`` tables."""

    # -- transitions -------------------------------------------------------------------------

    def apply(
        self,
        findings: Iterable[Finding],
        complete: Mapping[str, str] | None = None,
        *,
        now: datetime | None = None,
    ) -> list[tuple[str, str, str]]:
        """Record an evaluation; the transitions this call made, as (rule, subject, event).

        ``complete``: rules (name → kind) whose findings name every subject there is; a raised
        alert of such a rule that no finding names has cleared (a destination whose queue
        emptied). Rules no longer in the file are left alone here (:meth:`retire`)."""
        now = now or utcnow()
        made: list[tuple[str, str, str]] = []
        found = list(findings)
        with self._tx() as conn:
            for f in found:
                event = self._one(conn, f, now)
                if event:
                    made.append((f.rule, f.subject, event))
            named = {(f.rule, f.subject) for f in found}
            for rule, kind in (complete or {}).items():
                raised = conn.execute(
                    select(alerts.c.subject).where(
                        alerts.c.rule == rule, alerts.c.state == "raised"
                    )
                ).scalars()
                for subject in list(raised):
                    if (rule, subject) not in named:
                        gone = Finding(rule, subject, kind, False, f"{subject}: cleared")
                        if self._one(conn, gone, now):
                            made.append((rule, subject, "recovered"))
            # last in the transaction, after the alerts' rows: the audit trail locks its head
            summaries = {(f.rule, f.subject): f.summary for f in found}
            for rule, subject, event in made:
                about = rule + (f" ({subject})" if subject else "")
                why = summaries.get((rule, subject), "cleared")
                audit(
                    conn,
                    action="alert",
                    actor="engine",
                    source="engine",
                    message_id=None,
                    outcome="ok",
                    detail=f"{event}: {about}: {why}",
                )
        return made

    def _insert_raised(self, conn: Connection, f: Finding, now: datetime) -> bool:
        row = {
            "rule": f.rule,
            "subject": f.subject,
            "kind": f.kind,
            "state": "raised",
            "summary": clean_lines(f.summary, 2000),
            "raised_at": now,
            "notice": "raise",
            "sent_to": "",
            "updated_at": now,
        }
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        stmt = dialect.insert(alerts).values(row).on_conflict_do_nothing()
        return conn.execute(stmt.returning(alerts.c.rule)).first() is not None

    def _one(self, conn: Connection, f: Finding, now: datetime) -> str | None:
        summary = clean_lines(f.summary, 2000)
        if f.raised is None:
            return None
        if f.raised:
            if self._insert_raised(conn, f, now):
                _event(conn, now, f.rule, f.subject, "raised", summary)
                return "raised"
            again = conn.execute(
                update(alerts)
                .where(_is(f.rule, f.subject), alerts.c.state == "recovered")
                .values(
                    state="raised",
                    kind=f.kind,
                    summary=summary,
                    raised_at=now,
                    recovered_at=None,
                    # a recovery not yet sent: its readers still believe it raised
                    notice=_case_reraise(),
                    sent_to="",
                    last_error=None,
                    updated_at=now,
                )
            )
            if again.rowcount:
                _event(conn, now, f.rule, f.subject, "raised", summary)
                return "raised"
            conn.execute(
                update(alerts)
                .where(_is(f.rule, f.subject), alerts.c.state == "raised")
                .values(summary=summary, updated_at=now)
            )
            return None
        cleared = conn.execute(
            update(alerts)
            .where(_is(f.rule, f.subject), alerts.c.state == "raised")
            .values(
                state="recovered",
                summary=summary,
                recovered_at=now,
                notice=_case_recover(),
                sent_to="",
                updated_at=now,
            )
        )
        if cleared.rowcount:
            _event(conn, now, f.rule, f.subject, "recovered", summary)
            return "recovered"
        return None

    def prune(self, *, now: datetime | None = None, keep: timedelta = KEEP) -> int:
        """Forget history older than ``keep``: its events, and alerts recovered that long ago
        (a raised alert is never forgotten); how many rows went."""
        cutoff = (now or utcnow()) - keep
        with self._tx() as conn:
            events = conn.execute(delete(alert_events).where(alert_events.c.at < cutoff))
            old = conn.execute(
                delete(alerts).where(
                    alerts.c.state == "recovered",
                    alerts.c.notice.is_(None),
                    alerts.c.updated_at < cutoff,
                )
            )
        return int(events.rowcount or 0) + int(old.rowcount or 0)

    def retire(self, rules: Iterable[str], *, now: datetime | None = None) -> int:
        """Alerts of rules no longer in the file: recovered without a notice; how many."""
        now = now or utcnow()
        keep = list(rules)
        with self._tx() as conn:
            done = conn.execute(
                update(alerts)
                .where(alerts.c.state == "raised", alerts.c.rule.not_in(keep))
                .values(
                    state="recovered",
                    recovered_at=now,
                    notice=None,
                    sent_to="",
                    summary="the rule was removed from alerts.yaml",
                    updated_at=now,
                )
            )
            return int(done.rowcount or 0)

    # -- notices -----------------------------------------------------------------------------

    def claim_notices(
        self,
        node: str,
        repeat_minutes: Mapping[str, int],
        *,
        now: datetime | None = None,
        lease: timedelta = SEND_LEASE,
    ) -> list[Notice]:
        """The notices this evaluator is to send: those owed with no live claim, claimed for
        ``node`` (an update that only one evaluator can make). Alerts raised and notified longer
        ago than their rule's ``repeat_minutes`` (when above 0) owe a ``repeat`` first."""
        now = now or utcnow()
        claimed: list[Notice] = []
        with self._tx() as conn:
            for rule, minutes in repeat_minutes.items():
                if minutes > 0:
                    conn.execute(
                        update(alerts)
                        .where(
                            alerts.c.rule == rule,
                            alerts.c.state == "raised",
                            alerts.c.notice.is_(None),
                            alerts.c.notified_at <= now - timedelta(minutes=minutes),
                        )
                        .values(notice="repeat", sent_to="", updated_at=now)
                    )
            free = or_(alerts.c.sending_until.is_(None), alerts.c.sending_until < now)
            owed = conn.execute(
                select(alerts).where(alerts.c.notice.is_not(None), free).order_by(*_key)
            ).all()
            for row in owed:
                taken = conn.execute(
                    update(alerts)
                    .where(_is(row.rule, row.subject), alerts.c.notice == row.notice, free)
                    .values(sending_by=node, sending_until=now + lease)
                )
                if taken.rowcount:
                    claimed.append(
                        Notice(
                            row.rule,
                            row.subject,
                            row.kind,
                            row.notice,
                            row.summary,
                            aware(row.raised_at),
                            _opt(row.recovered_at),
                            frozenset(c for c in (row.sent_to or "").split(",") if c),
                        )
                    )
        return claimed

    def finish_notice(
        self,
        notice: Notice,
        node: str,
        *,
        channels: Iterable[str],
        delivered: Iterable[str],
        failed: Mapping[str, str],
        now: datetime | None = None,
    ) -> bool:
        """Record what sending ``notice`` did: the channels that now have it (``delivered``)
        and those that failed, with why (no PHI: the channel's error). Done when every channel
        of ``channels`` has it; else it stays owed for the others. False when the claim was no
        longer ``node``'s (nothing recorded)."""
        now = now or utcnow()
        wanted = set(channels)
        got = set(delivered)
        with self._tx() as conn:
            lock = select(alerts).where(_is(notice.rule, notice.subject))
            if conn.dialect.name == "postgresql":
                lock = lock.with_for_update()
            row = conn.execute(lock).first()
            if row is None or row.sending_by != node:
                return False
            values: dict[str, Any] = {"sending_by": None, "sending_until": None, "updated_at": now}
            sent_raise = notice.notice in ("raise", "repeat") and bool(got)
            if row.notice == notice.notice:
                have = set(notice.sent_to) | got
                if have >= wanted:
                    values.update(notice=None, sent_to="", last_error=None)
                    if notice.notice in ("raise", "repeat"):
                        values["notified_at"] = now
                else:
                    values["sent_to"] = ",".join(sorted(have))
            elif sent_raise:
                # it cleared while the raise was being sent: whoever got the raise gets the
                # recovery (the transition found no notified raise, so it owed none)
                values["notified_at"] = now
                if row.state == "recovered" and row.notice is None:
                    values.update(notice="recover", sent_to="")
            if failed:
                values["last_error"] = clean_lines(
                    "; ".join(f"{c}: {why}" for c, why in sorted(failed.items())), 2000
                )
            conn.execute(
                update(alerts)
                .where(_is(notice.rule, notice.subject), alerts.c.sending_by == node)
                .values(**values)
            )
            if got:
                _event(
                    conn,
                    now,
                    notice.rule,
                    notice.subject,
                    "notified",
                    f"{notice.notice} to {', '.join(sorted(got))}",
                )
            if failed:
                _event(conn, now, notice.rule, notice.subject, "failed", values["last_error"])
        return True


def _case_reraise() -> Any:
    return case((alerts.c.notice == "recover", None), else_="raise")


def _case_recover() -> Any:
    return case((alerts.c.notified_at.is_not(None), "recover"), else_=None)


# -- what the console reads ---------------------------------------------------------------------


def active_alerts(db_engine: Engine, *, limit: int = 100) -> list[ActiveAlert]:
    """The alerts raised now, newest first (the dashboard's ``partials/alerts.html``)."""
    with db_engine.connect() as conn:
        rows = conn.execute(
            select(alerts)
            .where(alerts.c.state == "raised")
            .order_by(alerts.c.raised_at.desc(), *_key)
            .limit(limit)
        ).all()
    return [
        ActiveAlert(
            r.rule,
            r.subject,
            r.kind,
            r.summary,
            aware(r.raised_at),
            _opt(r.notified_at),
            r.last_error,
        )
        for r in rows
    ]


def raised_by_rule(db_engine: Engine) -> dict[str, int]:
    """How many alerts each rule has raised now (one per subject), for the rules that have one:
    the ``engine_alerts_active`` gauge (engine/alerts/gauge.py), read at each scrape. One query
    on ``ix_alerts_state``, over the raised rows only."""
    with db_engine.connect() as conn:
        rows = conn.execute(
            select(alerts.c.rule, func.count())
            .where(alerts.c.state == "raised")
            .group_by(alerts.c.rule)
        ).all()
    return {str(rule): int(n) for rule, n in rows}


def alert_rows(db_engine: Engine, *, limit: int = 200) -> list[AlertRow]:
    """Every alert, raised ones first, then the most recently changed."""
    with db_engine.connect() as conn:
        rows = conn.execute(
            select(alerts).order_by(alerts.c.state.desc(), alerts.c.updated_at.desc()).limit(limit)
        ).all()
    return [
        AlertRow(
            r.rule,
            r.subject,
            r.kind,
            r.state,
            r.summary,
            aware(r.raised_at),
            _opt(r.recovered_at),
            _opt(r.notified_at),
            r.notice,
            r.last_error,
        )
        for r in rows
    ]


def recent_events(db_engine: Engine, *, limit: int = 100) -> list[AlertEvent]:
    """The newest lines of the alerts' history."""
    with db_engine.connect() as conn:
        rows = conn.execute(
            select(alert_events)
            .order_by(alert_events.c.at.desc(), alert_events.c.id.desc())
            .limit(limit)
        ).all()
    return [AlertEvent(aware(r.at), r.rule, r.subject, r.event, r.detail) for r in rows]
