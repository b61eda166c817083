"""What an operator does to a stored message: replay it, or resend its deliveries.

**Replay** receives the message's bytes again, as a new message (``channel`` replay, linked by
``replay_of``) that goes through the whole flow: routed again with the routes of today and mapped
again with the mappings of today, to every route that takes it. The copy keeps the original's
control ID, type and sender (only its dedupe key stays empty, so it is never taken for a
duplicate of the original), and the original is settled as ``replayed`` (its reason names the
copy): ``engine messages replay --state dead`` run again finds nothing to replay instead of making
one more copy each time. A ``replayed`` message is refused a second replay and a resend, naming
its copy: the copy is the live one (before, each replay of the original made one more copy, and a
resend put the original back to ``dead`` for the next ``replay --state dead``).

**Resend** sends a delivery's payload again, as it was made, to its destination: by default each
dead delivery of the message and each that waits for its patient (``needs-patient``: the EHR has
registered the patient since), or every delivery to one named destination (even one delivered:
the operator asked). Each resend is a new delivery row linked to the one it replaces
(``resend_of``), which becomes ``resent`` (settled, no longer dead), queued in per-patient order
behind what that destination already has for the patient. A message that was ``dead``,
``needs-patient`` or ``delivered`` is ``routed`` again until the resends settle it. While a
resend of a destination is still queued, resending it again makes nothing (and says so), as does
a resend when nothing failed: repeating a resend never multiplies copies.

Each replay and resend is recorded in the audit trail (engine/store/audit.py) in the transaction
that makes it; a refused one (unknown destination, a message still being processed or already
replayed) is recorded as refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update

from engine.errors import EngineError
from engine.store.audit import audit
from engine.store.db import Repository, utcnow
from engine.store.deliveries import NewDelivery, lock_queues, queue_deliveries
from engine.store.tables import deliveries, messages
from engine.store.views import ResendOutcome

__all__ = ["ActionRefused", "Operator", "Replayed", "UnknownDestination", "Who"]

#: a message in these states has not been through processing yet: nothing to replay or resend
_UNFINISHED = ("received", "processing")
#: delivery states still in a queue
_QUEUED = ("pending", "waiting")
#: delivery states a resend takes by default: given up, or waiting for the patient
_FAILED = ("dead", "needs-patient")
#: message states a resend puts back to ``routed``
_SETTLED = ("dead", "delivered", "needs-patient")


class ActionRefused(EngineError):
    """A replay or resend the message's state does not allow (the message says why)."""


class UnknownDestination(ActionRefused):
    """A resend to a destination the message never had (the message names those it has)."""


@dataclass(frozen=True)
class Who:
    """Who asks: the token's subject (API) or the OS user (CLI), and from where."""

    actor: str
    source: str  # cli, api
    peer: str | None = None


@dataclass(frozen=True)
class Replayed:
    """A replay: the new message's id, and the state the original was in."""

    message_id: int
    replay_of: int
    original_state: str


#: the columns a replay copies from its original (besides the raw bytes)
_COPIED = (
    "kind",
    "size",
    "raw",
    "peer",
    "control_id",
    "message_type",
    "trigger",
    "structure",
    "sending_application",
    "sending_facility",
    "patient_key",
)
_ORIGINAL = select(messages.c.id, messages.c.state, *(messages.c[c] for c in _COPIED)).where(
    messages.c.id == bindparam("mid")
)
_DELIVERY_COLUMNS = select(
    deliveries.c.id,
    deliveries.c.destination,
    deliveries.c.route,
    deliveries.c.kind,
    deliveries.c.content_type,
    deliveries.c.payload,
    deliveries.c.patient_key,
    deliveries.c.state,
).where(deliveries.c.message_id == bindparam("mid"))
_MARK_RESENT = (
    update(deliveries)
    .where(deliveries.c.id.in_(bindparam("ids", expanding=True)))
    .where(deliveries.c.state.in_(("dead", "delivered", "needs-patient")))
    .values(state="resent", claimed_until=None)
)


