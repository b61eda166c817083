"""All queries of the message store live here (Repository pattern).

SQLite (WAL) is the embedded default, PostgreSQL the production choice; both run the same code and
the same tests. Work is claimed with ``SELECT ... FOR UPDATE SKIP LOCKED`` (rendered on PostgreSQL,
where several engine processes may share one database; SQLite has one writer at a time anyway and
takes its write lock at ``BEGIN IMMEDIATE``), so each message is processed once.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    case,
    create_engine,
    delete,
    event,
    exists,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql as postgresql_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import make_url

from engine.store.tables import deliveries, eligibility_checks, fhir_resources, messages

__all__ = [
    "DeliveryRecord",
    "DestinationBacklog",
    "DueDelivery",
    "IndexedResource",
    "Incoming",
    "MessageRecord",
    "NewDelivery",
    "Outcome",
    "Processed",
    "SqlMessageStore",
    "Stored",
    "create_db_engine",
]

log = logging.getLogger(__name__)


def create_db_engine(url: str, *, durable: bool = True) -> Engine:
    """A SQLAlchemy engine (``db_engine``) for the URL; SQLite gets WAL and a created directory.

    ``durable`` (the receiver): every commit is fsynced (SQLite ``synchronous=FULL``), because an
    ACK promises the message survives a power cut. The queue workers pass ``durable=False``
    (``synchronous=NORMAL``: still safe against a crash of the process, and under WAL a commit
    needs no fsync): what they write can be redone — a message whose processing was lost is
    claimed again, a delivery whose outcome was lost is delivered again (idempotently) — and
    their shorter transactions keep the receiver's ACKs fast.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        db_engine = create_engine(
            url, connect_args={"check_same_thread": False, "isolation_level": None}
        )

        @event.listens_for(db_engine, "connect")
        def _pragma(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            cur.execute("PRAGMA busy_timeout=10000")
            # no checkpoint inside a commit (an ACK would wait for it, ~100 ms at times):
            # ``checkpoint`` runs beside the writers instead (engine serve, engine worker)
            cur.execute("PRAGMA wal_autocheckpoint=0")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(db_engine, "begin")
        def _begin(conn):  # type: ignore[no-untyped-def]
            # a write transaction takes the write lock up front (no deadlock when two
            # transactions both upgrade); reads stay deferred, so under WAL they never wait
            if conn.get_execution_options().get("write"):
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                conn.exec_driver_sql("BEGIN")

        return db_engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return create_engine(parsed, pool_pre_ping=True, pool_size=10, max_overflow=10)


class _WriteLock:
    """Serialises SQLite writers across threads and processes with lock files, the receiver's
    commits first.

    SQLite lets one writer in at a time and makes the others poll with growing sleeps (up to
    100 ms each), which shows as ACK latency when the worker process writes while the receiver
    does. An ``flock`` on ``<db>.writelock`` wakes a waiter the moment the lock is free.

    ``flock`` keeps no queue, so the queue workers' writers could take turns while the receiver
    waits. A second lock, ``<db>.writeintent``, gives the receiver's group commit (which ACKs
    wait on) the first turn: it holds the intent exclusively while it waits for the write lock;
    every other writer passes through the intent (shared) before queueing for the write lock.
    The receiver thus waits for at most the one transaction already running, and the workers
    still get a turn between two of its commits. On PostgreSQL (row locks, no single writer)
    this is a no-op.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._thread_lock = threading.Lock()
        self._fds: tuple[int, int] | None = None
        #: how long the last priority writer waited for the lock (the receiver's commits)
        self.priority_wait_s = 0.0

    @classmethod
    def for_engine(cls, db_engine: Engine) -> _WriteLock:
        url = db_engine.url
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            return cls(Path(url.database).with_suffix(".writelock"))
        return cls(None)

    def _open(self) -> tuple[int, int]:
        if self._fds is None:
            assert self.path is not None
            lock = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                intent = os.open(
                    self.path.with_suffix(".writeintent"), os.O_RDWR | os.O_CREAT, 0o600
                )
            except OSError:
                os.close(lock)
                raise
            self._fds = (lock, intent)
        return self._fds

    @contextmanager
    def held(self, *, priority: bool = False) -> Iterator[None]:
        if self.path is None:
            yield
            return
        started = time.monotonic()
        with self._thread_lock:
            lock, intent = self._open()
            if priority:
                fcntl.flock(intent, fcntl.LOCK_EX)
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX)
                finally:
                    fcntl.flock(intent, fcntl.LOCK_UN)
                self.priority_wait_s = time.monotonic() - started
            else:
                fcntl.flock(intent, fcntl.LOCK_SH)  # behind a receiver that is waiting
                fcntl.flock(intent, fcntl.LOCK_UN)
                fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    """SQLite hands back naive datetimes (stored as UTC)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Incoming:
    """A message to store as received (``state`` is ``received``, or ``error`` with a reason)."""

    raw: bytes
    channel: str
    peer: str = ""
    kind: str = "hl7v2"
    state: str = "received"
    reason: str | None = None
    control_id: str | None = None
    message_type: str | None = None
    trigger: str | None = None
    structure: str | None = None
    sending_application: str | None = None
    sending_facility: str | None = None
    dedupe_key: str | None = None
    replay_of: int | None = None
    #: the patient the message is about (PID-3), known at receipt: processing keeps its order
    patient_key: str | None = None


@dataclass(frozen=True)
class Stored:
    """Where an incoming message went: its id, or the original's when it is a duplicate."""

    id: int
    received_at: datetime
    duplicate: bool = False


@dataclass(frozen=True)
class MessageRecord:
    """One stored message's metadata (the raw bytes are fetched separately)."""

    id: int
    received_at: datetime
    channel: str
    peer: str
    size: int
    control_id: str | None
    message_type: str | None
    trigger: str | None
    state: str
    reason: str | None
    kind: str = "hl7v2"
    replay_of: int | None = None
    #: what the message carried that no mapping took, one line each
    warnings: str | None = None


@dataclass(frozen=True)
class NewDelivery:
    destination: str
    route: str
    kind: str
    content_type: str
    payload: bytes
    patient_key: str


@dataclass(frozen=True)
class IndexedResource:
    """A FHIR resource the engine mapped, kept (latest version) for the jobs that read them."""

    resource_type: str
    full_url: str
    body: bytes
    patient_url: str | None = None
    start: datetime | None = None
    status: str | None = None


@dataclass(frozen=True)
class Processed:
    """The outcome of processing one message."""

    message_id: int
    state: str
    reason: str | None = None
    patient_key: str | None = None
    new_deliveries: Sequence[NewDelivery] = ()
    resources: Sequence[IndexedResource] = ()
    #: the worker that claimed the message: its outcome counts only while the claim is its own
    worker: str | None = None
    #: what the message carried that no mapping took, one line each
    warnings: str | None = None


@dataclass(frozen=True)
class Outcome:
    """The outcome of one delivery attempt: delivered, or failed (retry at, or dead if None)."""

    delivery_id: int
    ok: bool
    error: str = ""
    retry_at: datetime | None = None


@dataclass(frozen=True)
class DueDelivery:
    id: int
    message_id: int
    destination: str
    kind: str
    content_type: str
    payload: bytes
    attempts: int
    control_id: str
    #: the lease this claim holds (``renew_claim`` extends it while it is still ours)
    claimed_until: datetime | None = None


@dataclass(frozen=True)
class DestinationBacklog:
    """What one destination still has to deliver: the queue depth and how long the oldest has
    been waiting (for the ``queue depth`` and ``oldest waiting age`` gauges)."""

    destination: str
    #: deliveries not yet delivered and not dead (the head of each queue and those behind it)
    waiting: int
    #: seconds since the oldest of them was queued
    oldest_age_s: float


@dataclass(frozen=True)
class DeliveryRecord:
    id: int
    destination: str
    route: str
    state: str
    attempts: int
    last_error: str | None
    delivered_at: datetime | None


_RECORD_COLUMNS = (
    messages.c.id,
    messages.c.received_at,
    messages.c.channel,
    messages.c.peer,
    messages.c.size,
    messages.c.control_id,
    messages.c.message_type,
    messages.c.trigger,
    messages.c.state,
    messages.c.reason,
    messages.c.kind,
    messages.c.replay_of,
    messages.c.warnings,
)


def _record(row: Any) -> MessageRecord:
    data = dict(row._mapping)
    data["received_at"] = _aware(data["received_at"])
    return MessageRecord(**data)


# -- the hot statements, built once ----------------------------------------------------------
# Building a SQLAlchemy statement (and its cache key) costs more than SQLite takes to run it; the
# receiver and the queue workers run these thousands of times a second, so they are built here,
# with bind parameters (``expanding`` ones for id lists), and only executed in the methods.


def _ids(name: str = "ids") -> Any:
    return bindparam(name, expanding=True)


#: the receiver's insert (executemany with RETURNING, in parameter order)
_INSERT_MESSAGES = insert(messages).returning(messages.c.id, sort_by_parameter_order=True)
_KNOWN_KEYS = select(messages.c.dedupe_key, messages.c.id, messages.c.received_at).where(
    messages.c.dedupe_key.in_(_ids("keys"))
)

_earlier_message = messages.alias("earlier")
#: received messages whose patient has no earlier message still received or being processed
_CLAIMABLE_MESSAGES = (
    select(messages.c.id)
    .where(
        messages.c.state == "received",
        or_(
            messages.c.patient_key.is_(None),
            ~exists().where(
                _earlier_message.c.patient_key == messages.c.patient_key,
                _earlier_message.c.id < messages.c.id,
                _earlier_message.c.state.in_(("received", "processing")),
            ),
        ),
    )
    .order_by(messages.c.id)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True, of=messages)
)
_MARK_PROCESSING = (
    update(messages)
    .where(messages.c.id.in_(_ids()))
    .values(
        state="processing",
        claimed_by=bindparam("worker"),
        claimed_at=bindparam("now"),
        updated_at=bindparam("now"),
    )
)
_RAW_OF = (
    select(messages.c.id, messages.c.raw, messages.c.kind)
    .where(messages.c.id.in_(_ids()))
    .order_by(messages.c.id)
)
_EXISTING = select(messages.c.id).where(messages.c.id.in_(_ids())).with_for_update()
#: the messages of a batch still claimed by this worker (a claim taken back does not count)
#: (locked on PostgreSQL, so a reclaim and another worker's finish cannot slip in before our update)
_STILL_CLAIMED = (
    select(messages.c.id)
    .where(
        messages.c.id.in_(_ids()),
        messages.c.state == "processing",
        messages.c.claimed_by == bindparam("worker"),
    )
    .with_for_update()
)
_FINISH_MESSAGE = (
    update(messages)
    .where(messages.c.id == bindparam("mid"))
    .values(
        state=bindparam("new_state"),
        reason=bindparam("new_reason"),
        warnings=bindparam("new_warnings"),
        patient_key=bindparam("new_patient"),
        updated_at=bindparam("now"),
    )
)
_INSERT_DELIVERIES = insert(deliveries)
#: the patients of a destination with a delivery still queued (pending or waiting)
_QUEUED_PATIENTS = select(deliveries.c.patient_key).where(
    deliveries.c.destination == bindparam("dest"),
    deliveries.c.patient_key.in_(_ids("patients")),
    deliveries.c.state.in_(("pending", "waiting")),
)
#: PostgreSQL: one (destination, patient) queue at a time, for the rest of the transaction
_LOCK_QUEUE = text("SELECT pg_advisory_xact_lock(hashtextextended(:queue, 0))")

