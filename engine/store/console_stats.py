"""What the console's operations pages read and write (issue 13): the dashboard's figures, one
message in full, "mark handled", and the worker's circuit breakers.

Every dashboard query is bounded by time and stands on an index, so it costs the same on a
million stored messages as on a hundred (what it reads grows with the traffic of the window, not
with the table):

========================================  ===================================================
deliveries made in the last hour / day,   ``ix_deliveries_created (created_at, route,
per route, destination and state          destination, state)``: read from the index alone
                                          (PostgreSQL: the hour counted in the day's pass)
messages received per state in the hour   ``ix_messages_received (received_at, id)``: one
and the day, the ingest rate per minute   read of the day's messages for the three
/ hour                                    (:meth:`ConsoleStats.received_figures`)
the queue (pending, waiting) per          ``ix_deliveries_due (state, next_attempt_at)``
destination, dead letters, last error
tomorrow's eligibility                    ``ix_eligibility_day (service_date, id)``
breakers                                  ``destination_breakers`` (a row per destination and
                                          worker node; the nodes' heartbeats say which live)
========================================  ===================================================

The breaker lives in the worker process (engine/flow/deliver.py, :class:`~engine.retry.
CircuitBreaker`); the dispatcher writes a row here when one opens or closes (never on every
delivery), so the dashboard shows what the worker does without asking it.

The ACK is not stored: the engine builds it from the stored message's id and receive time, so
the console builds the same bytes again (:func:`engine.console.er7.rebuilt_ack`).

Each delivery's attempts come from engine/store/attempts.py (a row per failed attempt; a
first-time success is the delivery row itself); a resend's row links to the delivery it
replaces.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    String,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    literal_column,
    select,
)

from engine.store.attempts import attempt_history
from engine.store.audit import audit
from engine.store.db import Repository, aware, utcnow
from engine.store.handled import HANDLEABLE_STATES, Handled, handled_of
from engine.store.lists import in_list
from engine.store.nodes import dead_after
from engine.store.operator import Who
from engine.store.search import MessageQuery, _time_bounds, _where
from engine.store.tables import (
    deliveries,
    destination_breakers,
    eligibility_checks,
    message_handled,
    messages,
    nodes,
)
from engine.store.views import AttemptView

__all__ = [
    "HANDLEABLE_STATES",
    "Breaker",
    "ConsoleStats",
    "DashboardFigures",
    "DeliveryDetail",
    "DestinationFigures",
    "Handled",
    "MessageDetail",
    "ReceivedFigures",
    "RouteFigures",
    "WindowCounts",
]

#: a delivery's payload shown on the message page at most (a document's envelope may be large)
PAYLOAD_SHOWN_BYTES = 256 * 1024
#: a message's bytes read for the page at most (an MDM may carry megabytes of base64: the page
#: names its segments from the start, the download has it whole)
RAW_SHOWN_BYTES = 512 * 1024
#: how much of a breaker's last error is kept
_ERROR_CHARS = 500


@dataclass
class WindowCounts:
    """Deliveries made in a window and where they stand now."""

    made: int = 0
    delivered: int = 0
    dead: int = 0
    needs_patient: int = 0
    queued: int = 0
    resent: int = 0

    @property
    def errors(self) -> int:
        return self.dead + self.needs_patient

    def add(self, state: str, n: int) -> None:
        self.made += n
        if state == "delivered":
            self.delivered += n
        elif state == "dead":
            self.dead += n
        elif state == "needs-patient":
            self.needs_patient += n
        elif state in ("pending", "waiting"):
            self.queued += n
        elif state == "resent":
            self.resent += n


@dataclass(frozen=True)
class Breaker:
    """A destination's circuit breaker as the live worker nodes last reported it."""

    open: bool
    since: datetime
    failures: int
    last_error: str | None


