"""Each kind of rule against the store (and the disk): a :class:`Finding` per subject.

Every query is bounded by an index or a window: dead letters by ``(state, next_attempt_at)``
(``ix_deliveries_due``; a dead delivery keeps the due time of its last attempt, which is when
it was dead-lettered, give or take the attempt), a sender's messages by ``received_at``
(``ix_messages_received``) over the silence asked, the queues by the deliveries not yet
delivered (the backlog the ``/metrics`` gauges read), eligibility checks by their window.

Summaries hold counts, names (route, destination, sender, payer id) and ages, never a message's
content: they go out by e-mail and webhook.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.exc import DBAPIError

from engine.alerts.rules import (
    DAYS,
    AlertConfig,
    AnyRule,
    Database,
    DeadLetters,
    Disk,
    EligibilityFailures,
    QueueAge,
    SenderSilent,
)
from engine.alerts.state import Finding
from engine.settings import Settings
from engine.store.clean import clean
from engine.store.clock import DbClock
from engine.store.db import aware, utcnow
from engine.store.tables import deliveries, eligibility_checks, messages

__all__ = [
    "DOES_NOT_ANSWER",
    "Evaluation",
    "database_finding",
    "evaluate_rules",
    "in_business_hours",
    "store_folder",
]


@dataclass
class Evaluation:
    """What one evaluation found: findings, the rules whose findings name every subject
    (name → kind), and the rules that could not be evaluated (name → why)."""

    findings: list[Finding] = field(default_factory=list)
    complete: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def _ago(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 120:
        return f"{minutes} min"
    hours = minutes // 60
    return f"{hours} h {minutes % 60} min" if hours < 48 else f"{hours // 24} days"


def _listing(counts: list[tuple[str, int]], most: int = 10) -> str:
    parts = [f"{name or '(none)'}: {n}" for name, n in counts[:most]]
    if len(counts) > most:
        parts.append(f"and {len(counts) - most} more")
    return ", ".join(parts)


def _subject(value: str | None) -> str:
    return clean(value or "", 255) or ""


# -- dead letters --------------------------------------------------------------------------------


def dead_letters(conn: Connection, rule: DeadLetters, now: datetime) -> list[Finding]:
    since = now - timedelta(minutes=rule.window_minutes)
    query = (
        select(deliveries.c.destination, func.count())
        .where(deliveries.c.state == "dead", deliveries.c.next_attempt_at >= since)
        .group_by(deliveries.c.destination)
        .order_by(func.count().desc(), deliveries.c.destination)
    )
    if rule.route is not None:
        query = query.where(deliveries.c.route == rule.route)
    if rule.destination is not None:
        query = query.where(deliveries.c.destination == rule.destination)
    counts = [(str(d), int(n)) for d, n in conn.execute(query)]
    total = sum(n for _, n in counts)
    scope = " ".join(
        f"{what} {value}"
        for what, value in (("route", rule.route), ("destination", rule.destination))
        if value is not None
    )
    text = f"{total} deliver{'y' if total == 1 else 'ies'} dead-lettered in the last "
    text += f"{rule.window_minutes} min" + (f" ({scope})" if scope else "")
    if counts:
        text += f": {_listing(counts)}"
    text += f"; threshold {rule.threshold}"
    subject = _subject(rule.destination or rule.route)
    return [Finding(rule.name, subject, rule.kind, total >= rule.threshold, text)]


# -- queue age -----------------------------------------------------------------------------------


def queue_age(conn: Connection, rule: QueueAge, now: datetime) -> list[Finding]:
    query = (
        select(deliveries.c.destination, func.count(), func.min(deliveries.c.created_at))
        .where(deliveries.c.state.in_(("pending", "waiting")))
        .group_by(deliveries.c.destination)
    )
    if rule.destination is not None:
        query = query.where(deliveries.c.destination == rule.destination)
    out = []
    limit = rule.older_than_minutes * 60
    for destination, waiting, oldest in conn.execute(query):
        age = max(0.0, (now - aware(oldest)).total_seconds())
        text = (
            f"{destination}: the oldest undelivered delivery has waited {_ago(age)} "
            f"({int(waiting)} in the queue); limit {rule.older_than_minutes} min"
        )
        out.append(Finding(rule.name, _subject(destination), rule.kind, age >= limit, text))
    return out


# -- a sender's silence --------------------------------------------------------------------------


def in_business_hours(rule: SenderSilent, now: datetime, timezone: str) -> datetime | None:
    """The start of the business period ``now`` is in (aware, UTC), or None outside hours."""
    local = now.astimezone(ZoneInfo(timezone))
    hours = rule.business_hours
    if DAYS[local.weekday()] not in hours.days:
        return None
    start = local.replace(hour=hours.start.hour, minute=hours.start.minute, second=0, microsecond=0)
    end = local.replace(hour=hours.end.hour, minute=hours.end.minute, second=0, microsecond=0)
    if not start <= local < end:
        return None
    return start.astimezone(now.tzinfo)


def sender_silent(
    conn: Connection, rule: SenderSilent, now: datetime, timezone: str
) -> list[Finding]:
    """Raised when, within business hours, nothing came from the sender in the last
    ``silent_minutes`` and the period has lasted that long; cleared by any message in the last
    ``silent_minutes``; otherwise (outside hours, early in the period) left as it is."""
    since = now - timedelta(minutes=rule.silent_minutes)
    heard = conn.execute(
        select(messages.c.id)
        .where(
            messages.c.received_at >= since,
            messages.c.sending_application == rule.sender,
        )
        .limit(1)
    ).first()
    hours = rule.business_hours
    when = f"{','.join(hours.days)} {hours.start:%H:%M}-{hours.end:%H:%M} {timezone}"
    if heard is not None:
        text = f"{rule.sender}: messages in the last {rule.silent_minutes} min"
        return [Finding(rule.name, "", rule.kind, False, text)]
    start = in_business_hours(rule, now, timezone)
    raised: bool | None = None
    if start is not None and now - start >= timedelta(minutes=rule.silent_minutes):
        raised = True
    text = (
        f"{rule.sender}: no message in the last {rule.silent_minutes} min of business hours "
        f"({when})"
    )
    return [Finding(rule.name, "", rule.kind, raised, text)]


# -- eligibility ---------------------------------------------------------------------------------


def eligibility_failures(
    conn: Connection, rule: EligibilityFailures, now: datetime
) -> list[Finding]:
    since = now - timedelta(minutes=rule.window_minutes)
    query = (
        select(eligibility_checks.c.payer_id, func.count())
        .where(
            eligibility_checks.c.checked_at >= since,
            eligibility_checks.c.status.in_(list(rule.statuses)),
        )
        .group_by(eligibility_checks.c.payer_id)
        .order_by(func.count().desc(), eligibility_checks.c.payer_id)
    )
    if rule.payer is not None:
        query = query.where(eligibility_checks.c.payer_id == rule.payer)
    counts = [(str(p), int(n)) for p, n in conn.execute(query)]
    statuses = ", ".join(rule.statuses)
    if rule.per_payer:
        return [
            Finding(
                rule.name,
                _subject(payer),
                rule.kind,
                n >= rule.threshold,
                f"payer {payer}: {n} eligibility check{'s' if n != 1 else ''} {statuses} in "
                f"the last {rule.window_minutes} min; threshold {rule.threshold}",
            )
            for payer, n in counts
        ]
    total = sum(n for _, n in counts)
    text = (
        f"{total} eligibility check{'s' if total != 1 else ''} {statuses} in the last "
        f"{rule.window_minutes} min"
    )
    if counts:
        text += f" (payers {_listing(counts)})"
    text += f"; threshold {rule.threshold}"
    return [Finding(rule.name, _subject(rule.payer), rule.kind, total >= rule.threshold, text)]


# -- disk and database ---------------------------------------------------------------------------


def store_folder(settings: Settings) -> Path:
    """The folder the store writes: the SQLite database's, else ENGINE_VAR_DIR."""
    url = settings.resolved_database_url()
    if url.startswith("sqlite") and ":///" in url:
        path = url.split(":///", 1)[1].split("?", 1)[0]
        if path and path != ":memory:":
            return Path(path).parent
    return settings.var_dir