_queued = deliveries.alias("queued")
#: the next waiting delivery of a (destination, patient) becomes the head of its queue
_PROMOTE = (
    update(deliveries)
    .where(
        deliveries.c.id
        == select(func.min(_queued.c.id))
        .where(
            _queued.c.destination == bindparam("dest"),
            _queued.c.patient_key == bindparam("patient"),
            _queued.c.state == "waiting",
        )
        .scalar_subquery(),
        ~exists().where(
            _queued.c.destination == bindparam("dest"),
            _queued.c.patient_key == bindparam("patient"),
            _queued.c.state == "pending",
        ),
    )
    .values(state="pending", next_attempt_at=bindparam("now"))
)


def _upsert_resource(dialect: Any) -> Any:
    """Insert a resource, or update it by fullUrl; an older message never overwrites a newer
    one's (executemany: one row per fullUrl)."""
    stmt = dialect.insert(fhir_resources)
    excluded = stmt.excluded
    return stmt.on_conflict_do_update(
        index_elements=[fhir_resources.c.full_url],
        set_={
            "patient_url": excluded.patient_url,
            "start": excluded.start,
            "status": excluded.status,
            "body": excluded.body,
            "message_id": excluded.message_id,
            "updated_at": excluded.updated_at,
        },
        where=fhir_resources.c.message_id <= excluded.message_id,
    )