@dataclass
class RouteFigures:
    """One route and destination: its deliveries of the last hour and of the last day."""

    route: str
    destination: str
    hour: WindowCounts = field(default_factory=WindowCounts)
    day: WindowCounts = field(default_factory=WindowCounts)


@dataclass
class DestinationFigures:
    """One destination now: its queue, dead letters, breaker and last error."""

    destination: str
    queued: int = 0
    oldest_age_s: float | None = None
    dead: int = 0
    breaker: Breaker | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None


@dataclass(frozen=True)
class ReceivedFigures:
    """Messages received in the last hour and day, per state they are in now, and the ingest
    rate's buckets (oldest first)."""

    hour: dict[str, int]
    day: dict[str, int]
    rate: list[tuple[datetime, int]]


@dataclass(frozen=True)
class DashboardFigures:
    """Everything the dashboard shows from the database but its alerts, read at once."""

    routes: list[RouteFigures]
    destinations: dict[str, DestinationFigures]
    received: ReceivedFigures
    eligibility: dict[str, int]


@dataclass(frozen=True)
class DeliveryDetail:
    """One delivery of a message, its payload included (the message page shows it)."""

    id: int
    destination: str
    route: str
    kind: str
    content_type: str
    state: str
    attempts: int
    last_error: str | None
    created_at: datetime
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    resend_of: int | None
    #: the payload, at most PAYLOAD_SHOWN_BYTES of it
    payload: bytes
    payload_size: int
    #: each attempt, oldest first (engine/store/attempts.py)
    history: tuple[AttemptView, ...] = ()


@dataclass(frozen=True)
class MessageDetail:
    """One message in full: metadata, the bytes as received, every delivery, the operator's mark."""

    id: int
    received_at: datetime
    channel: str
    peer: str
    kind: str
    size: int
    control_id: str | None
    message_type: str | None
    trigger: str | None
    structure: str | None
    sender: str | None
    patient_key: str | None
    state: str
    reason: str | None
    warnings: tuple[str, ...]
    replay_of: int | None
    #: the bytes as received, at most RAW_SHOWN_BYTES of them (``size`` says how many there are)
    raw: bytes
    deliveries: tuple[DeliveryDetail, ...]
    handled: Handled | None
    #: taken at receipt (it has the idempotent receiver's key, which only an accepted original
    #: gets): its ACK was positive; a replay's copy was never acknowledged to anyone
    accepted: bool = False

    @property
    def raw_cut(self) -> bool:
        """Only the first part of the bytes is here."""
        return len(self.raw) < self.size

    @property
    def destinations(self) -> list[str]:
        """The destinations the message has (a resend may name one of them)."""
        return sorted({d.destination for d in self.deliveries})


def _grouped(column: Any, name: str) -> Any:
    """A column to group by as an expression (``col || ''``): SQLite would otherwise walk a
    whole index led by that column to get its rows in order (every delivery, to count the few
    queued or dead), where the index on the filter reads only the rows asked for."""
    return column.op("||")(literal_column("''")).label(name)


