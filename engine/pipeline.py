"""The one place that knows the order of the stages: receive → store → parse → (map → route →
deliver) → acknowledge.

Today the pipeline stores, parses and acknowledges; mapping, routing and delivery join it as they
are
built. The rule it enforces is the engine's promise: a message is acknowledged positively only after
its raw bytes are committed to the store, and every byte received is stored, with its state and the
reason, even when it cannot be read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from engine.errors import EngineError
from engine.hl7v2.ack import (
    ack_code_for,
    ack_mode,
    build_ack,
    commit_ack_wanted,
    errors_for,
    hl7_timestamp,
    nak_for_unparseable,
)
from engine.hl7v2.codec import Message, parse_message

__all__ = ["Ingest", "MessageStore", "Receipt"]

log = logging.getLogger(__name__)


class MessageStore(Protocol):
    """What the pipeline needs of the store (SqlMessageStore, or a fake in tests)."""

    def save_received(self, raw: bytes, *, channel: str, peer: str = "") -> int: ...

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
    ) -> None: ...

    def set_state(self, message_id: int, state: str, reason: str | None = None) -> None: ...


@dataclass(frozen=True)
class Receipt:
    """What happened to one received message: its store id, state and the ACK to send (if any)."""

    message_id: int | None
    state: str
    ack: bytes | None
    ack_code: str | None


class Ingest:
    """Receives raw messages from any channel (MLLP, HTTP, file) and acknowledges them."""

    def __init__(
        self,
        store: MessageStore,
        *,
        default_charset: str = "utf-8",
        identity: tuple[str, str] = ("ENGINE", "ENGINE"),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.default_charset = default_charset
        self.identity = identity
        self.clock = clock

    def receive(self, raw: bytes, *, channel: str, peer: str = "") -> Receipt:
        """Store, parse and acknowledge one message. Never raises for bad input.

        If the store itself fails, the sender gets a negative commit ACK (or nothing, when not even
        the MSH can be read) and must send again: nothing is acknowledged that is not stored.
        """
        try:
            message_id = self.store.save_received(raw, channel=channel, peer=peer)
        except Exception as exc:  # the database is down: refuse, the sender will retry
            log.error("store failed; message refused", extra={"error": type(exc).__name__})
            error = EngineError("message could not be stored; send again")
            nak = self._nak(raw, error, "storefail")
            return Receipt(None, "refused", nak, _msa1(nak))

        try:
            message = parse_message(raw, default_charset=self.default_charset)
            mtype = message.type
            msh = message.msh
        except EngineError as exc:
            self.store.set_state(message_id, "error", str(exc))
            log.info("message unreadable", extra={"message_id": message_id, "code": exc.code})
            nak = self._nak(raw, exc, str(message_id))
            return Receipt(message_id, "error", nak, _msa1(nak))

        self.store.describe(
            message_id,
            control_id=message.control_id,
            message_type=mtype.code,
            trigger=mtype.trigger,
            structure=mtype.structure,
            sending_application=msh.get(3),
            sending_facility=msh.get(4),
        )
        log.info(
            "message stored",
            extra={"message_id": message_id, "control_id": message.control_id, "type": str(mtype)},
        )
        return self._acknowledge(message, message_id, None)

    def _acknowledge(self, message: Message, message_id: int, error: EngineError | None) -> Receipt:
        enhanced = ack_mode(message) == "enhanced"
        accepted = error is None
        state = "received" if accepted else "error"
        if enhanced and not commit_ack_wanted(message, accepted):
            return Receipt(message_id, state, None, None)
        code = ack_code_for(error, enhanced=enhanced, stage="commit" if enhanced else "application")
        ack = build_ack(
            message,
            code,
            control_id=f"A{message_id}",
            timestamp=hl7_timestamp(self.clock()),
            errors=errors_for(error, message) if error else (),
            sending=self.identity,
        )
        return Receipt(message_id, state, ack.to_bytes(), code)

    def _nak(self, raw: bytes, error: EngineError, suffix: str) -> bytes | None:
        return nak_for_unparseable(
            raw,
            error,
            control_id=f"A{suffix}",
            timestamp=hl7_timestamp(self.clock()),
            sending=self.identity,
        )


def _msa1(ack: bytes | None) -> str | None:
    """The acknowledgment code of an ACK we built (for the receipt and metrics)."""
    if ack is None:
        return None
    return parse_message(ack).get("MSA-1") or None
