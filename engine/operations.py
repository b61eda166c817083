"""What an operator does with stored messages: list, show, replay — for the CLI and the API.

Views carry metadata only (ids, control IDs, types, states, destinations), never payloads.
"""

from __future__ import annotations

from engine.api.ports import DeliveryView, MessageView
from engine.store.repository import MessageRecord, SqlMessageStore

__all__ = ["Messages"]


class Messages:
    """The MessagesPort of the HTTP API, over the store."""

    def __init__(self, store: SqlMessageStore, on_replay: object = None) -> None:
        self.store = store
        self.on_replay = on_replay

    def _view(self, rec: MessageRecord, with_deliveries: bool) -> MessageView:
        deliveries = (
            [
                DeliveryView(d.destination, d.state, d.attempts, d.last_error, d.delivered_at)
                for d in self.store.deliveries_for(rec.id)
            ]
            if with_deliveries
            else []
        )
        return MessageView(
            id=rec.id,
            received_at=rec.received_at,
            channel=rec.channel,
            control_id=rec.control_id,
            message_type=rec.message_type,
            trigger=rec.trigger,
            state=rec.state,
            reason=rec.reason,
            deliveries=deliveries,
            warnings=rec.warnings.splitlines() if rec.warnings else [],
        )

    def list(self, *, state: str | None = None, limit: int = 100) -> list[MessageView]:
        return [self._view(r, False) for r in self.store.list(state=state, limit=limit)]

    def get(self, message_id: int) -> MessageView | None:
        rec = self.store.get(message_id)
        return self._view(rec, True) if rec else None

    def replay(self, message_id: int) -> int:
        """Store the message's bytes again as a new message (state received, not a duplicate);
        the queue processes it like any other."""
        new_id = self.store.replay(message_id)
        if callable(self.on_replay):
            self.on_replay()
        return new_id