_DESTINATION = _grouped(deliveries.c.destination, "destination")
#: the deliveries made since a time, from the covering index alone (a CASE counting the hour
#: within the day's pass measured slower on SQLite than a second, small range)
_WINDOW = (
    select(
        deliveries.c.route,
        deliveries.c.destination,
        deliveries.c.state,
        func.count().label("n"),
    )
    .where(deliveries.c.created_at >= bindparam("since"))
    .group_by(deliveries.c.route, deliveries.c.destination, deliveries.c.state)
)
#: PostgreSQL: the hour counted within the day's pass (one read of the index, not two)
_WINDOWS = _WINDOW.add_columns(
    func.count().filter(deliveries.c.created_at >= bindparam("hour")).label("hour_n")
)
_STATE = _grouped(messages.c.state, "state")
_RECEIVED = (
    select(_STATE, func.count().label("n"))
    .where(messages.c.received_at >= bindparam("since"))
    .group_by(_STATE)
)
_QUEUE = (
    select(
        _DESTINATION,
        func.count().label("n"),
        func.min(deliveries.c.created_at).label("oldest"),
    )
    .where(deliveries.c.state.in_(("pending", "waiting")))
    .group_by(_DESTINATION)
)
_DEAD = (
    select(_DESTINATION, func.count().label("n"))
    .select_from(
        deliveries.outerjoin(
            message_handled, message_handled.c.message_id == deliveries.c.message_id
        )
    )
    .where(deliveries.c.state == "dead", message_handled.c.message_id.is_(None))
    .group_by(_DESTINATION)
)
#: the newest failed or retrying delivery with an error, per destination (of the last day)
_LAST_FAILED = (
    select(_DESTINATION, func.max(deliveries.c.id).label("id"))
    .where(
        deliveries.c.state.in_(("pending", "dead", "needs-patient")),
        deliveries.c.last_error.is_not(None),
        deliveries.c.created_at >= bindparam("since"),
    )
    .group_by(_DESTINATION)
)
_ERRORS_OF = select(deliveries.c.id, deliveries.c.last_error, deliveries.c.created_at).where(
    in_list(deliveries.c.id)
)
_BREAKERS = (
    select(destination_breakers)
    .select_from(destination_breakers.join(nodes, nodes.c.id == destination_breakers.c.node))
    .where(nodes.c.heartbeat_at >= bindparam("alive_since"))
    .order_by(destination_breakers.c.changed_at)
)
_ELIGIBILITY = (
    select(
        eligibility_checks.c.id,
        eligibility_checks.c.appointment_url,
        eligibility_checks.c.patient_url,
        eligibility_checks.c.status,
    )
    .where(eligibility_checks.c.service_date == bindparam("day"))
    .order_by(eligibility_checks.c.id)
)
_MESSAGE = select(
    messages.c.id,
    messages.c.received_at,
    messages.c.channel,
    messages.c.peer,
    messages.c.kind,
    messages.c.size,
    messages.c.control_id,
    messages.c.message_type,
    messages.c.trigger,
    messages.c.structure,
    messages.c.sending_application,
    messages.c.sending_facility,
    messages.c.patient_key,
    messages.c.state,
    messages.c.reason,
    messages.c.warnings,
    messages.c.replay_of,
    func.substr(messages.c.raw, 1, RAW_SHOWN_BYTES).label("raw"),
    messages.c.dedupe_key,
).where(messages.c.id == bindparam("mid"))
_DELIVERIES = (
    select(
        deliveries.c.id,
        deliveries.c.destination,
        deliveries.c.route,
        deliveries.c.kind,
        deliveries.c.content_type,
        deliveries.c.state,
        deliveries.c.attempts,
        deliveries.c.last_error,
        deliveries.c.created_at,
        deliveries.c.next_attempt_at,
        deliveries.c.delivered_at,
        deliveries.c.resend_of,
        func.substr(deliveries.c.payload, 1, PAYLOAD_SHOWN_BYTES).label("payload"),
        func.length(deliveries.c.payload).label("payload_size"),
    )
    .where(deliveries.c.message_id == bindparam("mid"))
    .order_by(deliveries.c.id)
)


def _bucket(db: str, span: str) -> ColumnElement[Any]:
    """The start of a received time's minute or hour, as text, in the database's own terms.

    PostgreSQL: ``date_trunc`` of the UTC wall time. SQLite keeps the UTC wall time as text
    (``2026-12-03 11:58:07.123456``): its first 13 or 16 characters are the hour or minute."""
    if db == "postgresql":
        unit = "hour" if span == "day" else "minute"
        utc = func.timezone("UTC", messages.c.received_at)
        return cast(func.date_trunc(unit, utc), String)
    return func.substr(messages.c.received_at, 1, 13 if span == "day" else 16)


