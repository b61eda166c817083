"""A replay's original and its deliveries still queued (engine/store/operator.py): the copy,
routed anew, replaces them, so a destination that was down gets the message once, not twice;
refused where that would reorder a patient's messages, skip a destination or race a send."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

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
#: a message's deliveries still queued after :data:`_SUPERSEDE`: claimed by a dispatcher when
#: it ran (on its way, or its lease run out while it may have been), or since
_LEFT = select(deliveries.c.destination).where(
    deliveries.c.message_id == bindparam("mid"), deliveries.c.state.in_(_QUEUED_STATES)
)
_later = deliveries.alias("later")
#: a message's queued deliveries with a later message's waiting behind them in their queue
_AHEAD = select(deliveries.c.destination).where(
    deliveries.c.message_id == bindparam("mid"),
    deliveries.c.state.in_(_QUEUED_STATES),
    exists().where(
        _later.c.destination == deliveries.c.destination,
        _later.c.patient_key == deliveries.c.patient_key,
        _later.c.state == "waiting",
        _later.c.id > deliveries.c.id,
        _later.c.message_id != deliveries.c.message_id,
    ),
)


def queues_of(conn: Connection, message_id: int) -> set[tuple[str, str]]:
    """The (destination, patient) queues of a message's deliveries still queued (a read: for
    :func:`lock_queues` before the message is locked, as the dispatcher's order has it)."""
    return {(r.destination, r.patient_key) for r in conn.execute(_QUEUES_OF, {"mid": message_id})}


def supersede_queued(
    conn: Connection,
    message_id: int,
    now: datetime,
    queues: Collection[tuple[str, str]],
    skipped: Collection[str] = (),
) -> tuple[list[str], str]:
    """A replay's original (engine/store/operator.py): its deliveries still queued, a
    destination down and retrying, are settled ``resent`` (its copy is routed anew and
    replaces them, so each destination gets the message once), and their queues' next ones
    promoted. Returns the destinations settled, and why the replay cannot be done now ("" when
    it can; the caller refuses it, its transaction rolled back, nothing settled): a later
    message for the same patient waiting behind one (the copy, queued when it is processed,
    would go after it); one to a destination the copy will skip (``skipped``: where the
    message or an earlier one of its replay chain was delivered, engine/store/messages.py); a
    delivery claimed by a dispatcher, on its way or its lease run out while it may have been
    (any delivery still queued after the settling: one claimed then, or whose claim a retry
    has given back since, which that statement did not wait for). ``queues``: the
    message's, as :func:`queues_of` read them once the message was locked; the caller's to
    lock first (:func:`lock_queues`)."""
    params = {"mid": message_id}
    if ahead := sorted(set(conn.execute(_AHEAD, params).scalars())):
        return [], (
            f"it is queued to {', '.join(ahead)} ahead of later messages for the same patient, "
            "which its copy would follow: replay it once it is delivered or dead"
        )
    queued = {destination for destination, _ in queues}
    if twice := sorted(queued & set(skipped)):
        return [], (
            f"it is still queued to {', '.join(twice)}, where it (or the message it replays) "
            "was delivered by another route, and its copy would skip it: replay it once that "
            "delivery settles, or with --all-destinations"
        )
    settled = conn.execute(_SUPERSEDE, params).all()
    if left := sorted(set(conn.execute(_LEFT, params).scalars())):
        return [], (
            f"it is being sent to {', '.join(left)} at this moment: replay it once that "
            "delivery settles"
        )
    if settled:
        promote_queues(conn, {(r.destination, r.patient_key) for r in settled}, now)
    return sorted({r.destination for r in settled}), ""