_NEWEST_COPY = (
    select(messages.c.id)
    .where(messages.c.replay_of == bindparam("mid"))
    .order_by(messages.c.id.desc())
    .limit(1)
)


def _lock_message(conn: Connection, message_id: int) -> Any | None:
    """The message's row, locked until the transaction ends (PostgreSQL; SQLite has one writer)."""
    return conn.execute(_ORIGINAL.with_for_update(), {"mid": message_id}).one_or_none()


def _refuse_replayed(conn: Connection, message_id: int, state: str) -> None:
    """ActionRefused for a message already replayed, naming its (newest) copy: the live one."""
    if state != "replayed":
        return
    copy = conn.execute(_NEWEST_COPY, {"mid": message_id}).scalar_one_or_none()
    as_ = f"as message {copy}" if copy is not None else "(its copy is gone)"
    raise ActionRefused(
        f"message {message_id} was already replayed {as_}: replay or resend that one"
    )


class Operator(Repository):
    """Replaying messages and resending deliveries, each recorded in the audit trail."""

    def replay_message(self, message_id: int, who: Who, *, everywhere: bool = False) -> Replayed:
        """Receive a stored message again as a new message and settle the original as
        ``replayed``. The copy goes only to destinations the original (or an earlier replay of
        it) was not delivered to, unless ``everywhere`` (channel ``replay-all``; see
        engine/store/messages.py ``_skip_delivered_before``). KeyError when there is no such
        message; :class:`ActionRefused` while it is still received or being processed (the copy
        would race it), or once it is replayed (the message names the copy)."""
        now = utcnow()
        try:
            with self._tx() as conn:
                row = _lock_message(conn, message_id)
                if row is None:
                    raise KeyError(message_id)
                if row.state in _UNFINISHED:
                    raise ActionRefused(
                        f"message {message_id} is {row.state}: it has not been processed yet"
                    )
                _refuse_replayed(conn, message_id, row.state)
                copy = {c: getattr(row, c) for c in _COPIED}
                new_id = conn.execute(
                    insert(messages)
                    .values(
                        **copy,
                        received_at=now,
                        channel="replay-all" if everywhere else "replay",
                        replay_of=message_id,
                        dedupe_key=None,
                        state="received",
                        updated_at=now,
                    )
                    .returning(messages.c.id)
                ).scalar_one()
                conn.execute(
                    update(messages)
                    .where(messages.c.id == message_id)
                    .values(
                        state="replayed",
                        reason=f"replayed as message {new_id} (was {row.state})",
                        updated_at=now,
                    )
                )
                audit(
                    conn,
                    action="replay",
                    **_who(who),
                    message_id=message_id,
                    outcome="ok",
                    detail=f"new message {new_id}; was {row.state}",
                )
        except (KeyError, ActionRefused) as exc:
            self._refused("replay", who, message_id, exc)
            raise
        return Replayed(int(new_id), message_id, row.state)

    def resend(self, message_id: int, who: Who, destination: str | None = None) -> ResendOutcome:
        """Queue a message's dead and needs-patient deliveries again (or every delivery to
        ``destination``), each
        linked to the one it replaces, which becomes ``resent``. KeyError when there is no such
        message; :class:`ActionRefused` for a destination the message never had, a message with
        no deliveries, or one replayed (its copy is the live one: the message names it)."""
        try:
            with self._tx() as conn:
                outcome = self._resend(conn, message_id, destination)
                audit(
                    conn,
                    action="resend",
                    **_who(who),
                    message_id=message_id,
                    outcome="ok",
                    detail=_resend_detail(destination, outcome),
                )
        except (KeyError, ActionRefused) as exc:
            self._refused("resend", who, message_id, exc)
            raise
        return outcome

    def _resend(self, conn: Connection, message_id: int, destination: str | None) -> ResendOutcome:
        """The resend, in the caller's transaction."""
        # the queues first, then the message row: the dispatcher settles a delivery (its queue's
        # lock) before it settles the message (the row), so taking them in that order cannot
        # deadlock against it
        rows = conn.execute(_DELIVERY_COLUMNS, {"mid": message_id}).all()
        lock_queues(conn, {(r.destination, r.patient_key) for r in rows})
        message = _lock_message(conn, message_id)
        if message is None:
            raise KeyError(message_id)
        _refuse_replayed(conn, message_id, message.state)
        rows = conn.execute(_DELIVERY_COLUMNS.order_by(deliveries.c.id), {"mid": message_id}).all()
        current = [r for r in rows if r.state != "resent"]
        if not current:
            raise ActionRefused(
                f"message {message_id} has no deliveries (state {message.state}): "
                "replay it to route it again"
            )
        targets, note = _targets(message_id, current, destination)
        if not targets:
            return ResendOutcome(message_id, (), note)
        now = utcnow()
        conn.execute(_MARK_RESENT, {"ids": [r.id for r in targets]})
        new = [
            NewDelivery(
                r.destination,
                r.route,
                r.kind,
                r.content_type,
                bytes(r.payload),
                r.patient_key,
                resend_of=r.id,
            )
            for r in targets
        ]
        queue_deliveries(conn, [(message_id, d) for d in new], now)
        if message.state in _SETTLED:
            conn.execute(
                update(messages)
                .where(messages.c.id == message_id)
                .values(state="routed", updated_at=now)
            )
        made = conn.execute(
            select(deliveries.c.destination, deliveries.c.id, deliveries.c.resend_of)
            .where(deliveries.c.resend_of.in_([r.id for r in targets]))
            .order_by(deliveries.c.id)
        ).all()
        return ResendOutcome(message_id, tuple((d, int(i), int(o)) for d, i, o in made))

    _RAW = select(messages.c.raw).where(messages.c.id == bindparam("mid"))

    def read_payload(self, message_id: int, who: Who) -> bytes | None:
        """A message's bytes exactly as they arrived, or None; the read is recorded in the
        audit trail in the same transaction (``refused`` when there is no such message)."""
        with self._tx() as conn:
            value = conn.execute(self._RAW, {"mid": message_id}).scalar_one_or_none()
            audit(
                conn,
                action="view-payload",
                **_who(who),
                message_id=message_id,
                outcome="ok" if value is not None else "refused",
                detail=None if value is not None else "no such message",
            )
        return bytes(value) if value is not None else None

    def _refused(self, action: str, who: Who, message_id: int, exc: Exception) -> None:
        """Record a refused replay or resend (its own transaction: the action's rolled back)."""
        reason = f"no message {message_id}" if isinstance(exc, KeyError) else str(exc)
        with self._tx() as conn:
            audit(
                conn,
                action=action,
                **_who(who),
                message_id=message_id,
                outcome="refused",
                detail=reason,
            )