_UPSERT_RESOURCES = {
    "postgresql": _upsert_resource(postgresql_dialect),
    "sqlite": _upsert_resource(sqlite_dialect),
}

_free_claim = or_(
    deliveries.c.claimed_until.is_(None), deliveries.c.claimed_until < bindparam("now")
)
#: due deliveries: only queue heads are pending (the rest wait), so this is an index range
#: scan in due order that stops at its limit, however deep the queues are
_DUE = (
    select(deliveries.c.id)
    .where(
        deliveries.c.state == "pending",
        deliveries.c.next_attempt_at <= bindparam("now"),
        _free_claim,
    )
    .order_by(deliveries.c.next_attempt_at, deliveries.c.id)
    .limit(bindparam("limit"))
)
_DUE_UNPAUSED = _DUE.where(deliveries.c.destination.notin_(_ids("paused")))
_CLAIM_DELIVERIES = (
    update(deliveries)
    .where(deliveries.c.id.in_(_ids()), deliveries.c.state == "pending", _free_claim)
    .values(claimed_until=bindparam("until"))
    .returning(deliveries.c.id)
)
_LEASE_DELIVERIES = (
    update(deliveries).where(deliveries.c.id.in_(_ids())).values(claimed_until=bindparam("until"))
)
_DUE_ROWS = (
    select(
        deliveries.c.id,
        deliveries.c.message_id,
        deliveries.c.destination,
        deliveries.c.kind,
        deliveries.c.content_type,
        deliveries.c.payload,
        deliveries.c.attempts,
        messages.c.control_id,
    )
    .join(messages, messages.c.id == deliveries.c.message_id)
    .where(deliveries.c.id.in_(_ids()))
    .order_by(deliveries.c.id)
)
# outcomes apply to pending deliveries only: a delivery sent twice (its lease ran out while it
# was in flight) is settled once, and settles (and promotes) nothing the second time
_DELIVERED = (
    update(deliveries)
    .where(deliveries.c.id.in_(_ids()), deliveries.c.state == "pending")
    .values(
        state="delivered",
        delivered_at=bindparam("now"),
        attempts=deliveries.c.attempts + 1,
        claimed_until=None,
        last_error=None,
    )
    .returning(deliveries.c.message_id, deliveries.c.destination, deliveries.c.patient_key)
)
_DEAD = (
    update(deliveries)
    .where(deliveries.c.id == bindparam("did"), deliveries.c.state == "pending")
    .values(
        state="dead",
        attempts=deliveries.c.attempts + 1,
        claimed_until=None,
        last_error=bindparam("err"),
    )
    .returning(deliveries.c.message_id, deliveries.c.destination, deliveries.c.patient_key)
)
_RETRY = (
    update(deliveries)
    .where(deliveries.c.id == bindparam("did"), deliveries.c.state == "pending")
    .values(
        attempts=deliveries.c.attempts + 1,
        claimed_until=None,
        last_error=bindparam("err"),
        next_attempt_at=bindparam("at"),
    )
)
#: queues whose head is gone (a guard against any path that settles without promoting)
_headless = deliveries.alias("headless")
_HEADLESS_QUEUES = (
    select(deliveries.c.destination, deliveries.c.patient_key)
    .where(
        deliveries.c.state == "waiting",
        ~exists().where(
            _headless.c.destination == deliveries.c.destination,
            _headless.c.patient_key == deliveries.c.patient_key,
            _headless.c.state == "pending",
        ),
    )
    .distinct()
)
#: a claim given back (the worker stopped before it started the delivery)
_RELEASE = (
    update(deliveries)
    .where(deliveries.c.id.in_(_ids()), deliveries.c.state == "pending")
    .values(claimed_until=None)
)
#: a claim kept for longer: only while it is still ours (same lease) and pending
_RENEW = (
    update(deliveries)
    .where(
        deliveries.c.id == bindparam("did"),
        deliveries.c.state == "pending",
        deliveries.c.claimed_until == bindparam("old"),
    )
    .values(claimed_until=bindparam("new"))
)
_LOCK_MESSAGES = select(messages.c.id).where(messages.c.id.in_(_ids())).with_for_update()
#: a routed message is delivered once no delivery is queued, dead if one is dead
_SETTLE_MESSAGES = (
    update(messages)
    .where(
        messages.c.id.in_(_ids()),
        messages.c.state == "routed",
        ~exists().where(
            deliveries.c.message_id == messages.c.id,
            deliveries.c.state.in_(("pending", "waiting")),
        ),
    )
    .values(
        state=case(
            (
                exists().where(
                    deliveries.c.message_id == messages.c.id, deliveries.c.state == "dead"
                ),
                "dead",
            ),
            else_="delivered",
        ),
        updated_at=bindparam("now"),
    )
)