def _starts(span: str, now: datetime) -> list[datetime]:
    """The buckets' starts of ``span``: 24 hours (``day``) or 60 minutes (``hour``) up to now."""
    if span not in ("day", "hour"):
        raise ValueError(f"span is day or hour, not {span!r}")
    step = timedelta(hours=1) if span == "day" else timedelta(minutes=1)
    count = 24 if span == "day" else 60
    top = now.replace(minute=0 if span == "day" else now.minute, second=0, microsecond=0)
    return [top - step * (count - 1 - i) for i in range(count)]


def _bucket_start(text: str) -> datetime:
    """A bucket's text (either database) as an aware UTC time."""
    text = text.strip().replace("T", " ")
    if len(text) == 13:  # SQLite's hour
        text += ":00"
    return aware(datetime.fromisoformat(text[:16]))


class ConsoleStats(Repository):
    """The console's reads and writes for the dashboard and the message page."""

    # -- the dashboard ----------------------------------------------------------------------

    @contextmanager
    def _reading(self, conn: Connection | None) -> Iterator[Connection]:
        """``conn`` when the caller reads several figures on one connection, else one of its
        own (on PostgreSQL each checkout is a ping before and a rollback after)."""
        if conn is not None:
            yield conn
            return
        with self.db_engine.connect() as own:
            yield own

    def dashboard_traffic(
        self, span: str, now: datetime | None = None
    ) -> tuple[list[RouteFigures], ReceivedFigures]:
        """What the hour and the day carried (per route and destination; messages received and
        the rate), on one connection: reads that grow with the window's traffic, which the
        console therefore reads less often than :meth:`dashboard_now`."""
        now = now or utcnow()
        with self.db_engine.connect() as conn:
            return (
                self.route_figures(now, conn=conn),
                self.received_figures(span, now, conn=conn),
            )

    def dashboard_now(
        self, day_ahead: date, now: datetime | None = None
    ) -> tuple[dict[str, DestinationFigures], dict[str, int]]:
        """Where things stand now (each destination's queue, dead letters, breaker, last error)
        and ``day_ahead``'s eligibility, on one connection: reads that grow with what waits,
        not with the traffic."""
        now = now or utcnow()
        with self.db_engine.connect() as conn:
            return (
                self.destination_figures(now, conn=conn),
                self.eligibility_summary(day_ahead, conn=conn),
            )

    def route_figures(
        self, now: datetime | None = None, *, conn: Connection | None = None
    ) -> list[RouteFigures]:
        """Per route and destination, the deliveries made in the last hour and day and where
        each stands now; sorted by route, then destination."""
        now = now or utcnow()
        out: dict[tuple[str, str], RouteFigures] = {}
        hour, day = now - timedelta(hours=1), now - timedelta(days=1)
        with self._reading(conn) as conn:
            if conn.dialect.name == "postgresql":
                for r in conn.execute(_WINDOWS, {"since": day, "hour": hour}):
                    figures = out.setdefault((r.route, r.destination), RouteFigures(*r[:2]))
                    figures.day.add(r.state, int(r.n))
                    if r.hour_n:
                        figures.hour.add(r.state, int(r.hour_n))
                return [out[k] for k in sorted(out)]
            for r in conn.execute(_WINDOW, {"since": day}):
                key = (r.route, r.destination)
                out.setdefault(key, RouteFigures(*key)).day.add(r.state, int(r.n))
            for r in conn.execute(_WINDOW, {"since": hour}):
                key = (r.route, r.destination)
                out.setdefault(key, RouteFigures(*key)).hour.add(r.state, int(r.n))
        return [out[k] for k in sorted(out)]

    def destination_figures(
        self, now: datetime | None = None, *, conn: Connection | None = None
    ) -> dict[str, DestinationFigures]:
        """Per destination with anything to show: its queue and the age of the oldest waiting
        delivery, its dead letters (of messages not marked handled), its breaker as the live
        worker nodes report it, and its last error of the last day."""
        now = now or utcnow()
        out: dict[str, DestinationFigures] = {}

        def of(name: str) -> DestinationFigures:
            return out.setdefault(name, DestinationFigures(name))

        with self._reading(conn) as conn:
            for r in conn.execute(_QUEUE):
                figures = of(r.destination)
                figures.queued = int(r.n)
                figures.oldest_age_s = max(0.0, (now - aware(r.oldest)).total_seconds())
            for r in conn.execute(_DEAD):
                of(r.destination).dead = int(r.n)
            last = {
                r.id: r.destination
                for r in conn.execute(_LAST_FAILED, {"since": now - timedelta(days=1)})
            }
            if last:
                for r in conn.execute(_ERRORS_OF, {"ids": list(last)}):
                    figures = of(last[r.id])
                    figures.last_error = _first_line(r.last_error)
                    figures.last_error_at = aware(r.created_at)
            for name, breaker in self._breakers(conn, now).items():
                of(name).breaker = breaker
        return out

    def received_figures(
        self, span: str, now: datetime | None = None, *, conn: Connection | None = None
    ) -> ReceivedFigures:
        """The dashboard's messages in one read of the day's (instead of three: the hour's and
        the day's per state, and the rate): received per state in the last hour and day, and
        the messages received per hour over the last day (``span`` ``day``) or per
        minute over the last hour (``hour``), oldest first, empty buckets as 0."""
        now = now or utcnow()
        starts = _starts(span, now)
        bucket = _bucket(self.db_engine.dialect.name, span).label("bucket")
        recent = case((messages.c.received_at >= bindparam("hour"), 1), else_=0)
        statement = (
            select(bucket, _STATE, func.count().label("n"), func.sum(recent).label("hour_n"))
            .where(messages.c.received_at >= bindparam("day"))
            .group_by(bucket, _STATE)
        )
        hour: dict[str, int] = {}
        day: dict[str, int] = {}
        seen: dict[datetime, int] = {}
        params = {"hour": now - timedelta(hours=1), "day": now - timedelta(days=1)}
        with self._reading(conn) as conn:
            for r in conn.execute(statement, params):
                n, hour_n = int(r.n), int(r.hour_n or 0)
                day[r.state] = day.get(r.state, 0) + n
                if hour_n:
                    hour[r.state] = hour.get(r.state, 0) + hour_n
                start = _bucket_start(str(r.bucket))
                seen[start] = seen.get(start, 0) + n
        return ReceivedFigures(hour, day, [(s, seen.get(s, 0)) for s in starts])

    def eligibility_summary(self, day: date, *, conn: Connection | None = None) -> dict[str, int]:
        """The verdicts of a day's appointments (the latest check of each), counted."""
        latest: dict[str, str] = {}
        with self._reading(conn) as conn:
            for r in conn.execute(_ELIGIBILITY, {"day": day}):
                latest[r.appointment_url or r.patient_url] = r.status
        counts: dict[str, int] = {}
        for status in latest.values():
            counts[status] = counts.get(status, 0) + 1
        return dict(sorted(counts.items()))

    # -- the breakers -----------------------------------------------------------------------

    def record_breaker(
        self,
        destination: str,
        node: str,
        *,
        is_open: bool,
        failures: int,
        last_error: str | None = None,
    ) -> None:
        """A worker node's breaker for ``destination`` opened or closed (one row each)."""
        row = {
            "destination": destination[:128],
            "node": node[:64],
            "state": "open" if is_open else "closed",
            "failures": failures,
            "changed_at": utcnow(),
            "last_error": _first_line(last_error)[:_ERROR_CHARS] if last_error else None,
        }
        with self._tx() as conn:
            conn.execute(
                delete(destination_breakers).where(
                    destination_breakers.c.destination == row["destination"],
                    destination_breakers.c.node == row["node"],
                )
            )
            conn.execute(insert(destination_breakers).values(**row))

    @staticmethod
    def _breakers(conn: Connection, now: datetime) -> dict[str, Breaker]:
        """Per destination: open when any live worker node's breaker is open."""
        out: dict[str, Breaker] = {}
        # a node's heartbeat is its database's clock on PostgreSQL: a margin of a few beats
        alive_since = now - dead_after() * 3
        for r in conn.execute(_BREAKERS, {"alive_since": alive_since}):
            is_open = r.state == "open"
            known = out.get(r.destination)
            if known is not None and known.open and not is_open:
                continue  # one node's breaker open is the destination's breaker open
            out[r.destination] = Breaker(
                is_open, aware(r.changed_at), int(r.failures), r.last_error
            )
        return out

    # -- one message ------------------------------------------------------------------------

    def message_detail(self, message_id: int, who: Who) -> MessageDetail | None:
        """One message in full, or None; the view (it shows the payload) is recorded in the
        audit trail in the same transaction, ``refused`` when there is no such message."""
        with self._tx() as conn:
            row = conn.execute(_MESSAGE, {"mid": message_id}).one_or_none()
            audit(
                conn,
                action="view-message",
                actor=who.actor,
                source=who.source,
                peer=who.peer,
                message_id=message_id,
                outcome="ok" if row is not None else "refused",
                detail=None if row is not None else "no such message",
            )
            if row is None:
                return None
            rows = conn.execute(_DELIVERIES, {"mid": message_id}).all()
            history = attempt_history(conn, rows)
            shown = tuple(_delivery(r, history[int(r.id)]) for r in rows)
            handled = handled_of(conn, [message_id]).get(message_id)
        sender = "^".join(p or "" for p in (row.sending_application, row.sending_facility))
        return MessageDetail(
            id=row.id,
            received_at=aware(row.received_at),
            channel=row.channel,
            peer=row.peer,
            kind=row.kind,
            size=int(row.size),
            control_id=row.control_id,
            message_type=row.message_type,
            trigger=row.trigger,
            structure=row.structure,
            sender=sender.strip("^") or None,
            patient_key=row.patient_key,
            state=row.state,
            reason=row.reason,
            warnings=tuple((row.warnings or "").splitlines()),
            replay_of=row.replay_of,
            raw=bytes(row.raw),
            deliveries=shown,
            handled=handled,
            accepted=row.dedupe_key is not None,
        )

    def newer_cursor(self, query: MessageQuery, first_id: int) -> int | None:
        """Keyset paging backwards: the ``before`` that shows the page just newer than the one
        whose first (newest) line is ``first_id``, with the same filters; None when that is the
        newest page. The same indexes as the search (engine/store/search.py), read upwards."""
        q = replace(query, before=None)
        with self.db_engine.connect() as conn:
            conditions = _where(q) + _time_bounds(conn, q) + [messages.c.id > first_id]
            ids = (
                conn.execute(
                    select(messages.c.id).where(*conditions).order_by(messages.c.id).limit(q.limit)
                )
                .scalars()
                .all()
            )
        return int(ids[-1]) + 1 if len(ids) == q.limit else None


def _first_line(text: str | None) -> str:
    return (text or "").splitlines()[0][:_ERROR_CHARS] if text else ""


def _delivery(r: Any, history: tuple[AttemptView, ...]) -> DeliveryDetail:
    return DeliveryDetail(
        id=int(r.id),
        destination=r.destination,
        route=r.route,
        kind=r.kind,
        content_type=r.content_type,
        state=r.state,
        attempts=int(r.attempts),
        last_error=r.last_error,
        created_at=aware(r.created_at),
        next_attempt_at=aware(r.next_attempt_at) if r.next_attempt_at else None,
        delivered_at=aware(r.delivered_at) if r.delivered_at else None,
        resend_of=r.resend_of,
        payload=bytes(r.payload or b""),
        payload_size=int(r.payload_size or 0),
        history=history,
    )
