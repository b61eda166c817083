"""In-memory fakes of the API's ports (engine.api.ports), for the HTTP tests."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from engine.flow.ingest import Receipt
from engine.metrics import EngineMetrics
from engine.store import (
    ActionRefused,
    DeliveryView,
    MessageLine,
    MessageQuery,
    MessageView,
    Replayed,
    ResendOutcome,
    UnknownDestination,
    Who,
)
from engine.store.handled import HANDLEABLE_STATES, Handled

__all__ = ["ACK", "NAK", "FakeHealth", "FakeIngest", "FakeMessages", "sample_view"]

ACK = (
    b"MSH|^~\\&|ENGINE|HUB|FRONTDESK|CLINIC|20260102030405||ACK^A04^ACK|A1|P|2.5.1\rMSA|AA|CTRL-1\r"
)
NAK = (
    b"MSH|^~\\&|ENGINE|HUB|FRONTDESK|CLINIC|20260102030405||ACK^A04^ACK|Astorefail|P|2.5.1\r"
    b"MSA|AE|CTRL-1\r"
    b"ERR|||207^Application internal error^HL70357|E\r"
)
CLOCK = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


class FakeIngest:
    """Answers with a canned receipt; ``mode`` picks which (ok, refused, unreadable, silent)."""

    def __init__(self, metrics: EngineMetrics | None = None) -> None:
        self.metrics = metrics
        self.mode = "ok"
        self.calls: list[tuple[str, bytes, str, str]] = []
        self.next_id = 1

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def _count(self, channel: str, receipt: Receipt) -> Receipt:
        if self.metrics is not None:  # as the real pipeline does, once per message
            self.metrics.record_receipt(
                channel=channel, ack_code=receipt.ack_code, stored=receipt.message_id is not None
            )
        return receipt

    async def receive(self, raw: bytes, *, channel: str, peer: str) -> Receipt:
        self.calls.append(("hl7v2", raw, channel, peer))
        if self.mode == "refused":
            return self._count(channel, Receipt(None, "refused", NAK, "AE"))
        if self.mode == "unreadable":
            return self._count(channel, Receipt(self._id(), "error", None, None))
        if self.mode == "silent":
            return self._count(channel, Receipt(self._id(), "received", None, None))
        return self._count(channel, Receipt(self._id(), "received", ACK, "AA"))

    async def receive_fhir(self, body: bytes, *, peer: str) -> Receipt:
        self.calls.append(("fhir", body, "fhir", peer))
        if self.mode == "refused":
            return self._count("fhir", Receipt(None, "refused", None, None))
        if self.mode == "unreadable":
            return self._count("fhir", Receipt(self._id(), "error", None, None))
        return self._count("fhir", Receipt(self._id(), "received", None, None))


def sample_view(message_id: int, *, state: str = "received", deliveries: int = 0) -> MessageView:
    """A synthetic message's metadata."""
    return MessageView(
        id=message_id,
        received_at=CLOCK,
        channel="mllp",
        control_id=f"CTRL-{message_id}",
        message_type="ADT",
        trigger="A04",
        state=state,
        reason=None if state != "error" else "segment 2 (PID): field 3 is required",
        deliveries=tuple(
            DeliveryView(
                destination=f"dest-{n}",
                state="delivered" if n == 0 else "retrying",
                attempts=n + 1,
                last_error=None if n == 0 else "HTTP 503",
                delivered_at=CLOCK if n == 0 else None,
            )
            for n in range(deliveries)
        ),
    )


def _line(view: MessageView) -> MessageLine:
    return MessageLine(
        id=view.id,
        received_at=view.received_at,
        channel=view.channel,
        control_id=view.control_id,
        message_type=view.message_type,
        trigger=view.trigger,
        state=view.state,
        sender="FRONTDESK^CLINIC",
        reason=view.reason,
        failing=tuple(
            f"{d.destination} (retrying): {d.last_error}" for d in view.deliveries if d.last_error
        ),
    )


class FakeMessages:
    """Messages in a dict; replay copies one under a new id; marks in a dict; every audit record
    kept."""

    def __init__(self, views: list[MessageView] | None = None) -> None:
        self.views = {view.id: view for view in views or []}
        self.queries: list[MessageQuery] = []
        self.audit: list[dict[str, object]] = []
        self.resends: list[tuple[int, str | None]] = []
        self.handled: dict[int, Handled] = {}

    def search(self, query: MessageQuery) -> list[MessageLine]:
        self.queries.append(query)
        newest = sorted(self.views.values(), key=lambda v: v.id, reverse=True)
        found = [v for v in newest if query.state is None or v.state == query.state]
        return [_line(v) for v in found][: query.limit]

    def get(self, message_id: int) -> MessageView | None:
        return self.views.get(message_id)

    def read_payload(self, message_id: int, who: Who) -> bytes | None:
        found = message_id in self.views
        self.record_audit(
            action="view-payload",
            actor=who.actor,
            source=who.source,
            peer=who.peer,
            message_id=message_id,
            outcome="ok" if found else "refused",
            detail=None if found else "no such message",
        )
        if not found:
            return None
        return (
            f"MSH|^~\\&|FRONTDESK|CLINIC|||20260102||ADT^A04|CTRL-{message_id}|P|2.5.1\r".encode()
        )

    def replay_message(self, message_id: int, who: Who, *, everywhere: bool = False) -> Replayed:
        original = self.views[message_id]  # KeyError when unknown, as the port says
        if original.state == "processing":
            raise ActionRefused(f"message {message_id} is processing")
        new_id = max(self.views) + 1
        self.views[new_id] = dataclasses.replace(
            original, id=new_id, state="received", deliveries=()
        )
        self.views[message_id] = dataclasses.replace(original, state="replayed")
        self._audit_ok("replay", who, message_id)
        return Replayed(new_id, message_id, original.state)

    def resend(self, message_id: int, who: Who, destination: str | None = None) -> ResendOutcome:
        view = self.views[message_id]
        known = {d.destination for d in view.deliveries}
        if destination is not None and destination not in known:
            raise UnknownDestination(f"message {message_id} has no destination {destination!r}")
        self.resends.append((message_id, destination))
        self._audit_ok("resend", who, message_id)
        return ResendOutcome(message_id, ((destination or "dest-1", 7, 2),))

    def mark_handled(self, message_id: int, who: Who, note: str | None = None) -> Handled:
        state = self.views[message_id].state
        if state not in HANDLEABLE_STATES or message_id in self.handled:
            raise ActionRefused(f"message {message_id} is {state}")
        self.handled[message_id] = Handled(message_id, CLOCK, who.actor, note)
        self._audit_ok("mark-handled", who, message_id)
        return self.handled[message_id]

    def record_audit(self, **entry: object) -> None:
        self.audit.append(entry)

    def _audit_ok(self, action: str, who: Who, message_id: int) -> None:
        """A successful action on a message, recorded as the store records it."""
        self.record_audit(
            action=action,
            actor=who.actor,
            source=who.source,
            message_id=message_id,
            outcome="ok",
            peer=who.peer,
        )


class FakeHealth:
    def __init__(self, ready: bool = True) -> None:
        self.is_ready = ready
        self.fail = False

    def ready(self) -> bool:
        if self.fail:
            raise RuntimeError("database gone")
        return self.is_ready


def post_scope(path: str, headers: dict[str, str]) -> dict[str, Any]:
    """The ASGI scope of a POST to ``path`` with ``headers``, from a loopback client."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
        "state": {},
    }
