"""Ingest (Idempotent Receiver): receive, store and acknowledge, on the listener's time.

The rule Ingest enforces is the engine's promise: a message is acknowledged positively only after
its raw bytes and metadata are committed to the store, and every byte received is stored, with its
state and the reason, even when it cannot be read. Stores are *group commits*: messages arriving
together from many senders share one transaction, so durable ACKs stay fast.

Before the ACK the message must parse (else AR, 100/102) and pass the gate (engine/flow/gate.py:
the MSH header and whether some route takes it). Everything else (route, map, deliver) happens
after the ACK, from the queue.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypedDict

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from engine.errors import EngineError
from engine.flow.gate import RouteCheck, header_problem
from engine.hl7v2.ack import (
    ack_bytes,
    ack_code_for,
    ack_mode,
    application_ack_wanted,
    build_ack,
    commit_ack_wanted,
    errors_for,
    hl7_timestamp,
    nak_for_unparseable,
)
from engine.hl7v2.codec import Message, parse_message
from engine.pressure import IngestPressure
from engine.store import Incoming, Stored
from engine.store.db import failure_name, sqlstate

__all__ = ["Ingest", "MessageStore", "Receipt", "StatesOf", "patient_key_of"]

log = logging.getLogger(__name__)

#: how much of a frame refused for its size is stored: enough to see what it was and who sent it
OVERSIZE_KEPT_BYTES = 64 * 1024

#: the most enhanced-mode application ACKs that wait for their messages' processing at once.
#: Each waits up to 30 s and holds its message's bytes meanwhile: at 200 messages/s with the
#: queue 30 s behind, 6,000 wait. Past the limit a message still gets its commit ACK (it is
#: stored) and its application ACK is skipped, with a warning: its sender's own wait for it runs
#: out, as when processing takes too long. The memory held and the size of the one state query
#: per tick stay bounded, however far behind the queue falls.
MAX_PENDING_APPLICATION_ACKS = 10_000
#: how often the messages that application ACKs wait for are looked up (one query for them all)
APPLICATION_ACK_POLL_S = 0.05

#: reads the states of many messages in one query: ``{id: state}`` for those that exist
StatesOf = Callable[[list[int]], Mapping[int, str]]


class MessageStore(Protocol):
    """What Ingest needs of the store (SqlMessageStore, or a fake in tests)."""

    def save_batch(self, items: list[Incoming]) -> list[Stored]: ...


@dataclass(frozen=True)
class Receipt:
    """What happened to one received message: its store id, state and the ACK to send (if any)."""

    message_id: int | None
    state: str
    ack: bytes | None
    ack_code: str | None
    duplicate: bool = False
    #: enhanced mode: the sender asked for an application ACK (MSH-16 AL, ER or SU)
    application_ack: bool = False
    #: stored anew although its sender's control ID was stored before with other content
    reused: bool = False


@dataclass
class _Pending:
    item: Incoming
    future: asyncio.Future[Stored]


def _database_unavailable(exc: BaseException) -> bool:
    """Whether a failed store is the database's and not a row's: the connection lost (during the
    COMMIT too) or never made, the server shutting down, the pool's wait for a connection run
    out. SQLAlchemy's OperationalError wraps psycopg's and sqlite3's: on SQLite the file is
    locked, unreadable or full; on PostgreSQL it is also a statement cancelled (57014), a
    deadlock or a lock not granted (40xxx, 55P03), which a batch of one may well pass, so those
    are told apart by their SQLSTATE (none when the server never answered)."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, OperationalError):
        return False
    state = sqlstate(exc)
    return state is None or state.startswith(("08", "57P")) or state == "53300"


def _refuse_all(batch: list[_Pending], exc: BaseException) -> None:
    """Answer a batch's messages with the store's failure at once (each sender gets a negative
    ACK, and resends), without storing them one by one.

    The database unreachable, each try of one message would wait for the connect timeout
    (10 s): the last of a batch of N would be answered after N times that. And a connection lost
    during the COMMIT leaves it unknown whether the batch was stored: stored again one by one,
    the messages without a dedupe key (FHIR Bundles, the error rows of unreadable bytes) would be
    inserted twice, and such a Bundle routed and delivered twice. Refused instead, an HL7v2
    message's resend is found by its key if the commit did go through (the same ACK again). A
    keyless one's resend is stored anew, a second copy if the commit went through: FHIR gives no
    key of the sender's to know a resend by, and whether an HTTP client resends is its own rule
    (a 503 is not a promise that nothing was stored)."""
    for p in batch:
        if not p.future.done():
            p.future.set_exception(exc)