def disk(rule: Disk, settings: Settings) -> list[Finding]:
    folder = rule.path if rule.path is not None else store_folder(settings)
    if not folder.is_absolute():
        folder = settings.home / folder
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # not made yet: the disk it will be on
    usage = shutil.disk_usage(probe)
    free_mb = usage.free / 2**20
    percent = 100.0 * usage.free / usage.total if usage.total else 0.0
    low = (rule.min_free_mb is not None and free_mb < rule.min_free_mb) or (
        rule.min_free_percent is not None and percent < rule.min_free_percent
    )
    limits = " or ".join(
        text
        for text in (
            f"{rule.min_free_mb} MB" if rule.min_free_mb is not None else "",
            f"{rule.min_free_percent:g} %" if rule.min_free_percent is not None else "",
        )
        if text
    )
    text = (
        f"{folder}: {free_mb:,.0f} MB free of {usage.total / 2**20:,.0f} MB ({percent:.1f} %); "
        f"limit {limits}"
    )
    return [Finding(rule.name, "", rule.kind, low, text)]


#: how the database rule's summary begins when the probe got no answer
DOES_NOT_ANSWER = "the database does not answer"


def database_finding(rule: Database, elapsed_ms: float | None, error: str | None) -> Finding:
    """The database rule's finding from its probe: no answer (``error``), or its time."""
    if error is not None:
        return Finding(rule.name, "", rule.kind, True, f"{DOES_NOT_ANSWER} ({error})")
    assert elapsed_ms is not None
    slow = elapsed_ms > rule.max_query_ms
    text = f"the database answered its probe in {elapsed_ms:.0f} ms; limit {rule.max_query_ms} ms"
    return Finding(rule.name, "", rule.kind, slow, text)


