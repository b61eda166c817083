"""A replay's original and its deliveries still queued (engine/store/operator.py): the copy,
routed anew, replaces them, so a destination that was down gets the message once, not twice;
refused where that would reorder a patient's messages, skip a destination or race a send."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, exists, select, update

from engine.store.deliveries import promote_queues
from engine.store.tables import deliveries

__all__ = ["queues_of", "supersede_queued"]

_QUEUED_STATES = ("pending", "waiting")
#: a message's deliveries still queued: their (destination, patient) queues
_QUEUES_OF = (
    select(deliveries.c.destination, deliveries.c.patient_key)
    .where(deliveries.c.message_id == bindparam("mid"), deliveries.c.state.in_(_QUEUED_STATES))
    .distinct()
)
#: a replayed message's deliveries still queued and never claimed: the copy replaces them (one
#: claimed, even with its lease run out, may be on its way: the replay is refused)
_SUPERSEDE = (
    update(deliveries)
    .where(
        deliveries.c.message_id == bindparam("mid"),
        deliveries.c.state.in_(_QUEUED_STATES),
        deliveries.c.claimed_until.is_(None),
    )
    .values(state="resent")
    .returning(deliveries.c.destination, deliveries.c.patient_key)
)
#: a message's deliveries claimed by a dispatcher (being sent, or their lease run out while it
#: may have been)
_IN_FLIGHT = select(deliveries.c.destination).where(
    deliveries.c.message_id == bindparam("mid"),
    deliveries.c.state == "pending",
    deliveries.c.claimed_until.is_not(None),
)
_later = deliveries.alias("later")


def _queued_where(*other: Any) -> Any:
    """The destinations of a message's queued deliveries for which another delivery
    (``_later``) meets the conditions ``other``."""
    return select(deliveries.c.destination).where(
        deliveries.c.message_id == bindparam("mid"),
        deliveries.c.state.in_(_QUEUED_STATES),
        exists().where(*other),
    )


#: a message's queued deliveries with a later message's waiting behind them in their queue
_AHEAD = _queued_where(
    _later.c.destination == deliveries.c.destination,
    _later.c.patient_key == deliveries.c.patient_key,
    _later.c.state == "waiting",
    _later.c.id > deliveries.c.id,
    _later.c.message_id != deliveries.c.message_id,
)
#: a message's queued deliveries to a destination another of its deliveries (another route's)
#: was delivered to: the copy skips that destination (engine/store/messages.py)
_DELIVERED_THERE = _queued_where(
    _later.c.message_id == deliveries.c.message_id,
    _later.c.destination == deliveries.c.destination,
    _later.c.state == "delivered",
)


def queues_of(conn: Connection, message_id: int) -> set[tuple[str, str]]:
    """The (destination, patient) queues of a message's deliveries still queued (a read: for
    :func:`lock_queues` before the message is locked, as the dispatcher's order has it)."""
    return {(r.destination, r.patient_key) for r in conn.execute(_QUEUES_OF, {"mid": message_id})}


def supersede_queued(conn: Connection, message_id: int, now: datetime) -> tuple[list[str], str]:
    """A replay's original (engine/store/operator.py): its deliveries still queued, a
    destination down and retrying, are settled ``resent`` (its copy is routed anew and
    replaces them, so each destination gets the message once), and their queues' next ones
    promoted. Returns the destinations settled, and why the replay cannot be done now ("" when
    it can; the caller refuses it, its transaction rolled back, nothing settled): a delivery
    claimed by a dispatcher (on its way, or its lease run out while it may have been); a later
    message for the same patient waiting behind one (the copy, queued when it is processed,
    would go after it); one to a destination another route of the message delivered to (the
    copy skips that destination). The queues are the caller's to lock first (:func:`queues_of`,
    :func:`lock_queues`)."""
    params = {"mid": message_id}
    if ahead := sorted(set(conn.execute(_AHEAD, params).scalars())):
        return [], (
            f"it is queued to {', '.join(ahead)} ahead of later messages for the same patient, "
            "which its copy would follow: replay it once it is delivered or dead"
        )
    if twice := sorted(set(conn.execute(_DELIVERED_THERE, params).scalars())):
        return [], (
            f"it was delivered to {', '.join(twice)} and is still queued there by another "
            "route, which its copy would skip: replay it once that delivery settles"
        )
    settled = conn.execute(_SUPERSEDE, params).all()
    if flying := sorted(set(conn.execute(_IN_FLIGHT, params).scalars())):
        return [], (
            f"it is being sent to {', '.join(flying)} at this moment: replay it once that "
            "delivery settles"
        )
    if settled:
        promote_queues(conn, {(r.destination, r.patient_key) for r in settled}, now)
    return sorted({r.destination for r in settled}), ""
