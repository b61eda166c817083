"""An operator's "mark handled" of a message that needed someone (error, dead, unrouted,
needs-patient): recorded once, audited, shown beside the message in the list and on its page.
The message keeps its state; the mark says a person dealt with it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, insert, select

from engine.store.audit import audit
from engine.store.db import Repository, aware, utcnow
from engine.store.lists import in_list
from engine.store.operator import ActionRefused, Who
from engine.store.tables import message_handled, messages

__all__ = ["HANDLEABLE_STATES", "Handled", "HandledMarks", "handled_of"]

#: the message states an operator may mark handled: what needs a person and got one
HANDLEABLE_STATES = ("error", "dead", "unrouted", "needs-patient")

_MARKS = select(message_handled).where(in_list(message_handled.c.message_id))


@dataclass(frozen=True)
class Handled:
    """An operator's "mark handled" of a message."""

    message_id: int
    handled_at: datetime
    handled_by: str
    note: str | None


class HandledMarks(Repository):
    """The store's part for "mark handled"."""

    def handled_marks(self, message_ids: Sequence[int]) -> dict[int, Handled]:
        """The "handled" marks of these messages (a page of the list)."""
        if not message_ids:
            return {}
        with self.db_engine.connect() as conn:
            return handled_of(conn, message_ids)

    def mark_handled(self, message_id: int, who: Who, note: str | None = None) -> Handled:
        """Record that an operator has dealt with an error or dead message (it stays in its
        state; the list shows the mark). KeyError when there is no such message;
        :class:`ActionRefused` when its state needs no one, or it is marked already. Audited
        as ``mark-handled``, a refusal too."""
        note = (note or "").strip()[:500] or None
        try:
            with self._tx() as conn:
                state = conn.execute(
                    select(messages.c.state).where(messages.c.id == message_id)
                ).scalar_one_or_none()
                if state is None:
                    raise KeyError(message_id)
                if state not in HANDLEABLE_STATES:
                    raise ActionRefused(
                        f"message {message_id} is {state}: only a message that is "
                        f"{', '.join(HANDLEABLE_STATES)} is marked handled"
                    )
                known = handled_of(conn, [message_id]).get(message_id)
                if known is not None:
                    raise ActionRefused(
                        f"message {message_id} was marked handled by {known.handled_by} "
                        f"at {known.handled_at:%Y-%m-%d %H:%M} UTC"
                    )
                mark = Handled(message_id, utcnow(), who.actor[:255], note)
                conn.execute(
                    insert(message_handled).values(
                        message_id=message_id,
                        handled_at=mark.handled_at,
                        handled_by=mark.handled_by,
                        note=note,
                    )
                )
                audit(
                    conn,
                    action="mark-handled",
                    actor=who.actor,
                    source=who.source,
                    peer=who.peer,
                    message_id=message_id,
                    outcome="ok",
                    detail=f"was {state}",
                )
        except (KeyError, ActionRefused) as exc:
            with self._tx() as conn:
                audit(
                    conn,
                    action="mark-handled",
                    actor=who.actor,
                    source=who.source,
                    peer=who.peer,
                    message_id=message_id if not isinstance(exc, KeyError) else None,
                    outcome="refused",
                    detail=f"no message {message_id}" if isinstance(exc, KeyError) else str(exc),
                )
            raise
        return mark


def handled_of(conn: Connection, ids: Sequence[int]) -> dict[int, Handled]:
    return {
        r.message_id: Handled(r.message_id, aware(r.handled_at), r.handled_by, r.note)
        for r in conn.execute(_MARKS, {"ids": list(ids)})
    }