class Ingest:
    """Receives raw messages from any channel (MLLP, HTTP, file), stores and acknowledges them."""

    def __init__(
        self,
        store: MessageStore,
        *,
        routes: RouteCheck | None = None,
        default_charset: str = "utf-8",
        identity: tuple[str, str] = ("ENGINE", "ENGINE"),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_stored: Callable[[], None] | None = None,
        on_receipt: Callable[[str, Receipt], None] | None = None,
        max_batch: int = 500,
        pressure: IngestPressure | None = None,
        writers: int = 1,
    ) -> None:
        self.store = store
        self.routes = routes
        self.default_charset = default_charset
        self.identity = identity
        self.clock = clock
        self.on_stored = on_stored
        self.on_receipt = on_receipt
        self.max_batch = max_batch
        #: tells the queue workers when the receiver is saturated (they then yield the database)
        self.pressure = pressure
        #: how many group commits may be in flight at once (PostgreSQL: while one waits for its
        #: commit, the next batch is written; SQLite has one writer, so 1)
        self.writers = max(1, writers)
        self._queue: asyncio.Queue[_Pending] | None = None
        self._writers: list[asyncio.Task[None]] = []
        #: the writers' own threads, while started (see ``start``)
        self._commits: ThreadPoolExecutor | None = None
        #: the application ACKs waiting for their messages (enhanced mode), once one has waited
        self._settled: _Settled | None = None

    # -- group commit ------------------------------------------------------------------------

    async def start(self) -> None:
        # the group commits run on threads of their own: asyncio's default pool is shared (the
        # application ACKs' state queries, the MDM check, the API's store calls), and a commit
        # queued there behind other jobs keeps every sender of its batch waiting for an ACK
        self._commits = ThreadPoolExecutor(self.writers, thread_name_prefix="ingest-commit")
        self._queue = asyncio.Queue()
        self._writers = [
            asyncio.create_task(self._write_loop(), name=f"ingest-writer-{n}")
            for n in range(self.writers)
        ]

    async def stop(self) -> None:
        writers, self._writers = self._writers, []
        for task in writers:
            task.cancel()
        for task in writers:
            try:
                await task
            except asyncio.CancelledError:
                pass
        if self._commits is not None:
            # a commit under way finishes on its thread (its senders are gone: they resend)
            self._commits.shutdown(wait=False, cancel_futures=True)
            self._commits = None
        if self._settled is not None:
            self._settled.close()
            self._settled = None  # (a start after this makes a new one, on its own loop)

    async def _store(self, item: Incoming) -> Stored:
        if self._queue is None:  # not started: one transaction per message
            return (await asyncio.to_thread(self.store.save_batch, [item]))[0]
        future: asyncio.Future[Stored] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(item, future))
        return await future

    async def _write_loop(self) -> None:
        """Drain the queue: whatever arrived while the last commit ran goes in the next one.

        With several writers (PostgreSQL), each takes what is queued when it is free. A
        connection's next message is handed over only once its last one is stored (the MLLP
        server answers in order), so its messages' ids keep their order whatever the writer. Two
        batches holding the same dedupe key at once: the second's insert waits for the first's
        commit and finds the key stored (engine/store/messages.py, ``save_batch``)."""
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            started = time.monotonic()
            stored = await self._save_or_answer(batch)
            if stored is None:
                continue
            if self.pressure is not None:
                # the writer's own time: waiting for the workers' transactions is not the
                # receiver being busy (counting it would make the workers pause in turns)
                waited = getattr(self.store, "last_commit_wait_s", 0.0)
                self.pressure.committed(time.monotonic() - started - waited)
            for p, s in zip(batch, stored, strict=True):
                if not p.future.done():
                    p.future.set_result(s)
            if self.on_stored is not None:
                self.on_stored()

    async def _save_or_answer(self, batch: list[_Pending]) -> list[Stored] | None:
        """Store a batch; None when it failed, its senders answered already. A batch that found
        its pooled connection dead (the server restarted) is tried once more on a new one when
        every message of it has a dedupe key: had its COMMIT gone through, the second try finds
        them stored (duplicates, the same ACKs). One with a keyless message (a FHIR Bundle) is
        refused whole: tried again, that message would be stored twice."""
        items = [p.item for p in batch]
        try:
            return await self._save(items)
        except Exception as exc:
            failed = exc
        if (
            isinstance(failed, DBAPIError)
            and failed.connection_invalidated
            and all(i.dedupe_key for i in items)
        ):
            try:
                return await self._save(items)
            except Exception as again:
                failed = again
        unavailable = _database_unavailable(failed)
        log.error(
            "store failed",
            extra={
                "error": failure_name(failed),
                "n": len(batch),
                "then": "all refused" if unavailable else "one by one",
            },
        )
        if unavailable:
            _refuse_all(batch, failed)
        else:
            # one bad row must not refuse its neighbours: store them one by one
            await self._store_one_by_one(batch)
        return None

    async def _save(self, items: list[Incoming]) -> list[Stored]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._commits, self.store.save_batch, items)

    async def _store_one_by_one(self, batch: list[_Pending]) -> None:
        """After a batch failed for a row of it (a value, a constraint): each message in its own
        transaction, so that only the bad one is refused."""
        for n, p in enumerate(batch):
            try:
                [one] = await self._save([p.item])
            except Exception as single:  # this row is bad, or the database went away meanwhile
                if not p.future.done():
                    p.future.set_exception(single)
                if _database_unavailable(single):
                    _refuse_all(batch[n + 1 :], single)
                    break
            else:
                if not p.future.done():
                    p.future.set_result(one)
        if self.on_stored is not None:
            self.on_stored()

    # -- receiving ---------------------------------------------------------------------------

    async def receive(self, raw: bytes, *, channel: str, peer: str = "") -> Receipt:
        """Store and acknowledge one HL7v2 message. Never raises for bad input.

        If the store itself fails, the sender gets a negative ACK (AR, or CR in enhanced mode)
        and must send again: nothing is acknowledged that is not stored.
        """
        receipt = await self._receive(raw, channel=channel, peer=peer)
        if self.on_receipt is not None:
            self.on_receipt(channel, receipt)
        return receipt

    async def _receive(self, raw: bytes, *, channel: str, peer: str) -> Receipt:
        try:
            message = parse_message(raw, default_charset=self.default_charset)
        except EngineError as exc:
            item = Incoming(
                raw=raw, channel=channel, peer=peer[:255], state="error", reason=str(exc)
            )
            return await self._refuse_unreadable(raw, item, exc)

        mtype = message.type
        control_id = message.control_id
        problem = header_problem(message)
        if problem is None and self.routes is not None:
            if message.msh.get(9, 1, 1) == "MDM":
                # an MDM's document is decoded and its type checked before the ACK (megabytes of
                # base64: up to a second): off the event loop, so other connections' messages
                # are acknowledged meanwhile; every other message's check stays inline (cheap)
                problem = await asyncio.to_thread(self.routes.refuse, message)
            else:
                problem = self.routes.refuse(message)
        header = _header_of(message)
        item = Incoming(
            raw=raw,
            channel=channel,
            peer=peer[:255],
            state="error" if problem else "received",
            reason=str(problem) if problem else None,
            # only an accepted message is one a resend duplicates: a refused one may be fixed and
            # sent again with the same MSH-10, and must then be taken
            dedupe_key=(
                _clip(f"{message.msh.get(3)}|{message.msh.get(4)}|{control_id}", 700)
                if control_id and problem is None
                else None
            ),
            **header,
        )
        try:
            stored = await self._store(item)
        except Exception:
            return self._refused(raw)
        log.info(
            "message stored",
            extra={
                "message_id": stored.id,
                "control_id": control_id,
                "type": str(mtype),
                "duplicate": stored.duplicate,
                "control_id_reused": stored.reused,  # stored anew, with a warning on the row
                "outcome": "error" if problem else "received",
            },
        )
        return self._acknowledge(message, stored, problem, item.state)

    async def receive_oversize(
        self, head: bytes, *, limit: int, channel: str, peer: str = ""
    ) -> Receipt:
        """Account for a frame refused for its size: store its first bytes (at most 64 KiB) with
        state ``error`` and the reason, and answer with a reject that says a resend will be
        refused too. The rest of the frame was never read, so nothing of it is ever routed."""
        kept = head[:OVERSIZE_KEPT_BYTES]
        try:
            header = _header_of(parse_message(kept, default_charset=self.default_charset))
        except EngineError:  # cut off inside the header, or no MSH at all: the bytes still count
            header = _Header()
        item = Incoming(
            raw=kept,
            channel=channel,
            peer=peer[:255],
            state="error",
            reason=(
                f"message larger than the {limit}-byte limit (ENGINE_MAX_MESSAGE_BYTES): refused "
                f"unread; the first {len(kept)} bytes are kept"
            ),
            **header,
        )
        error = EngineError(
            f"message larger than the {limit}-byte limit: refused, and refused again if resent; "
            "split it or have the limit raised"
        )
        # 104 (value too long), not 207 (internal error): the same bytes can never be taken,
        # so the reject must not read as a passing fault worth a resend
        error.code = "104"
        try:
            stored = await self._store(item)
        except Exception:
            nak, code = self._nak(kept, error, "OVERSIZE")
            receipt = Receipt(None, "refused", nak, code)
        else:
            log.warning(
                "oversize frame stored",
                extra={"message_id": stored.id, "control_id": item.control_id, "limit": limit},
            )
            nak, code = self._nak(kept, error, str(stored.id))
            receipt = Receipt(stored.id, "error", nak, code)
        if self.on_receipt is not None:
            self.on_receipt(channel, receipt)
        return receipt

    async def _refuse_unreadable(self, raw: bytes, item: Incoming, exc: EngineError) -> Receipt:
        try:
            stored = await self._store(item)
        except Exception:
            return self._refused(raw)
        log.info("message unreadable", extra={"message_id": stored.id, "code": exc.code})
        nak, code = self._nak(raw, exc, str(stored.id))
        return Receipt(stored.id, "error", nak, code)

    def _refused(self, raw: bytes) -> Receipt:
        error = EngineError("message could not be stored; send again")
        nak, code = self._nak(raw, error, "STOREFAIL")
        return Receipt(None, "refused", nak, code)

    def _acknowledge(
        self, message: Message, stored: Stored, error: EngineError | None, state: str
    ) -> Receipt:
        enhanced = ack_mode(message) == "enhanced"
        accepted = error is None
        app = enhanced and (message.msh.get(16) or "AL") in ("AL", "ER", "SU")
        if enhanced and not commit_ack_wanted(message, accepted):
            return Receipt(stored.id, state, None, None, stored.duplicate, app, stored.reused)
        code = ack_code_for(error, enhanced=enhanced, stage="commit" if enhanced else "application")
        # the ACK is built from the stored message's id and time, so a duplicate gets the very
        # same ACK again (idempotent receiver)
        control_id, timestamp = f"A{stored.id}", hl7_timestamp(stored.received_at)
        if error is None:
            ack = ack_bytes(
                message, code, control_id=control_id, timestamp=timestamp, sending=self.identity
            )
        else:
            ack = build_ack(
                message,
                code,
                control_id=control_id,
                timestamp=timestamp,
                errors=errors_for(error, message),
                sending=self.identity,
            ).to_bytes(replace=True)  # (stored: its answer must go out, see ack_bytes)
        return Receipt(stored.id, state, ack, code, stored.duplicate, app, stored.reused)

    async def application_ack(
        self, raw: bytes, receipt: Receipt, states_of: StatesOf, *, timeout_s: float = 30.0
    ) -> bytes | None:
        """Enhanced mode (HL7 v2.5.1 §2.9.3): once the message has been processed (routed and
        mapped, or refused), the application ACK MSH-16 asks for — AL always, ER on error, SU
        on success — or None. Waits at most ``timeout_s`` for the queue, beside every other
        message waiting so: one task reads all their states with ``states_of`` (the store's, the
        same on every call), one query a tick. None at once, with a warning, when
        :data:`MAX_PENDING_APPLICATION_ACKS` wait already."""
        if receipt.message_id is None or not receipt.application_ack:
            return None
        state: str | None = receipt.state
        if state in ("received", "processing"):
            if self._settled is None:
                self._settled = _Settled(states_of, APPLICATION_ACK_POLL_S)
            if self._settled.waiting >= MAX_PENDING_APPLICATION_ACKS:
                log.warning(
                    "application ACK skipped: too many waiting for their messages",
                    extra={"message_id": receipt.message_id, "waiting": self._settled.waiting},
                )
                return None
            state = await self._settled.wait(receipt.message_id, timeout_s)
            if state is None:
                log.warning(
                    "no application ACK: processing took too long",
                    extra={"message_id": receipt.message_id},
                )
                return None
        # parsed once the wait is over: a waiting ACK holds only the bytes
        message = parse_message(raw, default_charset=self.default_charset)
        error = None if state != "error" else EngineError("the message could not be processed")
        if not application_ack_wanted(message, error is None):
            return None
        code = ack_code_for(error, enhanced=True, stage="application")
        ack = build_ack(
            message,
            code,
            control_id=f"P{receipt.message_id}",
            timestamp=hl7_timestamp(self.clock()),
            errors=errors_for(error, message) if error else (),
            sending=self.identity,
        )
        return ack.to_bytes(replace=True)

    @property
    def application_acks_waiting(self) -> int:
        """How many application ACKs wait for their messages' processing now."""
        return self._settled.waiting if self._settled is not None else 0

    def _nak(self, raw: bytes, error: EngineError, suffix: str) -> tuple[bytes | None, str | None]:
        """A reject ACK for bytes that could not be read or stored, and its code."""
        return nak_for_unparseable(
            raw,
            error,
            control_id=f"A{suffix}",
            timestamp=hl7_timestamp(self.clock()),
            sending=self.identity,
        )

    async def receive_fhir(self, body: bytes, *, peer: str = "") -> Receipt:
        """Store a FHIR Bundle or resource (JSON) received over HTTP, for routing."""
        import orjson

        doc: Any = None
        try:
            doc = orjson.loads(body)
            rtype = doc.get("resourceType") if isinstance(doc, dict) else None
            problem = None if isinstance(rtype, str) else "not a FHIR resource: no resourceType"
        except orjson.JSONDecodeError as exc:
            rtype, problem = None, f"not valid JSON ({exc})"
        item = Incoming(
            raw=body,
            channel="http",
            peer=peer[:255],
            kind="fhir",
            message_type=_clip(rtype, 16) if rtype else None,
            state="error" if problem else "received",
            reason=problem,
            # a patient's Bundles processed one at a time, in the order received
            patient_key=None if problem else fhir_patient_key(doc),
        )
        try:
            stored = await self._store(item)
        except Exception:
            receipt = Receipt(None, "refused", None, None)
        else:
            receipt = Receipt(stored.id, item.state, None, None)
        if self.on_receipt is not None:
            self.on_receipt("fhir", receipt)
        return receipt