def probe_database(db_engine: Engine) -> float:
    """Milliseconds the probe took: a round trip and an indexed read of the messages. A pooled
    connection the server ended while it was idle less than a second (not pinged:
    engine/store/db.py) fails once and renews the pool: the probe then asks once more, so a
    database already back is not reported as not answering."""
    try:
        return _probe(db_engine)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
    return _probe(db_engine)


def _probe(db_engine: Engine) -> float:
    started = time.perf_counter()
    with db_engine.connect() as conn:
        conn.execute(select(1)).scalar_one()
        conn.execute(select(func.max(messages.c.id))).scalar()
    return (time.perf_counter() - started) * 1000


# -- all of them ---------------------------------------------------------------------------------


def evaluate_rules(
    config: AlertConfig,
    db_engine: Engine,
    settings: Settings,
    *,
    now: datetime | None = None,
    skip: frozenset[str] = frozenset(),
) -> Evaluation:
    """Every rule but the ``database`` ones (:func:`probe_database`, timed apart) and those in
    ``skip``. A rule whose query fails is reported in ``errors`` and changes nothing."""
    now = now or utcnow()
    out = Evaluation()
    for rule in config.rules:
        if rule.name in skip or isinstance(rule, Database):
            continue
        try:
            found = _evaluate(rule, db_engine, settings, now)
        except Exception as exc:  # the database away, a folder gone: this rule waits
            out.errors[rule.name] = type(exc).__name__
            continue
        out.findings.extend(found)
        if isinstance(rule, QueueAge) or (isinstance(rule, EligibilityFailures) and rule.per_payer):
            out.complete[rule.name] = rule.kind
    return out


def _evaluate(rule: AnyRule, db_engine: Engine, settings: Settings, now: datetime) -> list[Any]:
    if isinstance(rule, Disk):
        return disk(rule, settings)
    if isinstance(rule, DeadLetters | QueueAge):
        # the deliveries' times are the database's clock (engine/store/clock.py): so is the
        # window's end, or a leader on a host minutes off would never see a dead letter
        clock = DbClock.for_engine(db_engine)
        now = now + (clock.now() - clock.host())
    with db_engine.connect() as conn:
        if isinstance(rule, DeadLetters):
            return dead_letters(conn, rule, now)
        if isinstance(rule, QueueAge):
            return queue_age(conn, rule, now)
        if isinstance(rule, SenderSilent):
            return sender_silent(conn, rule, now, settings.timezone)
        if isinstance(rule, EligibilityFailures):
            return eligibility_failures(conn, rule, now)
    raise TypeError(f"no evaluation for {rule.kind}")
