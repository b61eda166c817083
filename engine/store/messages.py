"""Messages: every message received, stored before it is acknowledged, and its way through.

The receiver stores a batch in one transaction (group commit, the idempotent receiver's
duplicate check included); the processor claims received messages, oldest first and one at a
time per patient, in the name of its node (whose claims are taken over if it dies, see
engine/store/nodes.py), and finishes them with their deliveries and indexed resources in one
transaction, keeping an outcome only while the claim is still its own; operators list, show
and replay them; retention purges the delivered ones. States are drawn in
:mod:`engine.store.tables`.

The receiver's and the processor's statements run thousands of times a second: each is built
once, beside the method that runs it (building a statement costs more than SQLite running it).
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Row,
    Text,
    and_,
    bindparam,
    delete,
    exists,
    func,
    literal,
    or_,
    select,
    text,
    update,
)

from engine.store.blobs import BlobFiles
from engine.store.clean import clean, clean_key, clean_lines
from engine.store.db import Repository, aware, in_index_order, state_literal, utcnow
from engine.store.deliveries import NewDelivery, deliveries_of, queue_deliveries
from engine.store.index import IndexedResource, upsert_resources
from engine.store.inserts import insert_messages
from engine.store.lists import in_list
from engine.store.purge import Purged, purge_postgresql, purge_sqlite
from engine.store.resends import (
    Held,
    Insert,
    Plan,
    Planner,
    Unhashed,
    after_receipt_notes,
    hash_originals,
    holders,
)
from engine.store.tables import deliveries, documents, messages
from engine.store.views import MessageView

__all__ = ["Incoming", "MessageStore", "Processed", "Purged", "Stored", "delivered_before"]


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
    #: stored anew although its key was held: its control ID reused with other content
    reused: bool = False


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


def _width(column: str) -> int | None:
    """The width of a ``messages`` column (None for text without one)."""
    return getattr(messages.c[column].type, "length", None)


#: the header columns read from a message, cleaned (see engine/store/clean.py) and cut to their
#: widths: a NUL in MSH-10 or PID-3 must not keep the raw bytes out of the store
_HEADERS = {
    name: _width(name)
    for name in (
        "peer",
        "control_id",
        "message_type",
        "trigger",
        "structure",
        "sending_application",
        "sending_facility",
        "patient_key",
        "reason",
    )
}
_KEY_WIDTH = _width("dedupe_key")
_PATIENT_WIDTH = _width("patient_key")


def _row(
    item: Incoming, key: str | None, now: datetime, note: str | None, digest: str | None = None
) -> dict[str, Any]:
    """The ``messages`` row of an incoming message (its header columns cleaned; ``key`` is its
    dedupe key already cleaned by :func:`clean_key`; ``note``, a warning from its receipt;
    ``digest``, its content's, stored for a large one: ``Planner.stored_digest``)."""
    row: dict[str, Any] = {
        "received_at": now,
        "channel": item.channel,
        "kind": item.kind,
        "size": len(item.raw),
        "raw": item.raw,
        "dedupe_key": key,
        "digest": digest,
        "replay_of": item.replay_of,
        "state": item.state,
        "warnings": clean_lines(note),
        "updated_at": now,
    }
    for name, width in _HEADERS.items():
        row[name] = clean(getattr(item, name), width)
    return row


def _view(row: Row[*tuple[Any, ...]]) -> MessageView:
    """A message's view from a row of :attr:`MessageStore._VIEW` (no deliveries)."""
    data = row._asdict()
    data["received_at"] = aware(data["received_at"])
    data["warnings"] = tuple(data["warnings"].splitlines()) if data["warnings"] else ()
    return MessageView(**data)


#: a replay's copy (channel ``replay``) and the message it copies
_REPLAYS = select(messages.c.id, messages.c.replay_of).where(
    in_list(messages.c.id), messages.c.channel == "replay"
)
_PARENT = select(messages.c.replay_of).where(messages.c.id == bindparam("mid"))
_DELIVERED_TO = select(deliveries.c.destination).where(
    deliveries.c.message_id == bindparam("mid"), deliveries.c.state == "delivered"
)
#: how far back a chain of replays is followed
_MAX_REPLAY_DEPTH = 50


def _had_it(conn: Connection, original: int) -> dict[str, int]:
    """Each destination that an earlier message of a replay chain was delivered to, with the
    nearest such message."""
    had: dict[str, int] = {}
    mid: int | None = original
    for _ in range(_MAX_REPLAY_DEPTH):
        if mid is None:
            break
        for destination in conn.execute(_DELIVERED_TO, {"mid": mid}).scalars():
            had.setdefault(destination, mid)
        mid = conn.execute(_PARENT, {"mid": mid}).scalar_one_or_none()
    return had


#: for a replay's check of its original's queued deliveries (engine/store/replays.py)
delivered_before = _had_it


def _skip_delivered_before(conn: Connection, outcomes: list[Processed]) -> list[Processed]:
    """A replay goes only where its original (or an earlier replay of it) was not delivered: an
    outage's dead letters replayed do not reach again the destinations that had the message.
    Each skip is a warning on the copy; a copy every destination had is delivered at once.
    ``replay --all-destinations`` (channel ``replay-all``) sends everywhere."""
    ids = [o.message_id for o in outcomes if o.new_deliveries]
    if not ids:
        return outcomes
    originals = {r.id: r.replay_of for r in conn.execute(_REPLAYS, {"ids": ids})}
    if not originals:
        return outcomes
    result = []
    for o in outcomes:
        original = originals.get(o.message_id)
        had = _had_it(conn, original) if original is not None else {}
        skipped = [d for d in o.new_deliveries if d.destination in had]
        if not skipped:
            result.append(o)
            continue
        lines = [
            f"destination {d.destination} skipped: message {had[d.destination]} was delivered "
            "there (replay --all-destinations sends it again)"
            for d in skipped
        ]
        left = [d for d in o.new_deliveries if d.destination not in had]
        result.append(
            replace(
                o,
                new_deliveries=left,
                state=o.state if left else "delivered",
                warnings="\n".join([o.warnings, *lines] if o.warnings else lines),
            )
        )
    return result


def _columns(finished: list[dict[str, Any]], now: datetime) -> dict[str, Any]:
    """:data:`MessageStore._FINISH`'s rows as the arrays of :data:`MessageStore._FINISH_ALL`."""
    return {
        "ids": [f["mid"] for f in finished],
        "states": [f["new_state"] for f in finished],
        "reasons": [f["new_reason"] for f in finished],
        "warnings": [f["new_warnings"] for f in finished],
        "patients": [f["new_patient"] for f in finished],
        "now": now,
    }


class _Batch:
    """A batch to store: its items, planned (engine/store/resends.py) into rows and results."""

    def __init__(self, items: Sequence[Incoming]) -> None:
        self.items = items
        # the keys as stored (cleaned): a resend must find its original
        keys = [clean_key(i.dedupe_key, _KEY_WIDTH) for i in items]
        compare = [i.kind == "hl7v2" for i in items]
        control_ids = [i.control_id for i in items]
        self.planner = Planner([i.raw for i in items], keys, compare, control_ids, _KEY_WIDTH)

    def rows(self, inserts: list[Insert], now: datetime) -> list[dict[str, Any]]:
        stored = self.planner.stored_digest
        return [_row(self.items[n], key, now, note, stored(n, key)) for n, key, note in inserts]

    def results(self, plan: Plan, ids: list[int], now: datetime) -> list[Stored]:
        """Each item's result, given the ids of the plan's inserts (in their order)."""
        results: list[Stored | None] = [None] * len(self.items)
        for (n, _, note), new_id in zip(plan.inserts, ids, strict=True):
            results[n] = Stored(new_id, now, reused=note is not None)
        for n, held in plan.stored.items():
            results[n] = Stored(held.id, held.received_at, duplicate=True)
        for n, first in plan.earlier.items():
            original = results[first]
            assert original is not None  # an earlier item is one inserted
            results[n] = Stored(original.id, original.received_at, duplicate=True)
        done = [r for r in results if r is not None]
        assert len(done) == len(results), "an item of the batch was left out of its plan"
        return done


class MessageStore(Repository):
    """Storing, processing and showing messages."""

    # -- receiving ---------------------------------------------------------------------------

    @property
    def last_commit_wait_s(self) -> float:
        """How long the last :meth:`save_batch` waited for other writers (SQLite)."""
        return self._write_lock.priority_wait_s

    def save_batch(self, items: Sequence[Incoming]) -> list[Stored]:
        """Store messages in ONE transaction (group commit) and return where each went.

        A message whose ``dedupe_key`` (sender + MSH-10) is already stored, or appears earlier in
        the batch, with the same content (engine/store/resends.py) is not stored again: its
        result points at the original (``duplicate``). Other content under a key already held
        is a message of its own, stored with a warning (``reused``).
        Committed before returning: the caller may acknowledge once this returns.

        SQLite looks the keys up first (under its one writer's lock nothing comes between).
        PostgreSQL inserts first, skipping a key already committed (looked up by the same
        statement) or one another writer or node is inserting (``ON CONFLICT DO NOTHING``, which
        waits for that insert), and looks up only the keys it skipped: one statement for a batch
        without duplicates (engine/store/inserts.py). A large original stored before migration
        0027 is hashed between two tries, outside the transaction (resends.py, ``Unhashed``).
        """
        now = utcnow()
        batch = _Batch(items)
        asked = batch.planner.lookups()  # keys and guards, hashed before the writers' lock
        for last in (False, False, True):
            try:
                return self._save(batch, asked, now, inline=last)
            except Unhashed as old:  # originals stored before 0027: hashed outside, then again
                hash_originals(self.db_engine, old.ids)
        raise AssertionError("unreachable: the last attempt hashes inline")

    def _save(self, batch: _Batch, asked: set[str], now: datetime, inline: bool) -> list[Stored]:
        with self._tx(priority=True) as conn:
            if conn.dialect.name == "postgresql":
                return self._save_inserting_first(conn, batch, now, inline)
            known = holders(conn, asked, inline=inline) if asked else {}
            while True:  # a key reused asks for its digest-keyed key too: two lookups at most
                plan = batch.planner.plan(known)
                need = plan.consulted - asked
                if not need:
                    break
                known |= holders(conn, need, inline=inline)
                asked |= need
            ids = insert_messages(conn, batch.rows(plan.inserts, now), now) if plan.inserts else []
            return batch.results(plan, [int(i) for i in ids if i is not None], now)

    _TAKE_BACK = delete(messages).where(in_list(messages.c.id))
    #: rounds for the whole batch: one for new messages; a round more for each lookup that
    #: changes the plan (a control ID reused; an original purged between the insert and its
    #: lookup; a resend of a message stored under a reused one takes two, its guard looked up)
    _ROUNDS = 4

    def _save_inserting_first(
        self, conn: Connection, batch: _Batch, now: datetime, inline: bool
    ) -> list[Stored]:
        """PostgreSQL: insert the batch as planned from the originals known so far and look up
        the keys it skipped; plan again and insert what the new plan adds, until nothing is
        skipped. A message under a control ID reused is added after the batch's others: a
        batch holds at most one message of each connection (engine/flow/ingest.py), so no
        sender's order changes. Anything else that changes the plan (an original purged between
        the insert and its lookup) takes this transaction's rows back and inserts the batch
        whole again, so its ids keep its order. After :attr:`_ROUNDS`, the batch fails and its
        senders are told to send again."""
        known: dict[str, Held] = {}
        done: dict[Insert, int] = {}  # each row inserted so far, by its plan's insert
        for _ in range(self._ROUNDS):
            plan = batch.planner.plan(known)
            todo = [p for p in plan.inserts if p not in done]
            stale = done.keys() - set(plan.inserts)
            if stale or (done and any(note is None for _, _, note in todo)):
                conn.execute(self._TAKE_BACK, {"ids": list(done.values())})
                done, todo = {}, plan.inserts
            # no guard the plan has judged: one held by other content (a key built to collide)
            guards = [None if (g := batch.planner.guard(*p)) in known else g for p in todo]
            ids = insert_messages(conn, batch.rows(todo, now), now, guards) if todo else []
            # a row is skipped when its key or its guard is held: look both up
            missed = [(p[1], g) for p, g, i in zip(todo, guards, ids, strict=True) if i is None]
            skipped = {k for pair in missed for k in pair if k is not None}
            done |= {p: i for p, i in zip(todo, ids, strict=True) if i is not None}
            if not skipped:
                return batch.results(plan, [done[p] for p in plan.inserts], now)
            known |= holders(conn, skipped, inline=inline)
        raise RuntimeError(f"a batch's keys changed under it {self._ROUNDS} times while storing")

    # -- processing --------------------------------------------------------------------------

    _earlier = messages.alias("earlier")
    #: received messages whose patient has no earlier message still received or being processed;
    #: asked once per state with ``=``, not with ``state IN (...)``: SQLite 3.40.1, once
    #: ``ANALYZE`` has written statistics, answers ``patient_key = ? AND state IN (...) AND
    #: id < ?`` on ix_messages_patient with the message itself, and the worker never claims it
    _CLAIMABLE = (
        select(messages.c.id)
        .where(
            messages.c.state == "received",
            or_(
                messages.c.patient_key.is_(None),
                and_(
                    ~exists().where(
                        _earlier.c.patient_key == messages.c.patient_key,
                        _earlier.c.state == "received",
                        _earlier.c.id < messages.c.id,
                    ),
                    ~exists().where(
                        _earlier.c.patient_key == messages.c.patient_key,
                        _earlier.c.state == "processing",
                        _earlier.c.id < messages.c.id,
                    ),
                ),
            ),
        )
        .order_by(messages.c.id)
        .limit(bindparam("limit"))
        .with_for_update(skip_locked=True, of=messages, key_share=True)
    )
    _MARK_PROCESSING = (
        update(messages)
        .where(in_list(messages.c.id))
        .values(
            state="processing",
            claimed_by=bindparam("worker"),
            claimed_at=bindparam("now"),
            updated_at=bindparam("now"),
        )
    )
    _RAW_OF = (
        select(messages.c.id, messages.c.raw, messages.c.kind)
        .where(in_list(messages.c.id))
        .order_by(messages.c.id)
    )

    def claim_received(self, worker: str, limit: int = 100) -> list[tuple[int, bytes, str]]:
        """Claim up to ``limit`` received messages for processing: (id, raw, kind), oldest first.

        A patient's message waits while an earlier one of the same patient is still received or
        being processed (by this worker or another): each patient's messages are processed, and
        so delivered, in the order they arrived, while different patients go in parallel.
        """
        now = self.now()  # (before the transaction: it may read the database's clock)
        with self._tx() as conn:
            return self._claim_received(conn, worker, limit, now)

    def _claim_received(
        self, conn: Connection, worker: str, limit: int, now: datetime
    ) -> list[tuple[int, bytes, str]]:
        in_index_order(conn)  # PostgreSQL: however stale the statistics of ``received``
        ids = list(conn.execute(self._CLAIMABLE, {"limit": limit}).scalars())
        if not ids:
            return []
        conn.execute(self._MARK_PROCESSING, {"ids": ids, "worker": worker, "now": now})
        rows = conn.execute(self._RAW_OF, {"ids": ids})
        return [(r.id, bytes(r.raw), r.kind) for r in rows]

    def finish_and_claim(
        self, outcomes: Sequence[Processed], worker: str, limit: int
    ) -> tuple[list[Processed], list[tuple[int, bytes, str]]]:
        """:meth:`finish_batch` and then :meth:`claim_received`, in ONE transaction: a worker
        that keeps processing pays one transaction a batch, not two (on SQLite most of a
        transaction's cost under the one write lock is the same whatever it holds). A message
        finished here may be claimable again only by another patient's rule: the claim sees
        what the finish wrote."""
        now = self.now()
        with self._tx() as conn:
            kept = self._finish(conn, outcomes, now) if outcomes else []
            return kept, self._claim_received(conn, worker, limit, now)

    #: one probe of ix_messages_state, the state written into the statement (see
    #: :func:`~engine.store.db.state_literal`). Received rows are the newest: a plan expecting
    #: them common reads the table from its start until one turns up. A generic plan always
    #: does (tests/store/test_queue_plans.py), and so did plans made from statistics taken
    #: during a warm-up burst (20 ms a batch at 28,000 messages in the ingest bench's
    #: PostgreSQL run, 6 December 2026, until the leader analyzed the table again)
    _ANY_RECEIVED = select(exists().where(messages.c.state == state_literal("received")))

    def any_received(self) -> bool:
        """Whether a message is waiting to be claimed (a read: no write lock taken)."""
        with self.db_engine.connect() as conn:
            return bool(conn.execute(self._ANY_RECEIVED).scalar_one())

    def reclaim_stale(self, older_than: timedelta) -> int:
        """Put back messages whose processing was claimed more than ``older_than`` ago: the
        fallback for a claim no node takes over (a dead node's claims are taken over within
        seconds, see engine/store/nodes.py). Claimed and compared in the database's clock."""
        now = self.now()
        with self._tx() as conn:
            result = conn.execute(
                update(messages)
                .where(messages.c.state == "processing", messages.c.claimed_at < now - older_than)
                .values(state="received", claimed_by=None, claimed_at=None, updated_at=now)
            )
            return int(result.rowcount or 0)

    def release_processing(self, worker: str) -> int:
        """Put back every message ``worker`` holds, after a step of its that failed (the
        database away, or a claim committed with its reply lost) when none is in its hands:
        still ``processing`` and still its own, they are ``received`` again. Without this a
        live worker's claims stayed, and every later message of their patients waited, until
        :meth:`reclaim_stale` (5 minutes)."""
        with self._tx() as conn:
            result = conn.execute(
                update(messages)
                .where(messages.c.state == "processing", messages.c.claimed_by == worker)
                .values(state="received", claimed_by=None, claimed_at=None, updated_at=utcnow())
            )
            return int(result.rowcount or 0)

    _EXISTING = select(messages.c.id).where(in_list(messages.c.id)).with_for_update(key_share=True)
    #: the messages of a batch still claimed by this worker (a claim taken back does not count)
    #: (locked on PostgreSQL, so a reclaim and another worker's finish cannot slip in before our
    #: update)
    _STILL_CLAIMED = (
        select(messages.c.id)
        .where(
            in_list(messages.c.id),
            messages.c.state == "processing",
            messages.c.claimed_by == bindparam("worker"),
        )
        .with_for_update(key_share=True)
    )
    _FINISH = (
        update(messages)
        .where(messages.c.id == bindparam("mid"))
        .values(
            state=bindparam("new_state"),
            reason=bindparam("new_reason"),
            warnings=after_receipt_notes(bindparam("new_warnings", type_=Text)),
            patient_key=func.coalesce(bindparam("new_patient"), messages.c.patient_key),
            updated_at=bindparam("now"),
        )
    )

    #: PostgreSQL: :data:`_FINISH` for the whole batch in one statement (one execution, not
    #: one per message; each message's row of the arrays is its own; the warnings appended to
    #: the receipt's as in :func:`~engine.store.resends.after_receipt_notes`)
    _FINISH_ALL = text(
        "UPDATE messages SET state = u.state, reason = u.reason, warnings = CASE"
        " WHEN messages.warnings IS NULL THEN u.warnings WHEN u.warnings IS NULL"
        " THEN messages.warnings ELSE messages.warnings || E'\\n' || u.warnings END,"
        " patient_key = COALESCE(u.patient, messages.patient_key), updated_at = :now"
        " FROM unnest(CAST(:ids AS bigint[]), CAST(:states AS text[]), CAST(:reasons AS text[]),"
        " CAST(:warnings AS text[]), CAST(:patients AS text[]))"
        " AS u(id, state, reason, warnings, patient)"
        " WHERE messages.id = u.id"
    )

    def finish_batch(self, outcomes: Sequence[Processed]) -> list[Processed]:
        """Record the outcomes of processing several messages, with their deliveries and indexed
        resources, in ONE transaction, and return those recorded. An outcome whose claim was
        taken back (the worker was thought dead and another claimed the message) is dropped:
        the other worker's counts."""
        now = self.now()  # (before the transaction: it may read the database's clock)
        with self._tx() as conn:
            return self._finish(conn, outcomes, now)

    def _finish(
        self, conn: Connection, outcomes: Sequence[Processed], now: datetime
    ) -> list[Processed]:
        owned: set[int] = set()
        for worker in {o.worker for o in outcomes}:
            ids = [o.message_id for o in outcomes if o.worker == worker]
            if worker is None:
                found = conn.execute(self._EXISTING, {"ids": ids})
            else:
                found = conn.execute(self._STILL_CLAIMED, {"ids": ids, "worker": worker})
            owned.update(found.scalars())
        kept = [o for o in outcomes if o.message_id in owned]
        kept = _skip_delivered_before(conn, kept)
        if kept:
            finished = [
                {
                    "mid": o.message_id,
                    "new_state": o.state,
                    "new_reason": clean(o.reason),
                    "new_warnings": clean_lines(o.warnings),
                    "new_patient": clean(o.patient_key, _PATIENT_WIDTH),
                    "now": now,
                }
                for o in kept
            ]
            if conn.dialect.name == "postgresql":
                conn.execute(self._FINISH_ALL, _columns(finished, now))
            else:
                conn.execute(self._FINISH, finished)
        queue_deliveries(conn, [(o.message_id, d) for o in kept for d in o.new_deliveries], now)
        upsert_resources(conn, [(o.message_id, r) for o in kept for r in o.resources], now)
        return kept

    # -- showing and replaying ---------------------------------------------------------------

    #: the columns of a :class:`MessageView`, in its order
    _VIEW = select(
        messages.c.id,
        messages.c.received_at,
        messages.c.channel,
        messages.c.control_id,
        messages.c.message_type,
        messages.c.trigger,
        messages.c.state,
        messages.c.reason,
        messages.c.warnings,
    )

    def get(self, message_id: int) -> MessageView | None:
        """One message with its deliveries, or None."""
        with self.db_engine.connect() as conn:
            row = conn.execute(self._VIEW.where(messages.c.id == message_id)).one_or_none()
            if row is None:
                return None
            return replace(_view(row), deliveries=deliveries_of(conn, message_id))

    def list(self, *, state: str | None = None, limit: int = 100) -> builtins.list[MessageView]:
        """The newest messages first, optionally only those in ``state`` (without deliveries)."""
        query = self._VIEW.order_by(messages.c.id.desc()).limit(limit)
        if state:
            query = query.where(messages.c.state == state)
        with self.db_engine.connect() as conn:
            return [_view(row) for row in conn.execute(query)]

    def raw(self, message_id: int) -> bytes | None:
        """The bytes of a message as they arrived, or None."""
        with self.db_engine.connect() as conn:
            value = conn.execute(
                select(messages.c.raw).where(messages.c.id == message_id)
            ).scalar_one_or_none()
        return bytes(value) if value is not None else None

    def ids_in_state(self, state: str, limit: int = 10_000, after: int = 0) -> builtins.list[int]:
        """The ids of messages in ``state`` after ``after``, oldest first (to replay them all)."""
        with self.db_engine.connect() as conn:
            return list(
                conn.execute(
                    select(messages.c.id)
                    .where(messages.c.state == state, messages.c.id > after)
                    .order_by(messages.c.id)
                    .limit(limit)
                ).scalars()
            )

    #: one statement, so one snapshot on PostgreSQL too (READ COMMITTED gives each statement
    #: its own): counted in two, a delivery settled between them showed its message still
    #: ``routed`` beside no delivery pending
    _COUNTS = (
        select(messages.c.state, func.count().label("n"))
        .group_by(messages.c.state)
        .union_all(
            select(literal("deliveries_pending").label("state"), func.count().label("n")).where(
                deliveries.c.state.in_(("pending", "waiting"))
            )
        )
    )

    def counts(self) -> dict[str, int]:
        """Messages per state, and deliveries pending (the queue depth), as of one moment."""
        with self.db_engine.connect() as conn:
            out = {r.state: int(r.n) for r in conn.execute(self._COUNTS)}
        out.setdefault("deliveries_pending", 0)
        return out

    # -- retention ---------------------------------------------------------------------------

    def purge_range(
        self,
        older_than: timedelta,
        id_range: tuple[int, int] | None = None,
        lock_limit_s: float | None = None,
    ) -> Purged:
        """Retention: delete messages delivered (or unrouted) before the cutoff, with their
        deliveries, replayed originals whose copies are delivered or gone (a chain of replays
        goes one link a run), and refused document uploads (kind ``document``, state ``error``,
        no document: the sender was told, nothing waits on them) refused before the cutoff.
        Other messages not delivered (received, routed, error, dead) are never purged, nor the
        original of a copy not delivered (or unrouted) before the cutoff. A purged document
        message takes its document along, a refusal the bytes it kept, each only when nothing
        else needs them (``purge_documents_of``). ``id_range`` (after, up to): only ids after
        the first and up to the second (one short transaction of a batched purge,
        engine/jobs/retention.py).
        ``lock_limit_s``: on PostgreSQL the purge's statement is cancelled past it (``Purged``'s
        ``cancelled``: engine/store/purge.py); SQLite's batch is bounded by its size alone."""
        cutoff = utcnow() - older_than
        placed = select(documents.c.id).where(documents.c.message_id == messages.c.id).exists()
        copy = messages.alias("copy")
        unfinished_copy = (
            select(copy.c.id)
            .where(
                copy.c.replay_of == messages.c.id,
                # always true (a copy is stored after its original), but not an equality: so
                # PostgreSQL cannot answer by hashing every unfinished message of the table (a
                # full scan a batch), and probes the index on replay_of per replayed original
                copy.c.id > messages.c.id,
                # a copy settled since the cutoff keeps its original (its dedupe key) as long
                or_(copy.c.state.not_in(("delivered", "unrouted")), copy.c.updated_at >= cutoff),
            )
            .exists()
        )
        purgeable = (
            or_(
                messages.c.state.in_(("delivered", "unrouted")),
                and_(messages.c.state == "replayed", ~unfinished_copy),
                and_(messages.c.kind == "document", messages.c.state == "error", ~placed),
            ),
            messages.c.updated_at < cutoff,
        )
        query = select(messages.c.id, messages.c.kind).where(*purgeable)
        if id_range is not None:  # the primary key's range: read from its index alone
            query = query.where(messages.c.id > id_range[0], messages.c.id <= id_range[1])
        if self.db_engine.dialect.name == "postgresql":
            return purge_postgresql(self.db_engine, query, purgeable, lock_limit_s)
        with self._write_locked() as conn:
            purged, files = purge_sqlite(conn, query)
            blobs = BlobFiles.for_engine(self.db_engine)
            # committed: the files' rows are gone for good; removed before another writer can
            # come between and record the same bytes again, finding their file still there
            if files and blobs is not None:
                blobs.remove(files)
        return purged