class _Settled:
    """The application ACKs waiting for their messages' processing (enhanced mode), and the ONE
    task that watches for it: each tick it reads the states of all the messages waited for in
    one query (one thread job), and wakes the waiters whose message is settled or whose time
    ran out.

    A task per message reading its own message's state every 50 ms made, at 200 messages/s with
    the queue 30 s behind, 120,000 thread jobs a second: the group commits, on the same threads
    then, waited behind them, ACKs took minutes and senders resent, adding waiters."""

    def __init__(self, states_of: StatesOf, poll_s: float) -> None:
        self.states_of = states_of
        self.poll_s = poll_s
        #: by message id, each waiter's future and its deadline (loop time); a resend of a
        #: message waits for its original's id beside the original's own waiter
        self._by_id: dict[int, dict[asyncio.Future[str | None], float]] = {}
        #: how many wait (a waiter cancelled, its connection closed, leaves at once)
        self.waiting = 0
        self._task: asyncio.Task[None] | None = None

    def wait(self, message_id: int, timeout_s: float) -> asyncio.Future[str | None]:
        """A future for the message's state once settled (neither received nor processing:
        ``error`` if it is gone), or None when ``timeout_s`` passes first."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str | None] = loop.create_future()
        self._by_id.setdefault(message_id, {})[future] = loop.time() + timeout_s
        self.waiting += 1
        future.add_done_callback(functools.partial(self._forget, message_id))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._watch(), name="application-acks")
        return future

    def _forget(self, message_id: int, future: asyncio.Future[str | None]) -> None:
        waiters = self._by_id.get(message_id)
        if waiters is not None and future in waiters:
            del waiters[future]
            self.waiting -= 1
            if not waiters:
                del self._by_id[message_id]

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        failing = False
        while self._by_id:
            await asyncio.sleep(self.poll_s)
            ids = list(self._by_id)
            if not ids:
                break
            try:
                states: Mapping[int, str] | None = await asyncio.to_thread(self.states_of, ids)
            except Exception as exc:  # the database away: each waits on, until its time is up
                if not failing:  # once, not 20 times a second
                    log.warning(
                        "application ACKs: states not read",
                        extra={"error": failure_name(exc), "waiting": len(ids)},
                    )
                states = None
            failing = states is None
            now = loop.time()
            for message_id in ids:
                state = None if states is None else states.get(message_id) or "error"
                settled = state not in (None, "received", "processing")
                for future, deadline in list(self._by_id.get(message_id, {}).items()):
                    if future.done():
                        continue
                    if settled:
                        future.set_result(state)
                    elif now > deadline:
                        future.set_result(None)

    def close(self) -> None:
        """Stop watching: the waiters left are cancelled (the receiver is stopping)."""
        if self._task is not None:
            self._task.cancel()
        for waiters in list(self._by_id.values()):
            for future in list(waiters):
                future.cancel()


def fhir_patient_key(doc: Any) -> str | None:
    """The patient a FHIR resource or Bundle is about, for ordering as PID-3 is for HL7v2: the
    first Patient's first identifier with a value (``system|value``, 255 characters at most).
    Taken at receipt, so that two worker processes or nodes never process one patient's
    Bundles at once; whatever shape the JSON has (it is not validated yet), None when it names
    no Patient identifier."""
    if not isinstance(doc, dict):
        return None
    entries = doc.get("entry") if doc.get("resourceType") == "Bundle" else [{"resource": doc}]
    for entry in entries if isinstance(entries, list) else ():
        res = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(res, dict) or res.get("resourceType") != "Patient":
            continue
        idents = res.get("identifier")
        for ident in idents if isinstance(idents, list) else ():
            if isinstance(ident, dict) and ident.get("value"):
                return f"{ident.get('system') or ''}|{ident['value']}"[:255]
    return None


def patient_key_of(message: Message) -> str | None:
    """The patient a message is about (PID-3, first repetition: authority and ID), for ordering."""
    pid = message.segment("PID")
    if pid is None:
        return None
    value = pid.get(3, 1, 1)
    return f"{pid.get(3, 1, 4)}|{value}" if value else None


class _Header(TypedDict, total=False):
    """The :class:`Incoming` fields a message's header gives."""

    control_id: str | None
    message_type: str | None
    trigger: str | None
    structure: str | None
    sending_application: str | None
    sending_facility: str | None
    patient_key: str | None


def _header_of(message: Message) -> _Header:
    """The stored metadata a message's header gives, each value clipped to its column."""
    mtype, msh = message.type, message.msh
    return _Header(
        control_id=_clip(message.control_id, 199),
        message_type=_clip(mtype.code, 16),
        trigger=_clip(mtype.trigger, 16),
        structure=_clip(mtype.structure, 16),
        sending_application=_clip(msh.get(3), 227),
        sending_facility=_clip(msh.get(4), 227),
        patient_key=_clip(patient_key_of(message) or "", 255),
    )


def _clip(value: str, width: int) -> str | None:
    """Metadata cut to its column's width (the raw bytes keep every character)."""
    return value[:width] or None