class SqlMessageStore:
    """The message store on a SQLAlchemy engine."""

    def __init__(self, db_engine: Engine) -> None:
        self.db_engine = db_engine
        self._write_lock = _WriteLock.for_engine(db_engine)

    @contextmanager
    def _tx(self, *, priority: bool = False) -> Iterator[Connection]:
        """A write transaction (on SQLite: BEGIN IMMEDIATE, under the writers' file lock;
        ``priority`` for the receiver's commits, which ACKs wait on)."""
        with self._write_lock.held(priority=priority), self.db_engine.connect() as conn:
            conn.execution_options(write=True)
            with conn.begin():
                yield conn

    # -- schema ------------------------------------------------------------------------------

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (creates it on a new database)."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        with self.db_engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    create_schema = migrate

    # -- receiving ---------------------------------------------------------------------------

    @property
    def last_commit_wait_s(self) -> float:
        """How long the last :meth:`save_batch` waited for other writers (SQLite)."""
        return self._write_lock.priority_wait_s

    def save_batch(self, items: Sequence[Incoming]) -> list[Stored]:
        """Store messages in ONE transaction (group commit) and return where each went.

        A message whose ``dedupe_key`` (sender + MSH-10) is already stored, or appears earlier in
        the batch, is not stored again: its result points at the original (``duplicate``).
        Committed before returning: the caller may acknowledge once this returns.
        """
        now = _now()
        results: list[Stored | None] = [None] * len(items)
        with self._tx(priority=True) as conn:
            keys = [i.dedupe_key for i in items if i.dedupe_key]
            known: dict[str, tuple[int, datetime]] = {}
            if keys:
                for row in conn.execute(_KNOWN_KEYS, {"keys": list(set(keys))}):
                    known[row.dedupe_key] = (row.id, _aware(row.received_at))
            rows: list[dict[str, Any]] = []
            where: list[int] = []  # the index in ``items`` of each row to insert
            fresh: dict[str, int] = {}  # dedupe key -> index of its first item in this batch
            for n, item in enumerate(items):
                key = item.dedupe_key
                if key and key in known:
                    mid, at = known[key]
                    results[n] = Stored(mid, at, duplicate=True)
                    continue
                if key and key in fresh:
                    continue  # a resend within the batch: resolved below, once ids are known
                if key:
                    fresh[key] = n
                where.append(n)
                rows.append(
                    {
                        "received_at": now,
                        "channel": item.channel,
                        "peer": item.peer,
                        "kind": item.kind,
                        "size": len(item.raw),
                        "raw": item.raw,
                        "control_id": item.control_id,
                        "message_type": item.message_type,
                        "trigger": item.trigger,
                        "structure": item.structure,
                        "sending_application": item.sending_application,
                        "sending_facility": item.sending_facility,
                        "dedupe_key": key,
                        "replay_of": item.replay_of,
                        "patient_key": item.patient_key,
                        "state": item.state,
                        "reason": item.reason,
                        "updated_at": now,
                    }
                )
            if rows:
                # one statement for the batch (INSERT ... VALUES (...), (...) RETURNING id, in
                # the rows' order): building a statement per row cost more than SQLite's insert
                ids = conn.execute(_INSERT_MESSAGES, rows).scalars().all()
                for n, mid in zip(where, ids, strict=True):
                    results[n] = Stored(int(mid), now)
            for n, item in enumerate(items):
                if results[n] is None:  # resent within the batch: the first one's id
                    first = results[fresh[item.dedupe_key or ""]]
                    assert first is not None
                    results[n] = Stored(first.id, first.received_at, duplicate=True)
        return [r for r in results if r is not None]

    def save_received(self, raw: bytes, *, channel: str, peer: str = "") -> int:
        """Store raw bytes as they arrived (state ``received``, nothing parsed yet)."""
        return self.save_batch([Incoming(raw=raw, channel=channel, peer=peer)])[0].id

    def describe(
        self,
        message_id: int,
        *,
        control_id: str,
        message_type: str,
        trigger: str,
        structure: str,
        sending_application: str,
        sending_facility: str,
    ) -> None:
        """Record what a stored message turned out to be once parsed."""
        with self._tx() as conn:
            conn.execute(
                update(messages)
                .where(messages.c.id == message_id)
                .values(
                    control_id=control_id,
                    message_type=message_type,
                    trigger=trigger,
                    structure=structure,
                    sending_application=sending_application,
                    sending_facility=sending_facility,
                    updated_at=_now(),
                )
            )

    def set_state(self, message_id: int, state: str, reason: str | None = None) -> None:
        with self._tx() as conn:
            conn.execute(
                update(messages)
                .where(messages.c.id == message_id)
                .values(state=state, reason=reason, updated_at=_now())
            )

    # -- processing --------------------------------------------------------------------------

    def claim_received(self, worker: str, limit: int = 100) -> list[tuple[int, bytes, str]]:
        """Claim up to ``limit`` received messages for processing: (id, raw, kind), oldest first.

        A patient's message waits while an earlier one of the same patient is still received or
        being processed (by this worker or another): each patient's messages are processed, and
        so delivered, in the order they arrived, while different patients go in parallel.
        """
        now = _now()
        with self._tx() as conn:
            ids = list(conn.execute(_CLAIMABLE_MESSAGES, {"limit": limit}).scalars())
            if not ids:
                return []
            conn.execute(_MARK_PROCESSING, {"ids": ids, "worker": worker, "now": now})
            rows = conn.execute(_RAW_OF, {"ids": ids})
            return [(r.id, bytes(r.raw), r.kind) for r in rows]

    def reclaim_stale(self, older_than: timedelta) -> int:
        """Put back messages whose processing was claimed by a worker that died."""
        cutoff = _now() - older_than
        with self._tx() as conn:
            result = conn.execute(
                update(messages)
                .where(messages.c.state == "processing", messages.c.claimed_at < cutoff)
                .values(state="received", claimed_by=None, claimed_at=None, updated_at=_now())
            )
            return int(result.rowcount or 0)

    def finish_processing(
        self,
        message_id: int,
        *,
        state: str,
        reason: str | None = None,
        patient_key: str | None = None,
        new_deliveries: Sequence[NewDelivery] = (),
    ) -> None:
        """Record the outcome of processing one message and the deliveries it made."""
        self.finish_batch([Processed(message_id, state, reason, patient_key, new_deliveries)])

    def finish_batch(self, outcomes: Sequence[Processed]) -> None:
        """Record the outcomes of processing several messages, with their deliveries, in ONE
        transaction. An outcome whose claim was taken back (the worker was thought dead and
        another claimed the message) is dropped: the other worker's counts."""
        now = _now()
        with self._tx() as conn:
            owned: set[int] = set()
            for worker in {o.worker for o in outcomes}:
                ids = [o.message_id for o in outcomes if o.worker == worker]
                if worker is None:
                    found = conn.execute(_EXISTING, {"ids": ids})
                else:
                    found = conn.execute(_STILL_CLAIMED, {"ids": ids, "worker": worker})
                owned.update(found.scalars())
            kept = [o for o in outcomes if o.message_id in owned]
            if kept:
                conn.execute(
                    _FINISH_MESSAGE,
                    [
                        {
                            "mid": o.message_id,
                            "new_state": o.state,
                            "new_reason": o.reason,
                            "new_warnings": o.warnings,
                            "new_patient": o.patient_key,
                            "now": now,
                        }
                        for o in kept
                    ],
                )
            rows = [
                {
                    "message_id": o.message_id,
                    "destination": d.destination,
                    "route": d.route,
                    "kind": d.kind,
                    "content_type": d.content_type,
                    "payload": d.payload,
                    "patient_key": d.patient_key,
                    "state": "pending",
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                }
                for o in kept
                for d in o.new_deliveries
            ]
            if rows:
                self._queue(conn, rows)
                conn.execute(_INSERT_DELIVERIES, rows)
            indexed = [(o.message_id, r) for o in kept for r in o.resources]
            if indexed:
                self._upsert_resources(conn, indexed, now)

    def _queue(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
        """Mark each new delivery ``waiting`` when an earlier one for the same destination and
        patient is still pending or waiting (here or earlier in ``rows``): only the head of each
        queue is claimable, and settling it promotes the next (``_promote``).

        On PostgreSQL each queue is locked first (``_lock_queues``, as ``_promote`` does), so a
        dispatcher settling the head at the same moment either promotes the new delivery after
        we commit, or has settled the head before we look (and the new one is the head)."""
        by_destination: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_destination.setdefault(row["destination"], []).append(row)
        self._lock_queues(conn, {(r["destination"], r["patient_key"]) for r in rows})
        for destination, group in by_destination.items():
            patients = list({r["patient_key"] for r in group})
            queued = set(
                conn.execute(
                    _QUEUED_PATIENTS, {"dest": destination, "patients": patients}
                ).scalars()
            )
            for row in group:
                if row["patient_key"] in queued:
                    row["state"] = "waiting"
                else:
                    queued.add(row["patient_key"])

    def _promote(self, conn: Connection, queues: set[tuple[str, str]], now: datetime) -> None:
        """The next waiting delivery of each (destination, patient) whose head was settled
        becomes pending, due now."""
        if not queues:
            return
        self._lock_queues(conn, queues)
        conn.execute(
            _PROMOTE,
            [{"dest": d, "patient": p, "now": now} for d, p in sorted(queues)],
        )

    def _lock_queues(self, conn: Connection, queues: set[tuple[str, str]]) -> None:
        """PostgreSQL: transaction-scoped advisory locks on (destination, patient) queues, in
        one order everywhere (no deadlock), and no row locks that a dispatcher's updates could
        meet in another order. SQLite has one writer at a time: nothing to do."""
        if self.db_engine.dialect.name != "postgresql":
            return
        for key in sorted(f"{destination}\x1f{patient}" for destination, patient in queues):
            conn.execute(_LOCK_QUEUE, {"queue": key})

    def _upsert_resources(
        self, conn: Connection, items: Sequence[tuple[int, IndexedResource]], now: datetime
    ) -> None:
        """Insert or update by fullUrl; an older message never overwrites a newer one's."""
        latest: dict[str, tuple[int, IndexedResource]] = {}
        for mid, r in items:  # one row per fullUrl in a statement
            latest[r.full_url] = (mid, r)
        rows = [
            {
                "resource_type": r.resource_type,
                "full_url": r.full_url,
                "patient_url": r.patient_url,
                "start": r.start,
                "status": r.status,
                "body": r.body.decode(),
                "message_id": mid,
                "updated_at": now,
            }
            # sorted: one lock order for concurrent workers
            for mid, r in sorted(latest.values(), key=lambda item: item[1].full_url)
        ]
        conn.execute(_UPSERT_RESOURCES[self.db_engine.dialect.name], rows)

    # -- the resource index (read by jobs) ------------------------------------------------------

    def appointments_between(self, start: datetime, end: datetime) -> builtins.list[dict[str, Any]]:
        """Appointments starting in [start, end), as FHIR dicts with ``_full_url``."""
        start, end = start.astimezone(UTC), end.astimezone(UTC)  # the index keeps UTC
        with self.db_engine.connect() as conn:
            rows = conn.execute(
                select(fhir_resources.c.full_url, fhir_resources.c.body)
                .where(
                    fhir_resources.c.resource_type == "Appointment",
                    fhir_resources.c.start >= start,
                    fhir_resources.c.start < end,
                )
                .order_by(fhir_resources.c.start, fhir_resources.c.id)
            )
            return [{**orjson.loads(r.body), "_full_url": r.full_url} for r in rows]

    def resource(self, full_url: str) -> dict[str, Any] | None:
        with self.db_engine.connect() as conn:
            body = conn.execute(
                select(fhir_resources.c.body).where(fhir_resources.c.full_url == full_url)
            ).scalar_one_or_none()
        return {**orjson.loads(body), "_full_url": full_url} if body else None

    def resources_for_patient(
        self, resource_type: str, patient_url: str
    ) -> builtins.list[dict[str, Any]]:
        with self.db_engine.connect() as conn:
            rows = conn.execute(
                select(fhir_resources.c.full_url, fhir_resources.c.body)
                .where(
                    fhir_resources.c.resource_type == resource_type,
                    fhir_resources.c.patient_url == patient_url,
                )
                .order_by(fhir_resources.c.id)
            )
            return [{**orjson.loads(r.body), "_full_url": r.full_url} for r in rows]

    # -- delivering --------------------------------------------------------------------------

    def claim_due_deliveries(
        self, limit: int = 50, lease: float = 120.0, paused: Sequence[str] = ()
    ) -> list[DueDelivery]:
        """Claim deliveries that are due, at most one in flight per (destination, patient): a
        delivery is ``waiting`` while an earlier one for the same patient and destination is
        pending, so order is kept per patient while different patients flow in parallel."""
        now = _now()
        until = now + timedelta(seconds=lease)
        due = _DUE_UNPAUSED if paused else _DUE
        params = {"now": now, "limit": limit, "paused": list(paused)}
        if self.db_engine.dialect.name == "sqlite":
            # find candidates without the write lock, then claim them in a short write
            # transaction that re-checks they are still unclaimed and pending
            with self.db_engine.connect() as conn:
                candidates = list(conn.execute(due, params).scalars())
            if not candidates:
                return []
            with self._tx() as conn:
                ids = list(
                    conn.execute(
                        _CLAIM_DELIVERIES, {"ids": candidates, "now": now, "until": until}
                    ).scalars()
                )
                return self._due_rows(conn, ids, until)
        with self._tx() as conn:
            locked = due.with_for_update(skip_locked=True, of=deliveries)
            ids = list(conn.execute(locked, params).scalars())
            if ids:
                conn.execute(_LEASE_DELIVERIES, {"ids": ids, "until": until})
            return self._due_rows(conn, ids, until)

    def _due_rows(self, conn: Connection, ids: list[int], until: datetime) -> list[DueDelivery]:
        if not ids:
            return []
        rows = conn.execute(_DUE_ROWS, {"ids": ids})
        return [
            DueDelivery(
                r.id,
                r.message_id,
                r.destination,
                r.kind,
                r.content_type,
                bytes(r.payload),
                r.attempts,
                r.control_id or "",
                until,
            )
            for r in rows
        ]

    def record_outcomes(self, outcomes: Sequence[Outcome]) -> None:
        """Record delivery outcomes in ONE transaction of a few set-based statements (the
        dispatcher batches them): the write lock is held as briefly as possible."""
        if not outcomes:
            return
        now = _now()
        done = [o.delivery_id for o in outcomes if o.ok]
        dead = [o for o in outcomes if not o.ok and o.retry_at is None]
        retry = [o for o in outcomes if not o.ok and o.retry_at is not None]
        with self._tx() as conn:
            settled: list[Any] = []
            if done:
                settled += conn.execute(_DELIVERED, {"ids": done, "now": now}).all()
            for o in dead:
                settled += conn.execute(_DEAD, {"did": o.delivery_id, "err": o.error[:2000]}).all()
            if retry:
                conn.execute(
                    _RETRY,
                    [
                        {"did": o.delivery_id, "err": o.error[:2000], "at": o.retry_at}
                        for o in retry
                    ],
                )
            if settled:
                self._promote(conn, {(r.destination, r.patient_key) for r in settled}, now)
                self._settle(conn, sorted({r.message_id for r in settled}), now)

    def release_claims(self, delivery_ids: Sequence[int]) -> None:
        """Give back claims on deliveries not started (a stopping dispatcher): they are due
        again at once instead of when their lease runs out."""
        if delivery_ids:
            with self._tx() as conn:
                conn.execute(_RELEASE, {"ids": list(delivery_ids)})

    def renew_claim(self, delivery_id: int, old: datetime, new: datetime) -> bool:
        """Extend a claim that is still ours (same lease, still pending); False when it is not
        (it ran out and another dispatcher may have the delivery now: do not send it)."""
        with self._tx() as conn:
            done = conn.execute(_RENEW, {"did": delivery_id, "old": old, "new": new})
            return bool(done.rowcount)

    def repair_queues(self) -> int:
        """Promote the next delivery of any queue left without a pending head; how many queues.
        Nothing should leave one so; this runs with the retention job as a guard."""
        with self._tx() as conn:
            queues = {(r.destination, r.patient_key) for r in conn.execute(_HEADLESS_QUEUES)}
            self._promote(conn, queues, _now())
            return len(queues)

    def backlog(self) -> builtins.list[DestinationBacklog]:
        """Per destination with anything left to deliver: how many deliveries wait (pending or
        queued behind one) and the age of the oldest. A destination with nothing waiting is not
        listed. Read-only: no write lock, no transaction of its own."""
        query = (
            select(
                deliveries.c.destination,
                func.count().label("waiting"),
                func.min(deliveries.c.created_at).label("oldest"),
            )
            .where(deliveries.c.state.in_(("pending", "waiting")))
            .group_by(deliveries.c.destination)
            .order_by(deliveries.c.destination)
        )
        now = _now()
        with self.db_engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            DestinationBacklog(
                r.destination, int(r.waiting), max(0.0, (now - _aware(r.oldest)).total_seconds())
            )
            for r in rows
        ]

    def mark_delivered(self, delivery_id: int) -> None:
        self.record_outcomes([Outcome(delivery_id, True)])

    def mark_failed(self, delivery_id: int, *, error: str, retry_at: datetime | None) -> None:
        """A failed attempt: retry at ``retry_at``, or dead-letter when it is None."""
        self.record_outcomes([Outcome(delivery_id, False, error, retry_at)])

    def _settle(self, conn: Connection, message_ids: Sequence[int], now: datetime) -> None:
        """A message is delivered when every delivery is, dead when one is dead.

        The message rows are locked first, so two deliveries of one message finishing at the
        same time (READ COMMITTED on PostgreSQL) cannot each miss the other's outcome.
        """
        conn.execute(_LOCK_MESSAGES, {"ids": list(message_ids)}).all()
        conn.execute(_SETTLE_MESSAGES, {"ids": list(message_ids), "now": now})

    # -- eligibility ---------------------------------------------------------------------------

    def save_eligibility(self, row: dict[str, Any]) -> int:
        """Store one eligibility check (history: a new row every time)."""
        with self._tx() as conn:
            pk = conn.execute(insert(eligibility_checks).values(**row)).inserted_primary_key
            assert pk is not None
            return int(pk[0])

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
        return dict(row._mapping) if row else None

    def eligibility_for_day(self, day: Any) -> builtins.list[dict[str, Any]]:
        """The latest check per appointment (or patient) for appointments on ``day``."""
        with self.db_engine.connect() as conn:
            rows = [
                dict(r._mapping)
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

    # -- operating ---------------------------------------------------------------------------

    def get(self, message_id: int) -> MessageRecord | None:
        with self.db_engine.connect() as conn:
            row = conn.execute(
                select(*_RECORD_COLUMNS).where(messages.c.id == message_id)
            ).one_or_none()
        return _record(row) if row else None

    def raw(self, message_id: int) -> bytes | None:
        with self.db_engine.connect() as conn:
            value = conn.execute(
                select(messages.c.raw).where(messages.c.id == message_id)
            ).scalar_one_or_none()
        return bytes(value) if value is not None else None

    def list(self, *, state: str | None = None, limit: int = 100) -> list[MessageRecord]:
        query = select(*_RECORD_COLUMNS).order_by(messages.c.id.desc()).limit(limit)
        if state:
            query = query.where(messages.c.state == state)
        with self.db_engine.connect() as conn:
            return [_record(row) for row in conn.execute(query)]

    def deliveries_for(self, message_id: int) -> builtins.list[DeliveryRecord]:
        with self.db_engine.connect() as conn:
            rows = conn.execute(
                select(
                    deliveries.c.id,
                    deliveries.c.destination,
                    deliveries.c.route,
                    deliveries.c.state,
                    deliveries.c.attempts,
                    deliveries.c.last_error,
                    deliveries.c.delivered_at,
                )
                .where(deliveries.c.message_id == message_id)
                .order_by(deliveries.c.id)
            )
            return [
                DeliveryRecord(
                    r.id,
                    r.destination,
                    r.route,
                    r.state,
                    r.attempts,
                    r.last_error,
                    _aware(r.delivered_at) if r.delivered_at else None,
                )
                for r in rows
            ]

    def replay(self, message_id: int) -> int:
        """Store a copy of a message as received again (an operator's replay, not a duplicate)."""
        with self.db_engine.connect() as conn:
            row = conn.execute(
                select(
                    messages.c.raw, messages.c.kind, messages.c.peer, messages.c.patient_key
                ).where(messages.c.id == message_id)
            ).one_or_none()
        if row is None:
            raise KeyError(message_id)
        return self.save_batch(
            [
                Incoming(
                    raw=bytes(row.raw),
                    channel="replay",
                    patient_key=row.patient_key,
                    peer=row.peer,
                    kind=row.kind,
                    replay_of=message_id,
                )
            ]
        )[0].id

    def ids_in_state(self, state: str, limit: int = 10_000) -> builtins.list[int]:
        with self.db_engine.connect() as conn:
            return [
                r.id
                for r in conn.execute(
                    select(messages.c.id)
                    .where(messages.c.state == state)
                    .order_by(messages.c.id)
                    .limit(limit)
                )
            ]

    def counts(self) -> dict[str, int]:
        """Messages per state, and deliveries pending (the queue depth)."""
        with self.db_engine.connect() as conn:
            out = {
                r.state: int(r.n)
                for r in conn.execute(
                    select(messages.c.state, func.count().label("n")).group_by(messages.c.state)
                )
            }
            out["deliveries_pending"] = int(
                conn.execute(
                    select(func.count()).where(deliveries.c.state.in_(("pending", "waiting")))
                ).scalar_one()
            )
        return out

    def purge_delivered(self, older_than: timedelta) -> int:
        """Retention: delete messages delivered (or unrouted) before the cutoff, with their
        deliveries. Messages not delivered (received, routed, error, dead) are never purged."""
        cutoff = _now() - older_than
        with self._tx() as conn:
            ids = [
                r.id
                for r in conn.execute(
                    select(messages.c.id).where(
                        messages.c.state.in_(("delivered", "unrouted")),
                        messages.c.updated_at < cutoff,
                    )
                )
            ]
            if not ids:
                return 0
            conn.execute(delete(deliveries).where(deliveries.c.message_id.in_(ids)))
            conn.execute(delete(messages).where(messages.c.id.in_(ids)))
            return len(ids)

    def checkpoint(self) -> None:
        """SQLite: copy the write-ahead log into the database without waiting for (or
        blocking) readers and writers, so the log does not grow without end. Elsewhere nothing.
        """
        if self.db_engine.dialect.name != "sqlite":
            return
        with self.db_engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").all()

    async def checkpoints(self, stop: asyncio.Event, every_s: float = 1.0) -> None:
        """Run :meth:`checkpoint` every ``every_s`` until ``stop`` is set."""
        if self.db_engine.dialect.name != "sqlite":
            return
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.checkpoint)
            except Exception as exc:  # busy, or the disk is full: try again later
                log.warning("checkpoint failed", extra={"error": type(exc).__name__})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)

    def ping(self) -> bool:
        """True when the database answers (for /readyz)."""
        with self.db_engine.connect() as conn:
            return bool(conn.execute(select(1)).scalar_one() == 1)
