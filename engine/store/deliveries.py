"""Deliveries: one queue per (destination, patient), so each patient's messages reach each
destination in the order they arrived while different patients flow in parallel.

Only the head of a queue is ``pending`` (claimable); the deliveries behind it are ``waiting``.
Settling the head (delivered, dead, or ``needs-patient``: the destination does not know the
patient) promotes the next one. A ``needs-patient`` delivery is neither retried nor dead: it
waits, outside its queue, for an operator to resend it or match its document to a patient
(engine/store/operator.py). A delivery is claimed with a lease
(``claimed_until``) and its owner, the claiming node (``claimed_by``): a dispatcher that dies
loses its claims as soon as its node's heartbeat stops (engine/store/nodes.py), or when the
lease runs out for a claim without an owner; an outcome counts only for a delivery still pending
(and still its node's), so one sent twice is settled once.

Building a SQLAlchemy statement (and its cache key) costs more than SQLite takes to run it; the
queue workers run these thousands of times a second, so each is built once, beside the method
that runs it, with bind parameters (``expanding`` ones for id lists).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    bindparam,
    case,
    exists,
    func,
    insert,
    or_,
    select,
    text,
    update,
)

from engine.store.attempts import Outcome, attempt_history, record_attempts
from engine.store.clean import clean, clean_lines
from engine.store.db import Repository, aware, in_index_order
from engine.store.lists import in_list, json_rows, not_in_list
from engine.store.tables import deliveries, messages
from engine.store.views import DeliveryView

__all__ = [
    "Deliveries",
    "DestinationBacklog",
    "DueDelivery",
    "NewDelivery",
    "Outcome",
    "deliveries_of",
    "lock_queues",
    "promote_queues",
    "queue_deliveries",
]


@dataclass(frozen=True)
class NewDelivery:
    """A payload processing made for one destination, to queue behind the patient's earlier
    ones."""

    destination: str
    route: str
    kind: str
    content_type: str
    payload: bytes
    patient_key: str
    #: an operator's resend: the delivery this one replaces (now ``resent``)
    resend_of: int | None = None


@dataclass(frozen=True)
class DueDelivery:
    """A delivery claimed for sending: the payload and what the destination needs with it."""

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
    #: deliveries not yet delivered and not dead (the head of each queue and those behind it);
    #: not those that wait for their patient (``needs-patient``: no queue holds them)
    waiting: int
    #: seconds since the oldest of them was queued
    oldest_age_s: float


# -- queueing (in the transaction that finishes processing a message) ---------------------------

#: the patients of a destination with a delivery still queued (pending or waiting)
_QUEUED_PATIENTS = select(deliveries.c.patient_key).where(
    deliveries.c.destination == bindparam("dest"),
    in_list(deliveries.c.patient_key, "patients"),
    deliveries.c.state.in_(("pending", "waiting")),
)
#: PostgreSQL: the same, one probe per patient in ix_deliveries_order's order (see
#: :data:`_PROMOTE_ALL`: with stale statistics the form above read every pending delivery of
#: the destination through ix_deliveries_due or ix_deliveries_state_dest)
_QUEUED_PATIENTS_PG = text(
    "SELECT q.patient FROM unnest(CAST(:patients AS text[])) AS q(patient)"
    " CROSS JOIN LATERAL (SELECT 1 FROM deliveries AS d"
    "  WHERE d.destination = :dest AND d.patient_key = q.patient"
    "  AND d.state IN ('pending', 'waiting') ORDER BY d.state, d.id LIMIT 1) AS h"
)
_INSERT_DELIVERIES = insert(deliveries)
#: PostgreSQL: a batch's deliveries in one statement, the rows as one JSON array (payloads in
#: base64): an ``executemany`` sent a statement a row (pipelined, but each parsed, bound and
#: executed by the server, and each a round of psycopg's and SQLAlchemy's per-execution work:
#: 7 % of the worker's Python time, 6 December 2026). Not one array a column: psycopg quotes a
#: text array's elements in Python, and a payload's hex took 5 % of the worker's time there;
#: orjson and base64 write in C, PostgreSQL reads in C. ``ORDER BY n`` keeps the list's order
#: for the ids (``nextval`` is evaluated after the sort): a queue's order is its ids'.
_INSERT_DELIVERIES_PG = text(
    "INSERT INTO deliveries (message_id, destination, route, kind, content_type, payload,"
    " patient_key, state, attempts, next_attempt_at, created_at, resend_of)"
    " SELECT r.message_id, r.destination, r.route, r.kind, r.content_type,"
    " decode(r.payload, 'base64'), r.patient_key, r.state, 0, :now, :now, r.resend_of"
    " FROM ROWS FROM (json_to_recordset(CAST(:rows AS json)) AS (message_id bigint,"
    " destination text, route text, kind text, content_type text, payload text,"
    " patient_key text, state text, resend_of bigint)) WITH ORDINALITY"
    " AS r(message_id, destination, route, kind, content_type, payload, patient_key, state,"
    " resend_of, n) ORDER BY r.n"
)
_PATIENT_WIDTH = getattr(deliveries.c.patient_key.type, "length", None)


def queue_deliveries(
    conn: Connection, new: Sequence[tuple[int, NewDelivery]], now: datetime
) -> None:
    """Queue the deliveries (message id, delivery) in the caller's transaction, each behind the
    earlier ones for its destination and patient (here or already queued).

    A new delivery is ``waiting`` when an earlier one of its queue is still pending or waiting:
    only the head of each queue is claimable, and settling it promotes the next. On PostgreSQL
    each queue is locked first (as promoting does), so a dispatcher settling the head at the
    same moment either promotes the new delivery after we commit, or has settled the head before
    we look (and the new one is the head).
    """
    if not new:
        return
    rows: list[dict[str, Any]] = [
        {
            "message_id": mid,
            "destination": d.destination,
            "route": d.route,
            "kind": d.kind,
            "content_type": d.content_type,
            "payload": d.payload,
            # cleaned as the message's own (a NUL in PID-3 must not fail PostgreSQL's insert)
            "patient_key": clean(d.patient_key, _PATIENT_WIDTH) or "",
            "state": "pending",
            "resend_of": d.resend_of,
        }
        for mid, d in new
    ]
    by_destination: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_destination.setdefault(row["destination"], []).append(row)
    _lock_queues(conn, {(r["destination"], r["patient_key"]) for r in rows})
    for destination, group in by_destination.items():
        patients = list({r["patient_key"] for r in group})
        ask = _QUEUED_PATIENTS_PG if conn.dialect.name == "postgresql" else _QUEUED_PATIENTS
        queued = set(conn.execute(ask, {"dest": destination, "patients": patients}).scalars())
        for row in group:
            if row["patient_key"] in queued:
                row["state"] = "waiting"
            else:
                queued.add(row["patient_key"])
    if conn.dialect.name == "postgresql":  # (attempts 0, due and created now: in the statement)
        for row in rows:
            row["payload"] = base64.b64encode(row["payload"]).decode()
        for text_rows in json_rows(rows):  # in order: the ids keep the queues' order
            conn.execute(_INSERT_DELIVERIES_PG, {"rows": text_rows, "now": now})
    else:
        fixed = {"attempts": 0, "next_attempt_at": now, "created_at": now}
        conn.execute(_INSERT_DELIVERIES, [{**row, **fixed} for row in rows])


#: PostgreSQL: the (destination, patient) queues, for the rest of the transaction, in one
#: statement: ``unnest`` yields the keys in the array's order and each lock is taken as its row
#: is produced, so the sorted order holds (one round trip, not one per queue)
_LOCK_QUEUES = text(
    "SELECT pg_advisory_xact_lock(hashtextextended(q.key, 0)) "
    "FROM unnest(CAST(:queues AS text[])) WITH ORDINALITY AS q(key, n) ORDER BY q.n"
)


def _lock_queues(conn: Connection, queues: set[tuple[str, str]]) -> None:
    """PostgreSQL: transaction-scoped advisory locks on (destination, patient) queues, in one
    order everywhere (no deadlock), and no row locks that a dispatcher's updates could meet in
    another order. SQLite has one writer at a time: nothing to do."""
    if conn.dialect.name != "postgresql" or not queues:
        return
    keys = sorted(f"{destination}\x1f{patient}" for destination, patient in queues)
    conn.execute(_LOCK_QUEUES, {"queues": keys}).all()


#: for an operator's resend, which takes the queues before it locks the message
lock_queues = _lock_queues


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


#: PostgreSQL: :data:`_PROMOTE` for every queue in one statement (one execution, not one per
#: queue). Each queue is probed once, in ix_deliveries_order's order (state, then id, within
#: its destination and patient): its first row is its pending head if it has one (nothing to
#: promote), else its oldest waiting delivery. That order only ix_deliveries_order gives, so
#: the probe stays on it whatever the statistics say of the pending rows; asked as a NOT EXISTS
#: of a pending one, the planner took ix_deliveries_state_dest when its statistics saw none
#: pending, and read every pending delivery of the destination once per queue (1 ms a message
#: in the pg-cost run of 4 December 2026). The queues are disjoint, so each row's promotion is
#: the one-queue statement's.
#:
#: The heads are gathered first (an InitPlan, run once per execution) and the rows updated by
#: id. Joined to the updated table instead, the plan may re-run each queue's probe for every row
#: of that table, and a plan made while the table was nearly empty is kept after it grows:
#: psycopg prepares a statement run five times and PostgreSQL keeps its generic plan until the
#: table is analyzed again (engine/jobs/upkeep.py). Made that way, the joined form read the
#: whole table once per queue and once more at each execution (reproduced after the ingest bench
#: of 6 December 2026, where one promotion ran over six minutes, a plan not captured); this form
#: reads it at worst once per queue and once more, never once per row of it.
_PROMOTE_ALL = text(
    "UPDATE deliveries SET state = 'pending', next_attempt_at = :now"
    " WHERE state = 'waiting' AND id = ANY(ARRAY("
    "  SELECT h.id FROM unnest(CAST(:dests AS text[]), CAST(:patients AS text[]))"
    "   AS q(dest, patient)"
    "  CROSS JOIN LATERAL (SELECT w.id, w.state FROM deliveries AS w"
    "   WHERE w.destination = q.dest AND w.patient_key = q.patient"
    "   AND w.state IN ('pending', 'waiting') ORDER BY w.state, w.id LIMIT 1) AS h"
    "  WHERE h.state = 'waiting'))"
)


def _promote(conn: Connection, queues: set[tuple[str, str]], now: datetime) -> None:
    """The next waiting delivery of each (destination, patient) whose head was settled becomes
    pending, due now."""
    if not queues:
        return
    _lock_queues(conn, queues)
    ordered = sorted(queues)
    if conn.dialect.name == "postgresql":
        dests, patients = [d for d, _ in ordered], [p for _, p in ordered]
        conn.execute(_PROMOTE_ALL, {"dests": dests, "patients": patients, "now": now})
        return
    conn.execute(_PROMOTE, [{"dest": d, "patient": p, "now": now} for d, p in ordered])


#: for a replay that settles its original's queued deliveries (engine/store/replays.py)
promote_queues = _promote


#: FOR NO KEY UPDATE, as every lock the engine takes on a message's row (engine/store/resends.py
#: ``_HOLDERS``: a receiver's lookup of a resend's original is not held up by it)
_LOCK_MESSAGES = select(messages.c.id).where(in_list(messages.c.id)).with_for_update(key_share=True)
#: a routed message is delivered once no delivery is queued; ``needs-patient`` if one waits for
#: its patient (the action an operator must take: match or resend; a dead one beside it shows in
#: the list's ``failing`` and is resent with it), else dead if one is dead
_SETTLE_MESSAGES = (
    update(messages)
    .where(
        in_list(messages.c.id),
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
                    deliveries.c.message_id == messages.c.id,
                    deliveries.c.state == "needs-patient",
                ),
                "needs-patient",
            ),
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


def _settle(conn: Connection, message_ids: Sequence[int], now: datetime) -> None:
    """A message is delivered when every delivery is; ``needs-patient`` when one waits for its
    patient; dead when one is dead.

    The message rows are locked first, so two deliveries of one message finishing at the same
    time (READ COMMITTED on PostgreSQL) cannot each miss the other's outcome.
    """
    conn.execute(_LOCK_MESSAGES, {"ids": list(message_ids)}).all()
    conn.execute(_SETTLE_MESSAGES, {"ids": list(message_ids), "now": now})


_DELIVERIES_OF = (
    select(
        deliveries.c.id,
        deliveries.c.destination,
        deliveries.c.state,
        deliveries.c.attempts,
        deliveries.c.last_error,
        deliveries.c.delivered_at,
    )
    .where(deliveries.c.message_id == bindparam("mid"))
    .order_by(deliveries.c.id)
)


def deliveries_of(conn: Connection, message_id: int) -> tuple[DeliveryView, ...]:
    """How each delivery of a message is going, in the order they were queued, each with its
    attempts (engine/store/attempts.py)."""
    rows = conn.execute(_DELIVERIES_OF, {"mid": message_id}).all()
    history = attempt_history(conn, rows)
    return tuple(
        DeliveryView(
            r.destination,
            r.state,
            r.attempts,
            r.last_error,
            aware(r.delivered_at) if r.delivered_at else None,
            history[r.id],
        )
        for r in rows
    )


_free_claim = or_(
    deliveries.c.claimed_until.is_(None), deliveries.c.claimed_until < bindparam("now")
)


class Deliveries(Repository):
    """Claiming due deliveries, recording their outcomes, and the queues' upkeep."""

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
    _DUE_UNPAUSED = _DUE.where(not_in_list(deliveries.c.destination, "paused"))
    #: SQLite: claim candidates found without the write lock, if still unclaimed and pending
    _CLAIM_DELIVERIES = (
        update(deliveries)
        .where(in_list(deliveries.c.id), deliveries.c.state == "pending", _free_claim)
        .values(claimed_until=bindparam("until"), claimed_by=bindparam("owner"))
        .returning(deliveries.c.id)
    )
    #: PostgreSQL: lease the rows already locked (FOR UPDATE SKIP LOCKED)
    _LEASE_DELIVERIES = (
        update(deliveries)
        .where(in_list(deliveries.c.id))
        .values(claimed_until=bindparam("until"), claimed_by=bindparam("owner"))
    )

    def claim_due_deliveries(
        self,
        limit: int = 50,
        lease: float = 120.0,
        paused: Sequence[str] = (),
        owner: str | None = None,
        until: datetime | None = None,
    ) -> list[DueDelivery]:
        """Claim deliveries that are due, at most one in flight per (destination, patient): a
        delivery is ``waiting`` while an earlier one for the same patient and destination is
        pending, so order is kept per patient while different patients flow in parallel.

        ``owner``: the claiming node (engine/store/nodes.py): its claims are taken over as soon
        as its heartbeat stops, and only its own outcomes count for them. A claim without an
        owner is free again when its lease runs out. ``until``: the lease's end, chosen by the
        caller (else ``lease`` seconds from now), which names this call's claims for
        :meth:`release_lease` should its reply be lost. Both in the database's clock
        (:meth:`now`), which every node shares."""
        now = self.now()
        until = until or now + timedelta(seconds=lease)
        due = self._DUE_UNPAUSED if paused else self._DUE
        params = {"now": now, "limit": limit, "paused": list(paused)}
        if self.db_engine.dialect.name == "sqlite":
            # find candidates without the write lock, then claim them in a short write
            # transaction that re-checks they are still unclaimed and pending
            with self.db_engine.connect() as conn:
                candidates = list(conn.execute(due, params).scalars())
            if not candidates:
                return []
            with self._tx() as conn:
                claim = {"ids": candidates, "now": now, "until": until, "owner": owner}
                ids = list(conn.execute(self._CLAIM_DELIVERIES, claim).scalars())
                return self._due_rows(conn, ids, until)
        with self._tx() as conn:
            in_index_order(conn)  # however stale the statistics of ``pending``
            locked = due.with_for_update(skip_locked=True, of=deliveries)
            ids = list(conn.execute(locked, params).scalars())
            if ids:
                lease_of = {"ids": ids, "until": until, "owner": owner}
                conn.execute(self._LEASE_DELIVERIES, lease_of)
            return self._due_rows(conn, ids, until)

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
        .where(in_list(deliveries.c.id))
        .order_by(deliveries.c.id)
    )

    def _due_rows(self, conn: Connection, ids: list[int], until: datetime) -> list[DueDelivery]:
        if not ids:
            return []
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
            for r in conn.execute(self._DUE_ROWS, {"ids": ids})
        ]

    # outcomes apply to pending deliveries only: a delivery sent twice (its lease ran out while
    # it was in flight) is settled once, and settles (and promotes) nothing the second time
    _DELIVERED = (
        update(deliveries)
        .where(in_list(deliveries.c.id), deliveries.c.state == "pending")
        .values(
            state="delivered",
            delivered_at=bindparam("now"),
            attempts=deliveries.c.attempts + 1,
            claimed_until=None,
            claimed_by=None,
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
            claimed_by=None,
            last_error=bindparam("err"),
        )
        .returning(deliveries.c.message_id, deliveries.c.destination, deliveries.c.patient_key)
    )
    #: the destination does not know the patient: settled out of its queue (the next delivery
    #: of the queue is promoted), not dead, never claimed again; resent or matched by an operator
    _NEEDS_PATIENT = _DEAD.values(state="needs-patient")
    _RETRY = (
        update(deliveries)
        .where(deliveries.c.id == bindparam("did"), deliveries.c.state == "pending")
        .values(
            attempts=deliveries.c.attempts + 1,
            claimed_until=None,
            claimed_by=None,
            last_error=bindparam("err"),
            next_attempt_at=bindparam("at"),
        )
    )
    #: a node's outcomes count only while the claim is still its own: one thought dead (its
    #: claims taken over, perhaps claimed and settled by another) records nothing late
    _owned = deliveries.c.claimed_by == bindparam("owner")
    _DELIVERED_BY = _DELIVERED.where(_owned)
    _DEAD_BY = _DEAD.where(_owned)
    _NEEDS_PATIENT_BY = _NEEDS_PATIENT.where(_owned)
    _RETRY_BY = _RETRY.where(_owned)

    def record_outcomes(self, outcomes: Sequence[Outcome], owner: str | None = None) -> None:
        """Record delivery outcomes in ONE transaction of a few set-based statements (the
        dispatcher batches them): the write lock is held as briefly as possible.

        ``owner``: the node that claimed them; an outcome counts only while its delivery is
        still claimed by that node (not after a takeover). Without one, while still pending."""
        if not outcomes:
            return
        now = self.now()  # a promoted delivery is due now in the database's clock
        done = [o.delivery_id for o in outcomes if o.ok]
        waits = [o for o in outcomes if not o.ok and o.needs_patient]
        dead = [o for o in outcomes if not o.ok and not o.needs_patient and o.retry_at is None]
        retry = [o for o in outcomes if not o.ok and not o.needs_patient and o.retry_at is not None]
        owned = owner is not None
        delivered = self._DELIVERED_BY if owned else self._DELIVERED
        dead_stmt = self._DEAD_BY if owned else self._DEAD
        waits_stmt = self._NEEDS_PATIENT_BY if owned else self._NEEDS_PATIENT
        with self._tx() as conn:
            # failures (and successes after failures) only: before the updates, whose
            # condition the attempts' rows share (engine/store/attempts.py)
            record_attempts(conn, outcomes, now, owner)
            settled: list[Any] = []
            if done:
                params = {"ids": done, "now": now, "owner": owner}
                settled += conn.execute(delivered, params).all()
            for o in dead:
                error = {"did": o.delivery_id, "err": clean_lines(o.error, 2000), "owner": owner}
                settled += conn.execute(dead_stmt, error).all()
            for o in waits:
                error = {"did": o.delivery_id, "err": clean_lines(o.error, 2000), "owner": owner}
                settled += conn.execute(waits_stmt, error).all()
            if retry:
                conn.execute(
                    self._RETRY_BY if owned else self._RETRY,
                    [
                        {
                            "did": o.delivery_id,
                            "err": clean_lines(o.error, 2000),
                            "at": o.retry_at,
                            "owner": owner,
                        }
                        for o in retry
                    ],
                )
            if settled:
                _promote(conn, {(r.destination, r.patient_key) for r in settled}, now)
                _settle(conn, sorted({r.message_id for r in settled}), now)

    #: a claim given back (the worker stopped before it started the delivery)
    _RELEASE = (
        update(deliveries)
        .where(in_list(deliveries.c.id), deliveries.c.state == "pending")
        .values(claimed_until=None, claimed_by=None)
    )
    _RELEASE_BY = _RELEASE.where(deliveries.c.claimed_by == bindparam("owner"))

    def release_claims(self, delivery_ids: Sequence[int], owner: str | None = None) -> None:
        """Give back claims on deliveries not started (a stopping dispatcher): they are due
        again at once instead of when their lease runs out. With ``owner``, only while they
        are still that node's claims."""
        if delivery_ids:
            with self._tx() as conn:
                stmt = self._RELEASE_BY if owner is not None else self._RELEASE
                conn.execute(stmt, {"ids": list(delivery_ids), "owner": owner})

    _RELEASE_LEASE = (
        update(deliveries)
        .where(
            deliveries.c.state == "pending",
            deliveries.c.claimed_by == bindparam("owner"),
            deliveries.c.claimed_until == bindparam("until"),
        )
        .values(claimed_until=None, claimed_by=None)
    )

    def release_lease(self, owner: str, until: datetime) -> int:
        """Give back the claims one call of :meth:`claim_due_deliveries` by ``owner`` made, the
        lease it gave them ending at ``until`` (none was renewed: a renewal moves it), when
        that call failed and may have committed with its reply lost: none of them is in the
        caller's hands, and without this they held their patients' queues until the lease ran
        out (10 minutes). How many were given back."""
        with self._tx() as conn:
            result = conn.execute(self._RELEASE_LEASE, {"owner": owner, "until": until})
            return int(result.rowcount or 0)

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

    def renew_claim(self, delivery_id: int, old: datetime, new: datetime) -> bool:
        """Extend a claim that is still ours (same lease, still pending); False when it is not
        (it ran out and another dispatcher may have the delivery now: do not send it)."""
        with self._tx() as conn:
            done = conn.execute(self._RENEW, {"did": delivery_id, "old": old, "new": new})
            return bool(done.rowcount)

    _headless = deliveries.alias("headless")
    #: queues whose head is gone (a guard against any path that settles without promoting)
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

    def repair_queues(self) -> int:
        """Promote the next delivery of any queue left without a pending head; how many queues.
        Nothing should leave one so; this runs with the retention job as a guard."""
        now = self.now()
        with self._tx() as conn:
            queues = {(r.destination, r.patient_key) for r in conn.execute(self._HEADLESS_QUEUES)}
            _promote(conn, queues, now)
            return len(queues)

    _BACKLOG = (
        select(
            deliveries.c.destination,
            func.count().label("waiting"),
            func.min(deliveries.c.created_at).label("oldest"),
        )
        .where(deliveries.c.state.in_(("pending", "waiting")))
        .group_by(deliveries.c.destination)
        .order_by(deliveries.c.destination)
    )

    def backlog(self) -> list[DestinationBacklog]:
        """Per destination with anything left to deliver: how many deliveries wait (pending or
        queued behind one) and the age of the oldest. A destination with nothing waiting is not
        listed. Read-only: no write lock, no transaction of its own."""
        now = self.now()  # (the deliveries' times are the database's clock)
        with self.db_engine.connect() as conn:
            rows = conn.execute(self._BACKLOG).all()
        return [
            DestinationBacklog(
                r.destination, int(r.waiting), max(0.0, (now - aware(r.oldest)).total_seconds())
            )
            for r in rows
        ]