def _who(who: Who) -> dict[str, Any]:
    return {"actor": who.actor, "source": who.source, "peer": who.peer}


def _targets(
    message_id: int, current: Sequence[Any], destination: str | None
) -> tuple[list[Any], str]:
    """The deliveries to resend, or none and why."""
    if destination is not None:
        named = [r for r in current if r.destination == destination]
        if not named:
            known = ", ".join(sorted({r.destination for r in current}))
            raise UnknownDestination(
                f"message {message_id} has no destination {destination!r} (it has: {known})"
            )
        queued = [r for r in named if r.state in _QUEUED]
        if queued:
            return [], f"{destination}: already queued ({queued[0].state}), nothing resent"
        return named, ""
    dead = [r for r in current if r.state in _FAILED]
    if dead:
        return dead, ""
    waiting = sorted({r.destination for r in current if r.state in _QUEUED})
    if waiting:
        return [], f"nothing dead; still queued: {', '.join(waiting)}"
    return [], "nothing dead: every delivery was delivered (name a destination to send it again)"


def _resend_detail(destination: str | None, outcome: ResendOutcome) -> str:
    target = f"destination {destination}" if destination else "failed deliveries"
    if not outcome.queued:
        return f"{target}: {outcome.note}"
    made = ", ".join(f"{d} (delivery {i} replaces {o})" for d, i, o in outcome.queued)
    return f"{target}: {made}"
