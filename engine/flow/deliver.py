"""Delivery (Guaranteed Delivery, Dead Letter Channel): the last stage, from the queue.

``Dispatcher`` claims due deliveries, at most one in flight per destination and patient (order
is kept per patient; different patients flow in parallel), calls the destination adapter, and
records the outcome: delivered, retried later (the route's retry policy, with jitter), or
dead-lettered after the route's maximum attempts or a permanent refusal. A slow or dead
destination only fills its own queue: receiving and acknowledging never wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Protocol

from engine.adapters.destination import BatchDestination, DeliveryResult, Destination, Payload
from engine.documents.model import DocumentContent, DocumentEnvelope
from engine.pressure import IngestPressure
from engine.retry import CircuitBreaker, backoff_s
from engine.routes.loader import RouteSet
from engine.store import DueDelivery, Outcome, SqlMessageStore
from engine.store.db import failure_name, statement_cancelled
from engine.store.nodes import Liveness

__all__ = ["Dispatcher", "Observer"]

log = logging.getLogger(__name__)


class Observer(Protocol):
    """Receives delivery outcomes (metrics)."""

    def delivered(
        self, destination: str, seconds: float, ok: bool, dead: bool, needs_patient: bool = False
    ) -> None: ...


#: outcomes gathered that are recorded without waiting longer (:meth:`Dispatcher._gathered`)
FLUSH_AT = 16


def _share_of(width: int, index: int, count: int) -> int:
    """Process ``index``'s part of ``width`` split among ``count`` processes (the first ones
    take the remainder): the parts add up to ``width``."""
    return width // count + (1 if index < width % count else 0)


def _widths(
    routes: RouteSet,
    destinations: Mapping[str, Destination],
    per_destination: int,
    share: tuple[int, int],
) -> tuple[dict[str, int], list[str]]:
    """Each destination's width in this process, and the destinations it leaves to the others.

    ``share``: (this process's index, how many processes of one ``engine serve`` deliver beside
    each other). A ``concurrency`` set in the route file is split among them, so that together
    they keep it (one of 1 is delivered to by the first only: a receiver that takes one
    connection still gets one); the default width is each process's. Splitting the default too
    (8: 4 each) held the example's routes at 1,000/s offered to about 800 a second (6
    December, README). A destination that holds one connection (``one_connection``: MLLP) is
    the first process's alone, at its whole width: one connection per ``engine serve``."""
    index, count = share
    widths = {}
    for name, destination in destinations.items():
        configured = getattr(routes.destinations.get(name), "concurrency", None)
        if getattr(destination, "one_connection", False):
            widths[name] = (configured or per_destination) if index == 0 else 0
        else:
            widths[name] = _share_of(configured, index, count) if configured else per_destination
    return {n: w for n, w in widths.items() if w}, [n for n, w in widths.items() if w == 0]


class Dispatcher:
    """Delivers due deliveries with their destination adapters."""

    #: this node's standing from its heartbeats (engine/flow/worker.py sets it): while it is not
    #: sure, a claim is checked in the database before it is sent (:meth:`_still_ours`)
    liveness: Liveness | None = None

    def __init__(
        self,
        store: SqlMessageStore,
        routes: RouteSet,
        destinations: Mapping[str, Destination],
        *,
        batch: int = 200,
        per_destination: int = 8,
        claim_ahead: int = 16,
        idle_s: float = 0.2,
        observer: Observer | None = None,
        rng: random.Random | None = None,
        pressure: IngestPressure | None = None,
        node: str | None = None,
        flush_s: float = 0.0,
        share: tuple[int, int] = (0, 1),
    ) -> None:
        self.store = store
        #: the node (engine/store/nodes.py) whose claims these are: taken over when its
        #: heartbeat stops; only its own outcomes are recorded
        self.node = node
        self.routes = routes
        self.destinations = dict(destinations)
        self.batch = batch
        self.idle_s = idle_s
        self.observer = observer
        self.rng = rng or random.Random()
        self.pressure = pressure
        #: deliveries under way at once, per destination: its route file's ``concurrency``,
        #: else ``per_destination``
        widths, self.not_mine = _widths(routes, self.destinations, per_destination, share)
        self._limits = {name: asyncio.Semaphore(n) for name, n in widths.items()}
        #: deliveries claimed at most, per destination: up to ``claim_ahead`` times what it
        #: takes at once, so that claims (and the outcomes recorded) come in batches. A claim
        #: holds its slot from the claim until its outcome is recorded (the delivery, the
        #: ``flush_s`` gathering, the record's turn at the write lock: 40-60 ms a delivery at
        #: the soak's 1,000 messages/s), so the claims a destination may hold bound its rate:
        #: with 4 times 8 (32) the example's routes delivered 466-578 messages/s of 586-701
        #: ACKed, with 16 times 8 (and claims of up to 200 at a time, 50 before) all 779 ACKed
        #: (6 December 2026, README). A claim that waited half its lease is renewed before it
        #: is sent (``renew_claim``), or not sent when it is no longer ours; claims not started
        #: when the dispatcher stops are given back.
        self.claims_allowed = {name: n * claim_ahead for name, n in widths.items()}
        self._default_claims = per_destination * claim_ahead
        self.capacity = max(1, sum(self.claims_allowed.values()) or self._default_claims)
        self.lease_s = 600.0
        self._claimed: dict[str, int] = {}
        self._not_started: dict[int, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._outcomes: list[tuple[DueDelivery, DeliveryResult, float]] = []
        #: after 5 retryable failures in a row a destination is not claimed for a while
        #: (0.5 s doubling up to 60 s): a destination that is down is probed, not hammered, and
        #: its failures do not fill the database with attempts. A success closes the breaker.
        self.breaker = CircuitBreaker(threshold=5, base_s=0.5, cap_s=60.0)
        self._flushing: asyncio.Lock | None = None
        #: how long an outcome may wait for others before they are recorded together (0: at
        #: once). Each record is a transaction, and on SQLite most of its cost is the same
        #: whatever it holds (about 2 ms of the one write lock): a destination that answers one
        #: delivery at a time (a FHIR server) made 80 of them a second at the soak's 200
        #: messages/s, about 4.6 outcomes each. A patient's next delivery waits as long
        #: (it is claimable once the one before is recorded).
        self.flush_s = flush_s
        #: resolved when the outcomes gathered now are recorded (None: none gathered)
        self._recorded: asyncio.Future[None] | None = None
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flush_tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        #: the lease ends of claim calls that failed: each may have committed with its reply
        #: lost, its claims this node's and in no one's hands; given back before the next claim
        self._lost_leases: list[datetime] = []

    def _give_back_lost(self) -> None:
        """Give back the claims of the claim calls that failed (:attr:`_lost_leases`), in a
        thread; a failure leaves the rest for the next look."""
        while self._lost_leases and self.node is not None:
            self.store.release_lease(self.node, self._lost_leases[0])
            self._lost_leases.pop(0)

    async def _claim(self, limit: int, paused: list[str]) -> list[DueDelivery]:
        """Claim up to ``limit`` due deliveries, once the claims of calls that failed before
        are given back; a call that fails may have committed with its reply lost: its lease's
        end is kept, to give its claims back (:attr:`_lost_leases`)."""
        if self._lost_leases:  # (no thread hop for each claim when nothing was lost)
            await asyncio.to_thread(self._give_back_lost)
        asked: list[datetime] = []

        def claim() -> list[DueDelivery]:
            # the lease's end in the database's clock, read in the thread (it may measure it)
            asked.append(self.store.now() + timedelta(seconds=self.lease_s))
            return self.store.claim_due_deliveries(limit, self.lease_s, paused, self.node, asked[0])

        try:
            return await asyncio.to_thread(claim)
        except Exception:
            if self.node is not None and asked:  # (claims without an owner: free at lease end)
                self._lost_leases.append(asked[0])
            raise

    def wake(self) -> None:
        """Called when deliveries were made or settled: claim now rather than at the next poll."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and deliver until ``stop`` is set, skipping destinations whose breaker is open
        or that hold all the claims they may; on stop, claims not started are given back."""
        in_flight: set[asyncio.Task[None]] = set()
        failures = 0
        self._stopping = False
        try:
            while not stop.is_set():
                now = asyncio.get_running_loop().time()
                paused = self.breaker.open_keys(now) + self.not_mine
                # a destination with all the claims it may hold gets no more for now
                paused += [
                    d
                    for d, n in self._claimed.items()
                    if n >= self.claims_allowed.get(d, self._default_claims) and d not in paused
                ]
                # deliveries claimed and not settled (a batch is one task for several)
                room = self.capacity - sum(self._claimed.values())
                due: list[DueDelivery] = []
                epoch = self.liveness.epoch if self.liveness is not None else 0  # before claims
                if room > 0:
                    if self.pressure is not None:
                        await self.pressure.yield_to()  # a burst: ACKs first
                    try:
                        due = await self._claim(min(room, self.batch), paused)
                        failures = 0
                    except Exception as exc:  # the database away for a moment
                        failures += 1
                        log.error("dispatcher failed", extra={"error": failure_name(exc)})
                        await asyncio.sleep(backoff_s(failures))
                        continue
                for group in self._tasks_for(due):
                    task = asyncio.create_task(
                        self._deliver_batch(group, epoch)
                        if len(group) > 1
                        else self._deliver(group[0], epoch)
                    )
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                    for d in group:
                        self._claimed[d.destination] = self._claimed.get(d.destination, 0) + 1
                        self._not_started[d.id] = task
                        task.add_done_callback(functools.partial(self._done, d))
                if due:
                    # a patient's next delivery is not claimable while the one before is still
                    # pending (in flight included): the claim query keeps the order
                    continue
                if room <= 0 and in_flight:
                    # (with a timeout: a stop is noticed while the destinations are slow)
                    await asyncio.wait(
                        in_flight, timeout=self.idle_s, return_when=asyncio.FIRST_COMPLETED
                    )
                    continue
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.idle_s)
        finally:
            # deliveries under way finish; claims not started are given back, not left to
            # block their patients' queues until the lease runs out
            waiting = dict(self._not_started)
            for task in waiting.values():
                task.cancel()
            # outcomes gathered and those still to come are recorded now, not after flush_s
            self._stopping = True
            self._start_flush()
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)
            if self._flush_tasks:
                await asyncio.gather(*self._flush_tasks, return_exceptions=True)
            if waiting:
                try:
                    await asyncio.to_thread(self.store.release_claims, list(waiting), self.node)
                except Exception as exc:  # the lease runs out instead
                    log.warning("claims not given back", extra={"error": type(exc).__name__})

    def _tasks_for(self, due: list[DueDelivery]) -> list[list[DueDelivery]]:
        """The deliveries claimed together, one group per task: a destination that takes a
        batch (``deliver_batch``: the file drop writes the files in one hand-off and syncs
        their folder once) gets its claimed deliveries as one group; any other destination
        one delivery per task, each sent on its own, up to ``per_destination`` at once."""
        groups: dict[str, list[DueDelivery]] = {}
        single: list[list[DueDelivery]] = []
        takes_batches: dict[str, bool] = {}  # a Protocol isinstance costs ~13 µs: once a name
        for d in due:
            name = d.destination
            if name not in takes_batches:
                takes_batches[name] = isinstance(self.destinations.get(name), BatchDestination)
            if takes_batches[name]:
                groups.setdefault(name, []).append(d)
            else:
                single.append([d])
        return [*groups.values(), *single]

    def _done(self, due: DueDelivery, _task: asyncio.Task[None]) -> None:
        self._not_started.pop(due.id, None)
        self._claimed[due.destination] = max(0, self._claimed.get(due.destination, 1) - 1)

    async def _still_ours(self, due: DueDelivery, epoch: int = 0) -> bool:
        """A claim that waited half its lease is renewed first, and so is one made before this
        node stood still long enough to be taken for dead (``liveness``: its claims may have
        been released and taken by another node meanwhile); False when it is not ours any more
        (it is then not sent from here)."""
        if due.claimed_until is None:
            return True
        now = self.store.now()  # the lease's clock (the last offset measured: no round trip)
        until = (
            due.claimed_until if due.claimed_until.tzinfo else due.claimed_until.replace(tzinfo=UTC)
        )
        fresh = (until - now).total_seconds() > self.lease_s / 2
        if fresh and (self.liveness is None or self.liveness.sure(epoch)):
            return True
        new = now + timedelta(seconds=self.lease_s)
        try:
            return await asyncio.to_thread(self.store.renew_claim, due.id, due.claimed_until, new)
        except Exception:  # the database away: do not risk a second sender for an old claim
            return fresh  # (nor strand a fresh one: nobody can take it over without it either)

    def _content(self, due: DueDelivery) -> DocumentContent | None:
        """A document delivery's bytes, read from the store when the adapter asks."""
        if due.kind != "document":
            return None
        doc = DocumentEnvelope.from_bytes(due.payload).document
        return DocumentContent(
            doc.sha256, doc.size, functools.partial(self.store.document_chunks, doc.sha256)
        )

    def _payload(self, due: DueDelivery) -> Payload:
        return Payload(
            message_id=due.message_id,
            destination=due.destination,
            kind=due.kind,  # type: ignore[arg-type]
            body=due.payload,
            content_type=due.content_type,
            idempotency_key=f"{due.message_id}-{due.destination}",
            control_id=due.control_id,
            content=self._content(due),
        )

    async def _ours(self, due: DueDelivery, epoch: int = 0) -> bool:
        """Whether the claim is still this dispatcher's (:meth:`_still_ours`), saying so when
        it is not."""
        self._not_started.pop(due.id, None)
        if await self._still_ours(due, epoch):
            return True
        log.warning(
            "claim ran out before sending; left to its new owner",
            extra={"message_id": due.message_id, "destination": due.destination},
        )
        return False

    async def _deliver(self, due: DueDelivery, epoch: int = 0) -> None:
        dest = self.destinations.get(due.destination)
        start = asyncio.get_running_loop().time()
        if dest is None:
            result = DeliveryResult(False, False, f"no destination named {due.destination!r}")
        else:
            payload = self._payload(due)
            async with self._limits[due.destination]:
                if not await self._ours(due, epoch):
                    return
                try:
                    result = await dest.deliver(payload)
                except Exception as exc:  # an adapter bug: retry, and say so
                    result = DeliveryResult(False, True, f"adapter error ({type(exc).__name__})")
        await self._settle([(due, result)], start)

    async def _deliver_batch(self, group: list[DueDelivery], epoch: int = 0) -> None:
        """Deliveries to one destination that takes them together (``deliver_batch``), as one
        of its ``per_destination`` slots; each is settled as :meth:`_deliver` settles one, the
        batch's time as each one's."""
        name = group[0].destination
        dest = self.destinations[name]
        assert isinstance(dest, BatchDestination)
        start = asyncio.get_running_loop().time()
        async with self._limits[name]:
            mine = [due for due in group if await self._ours(due, epoch)]
            if not mine:
                return
            try:
                results = await dest.deliver_batch([self._payload(d) for d in mine])
                if len(results) != len(mine):
                    raise ValueError("one result per payload")
            except Exception as exc:  # an adapter bug: retry, and say so
                results = [DeliveryResult(False, True, f"adapter error ({type(exc).__name__})")]
                results *= len(mine)
        await self._settle(list(zip(mine, results, strict=True)), start)

    async def _settle(self, done: list[tuple[DueDelivery, DeliveryResult]], start: float) -> None:
        """Count each result in its destination's breaker and record the outcomes."""
        now = asyncio.get_running_loop().time()
        for due, result in done:
            was_open = self.breaker.failures(due.destination) >= self.breaker.threshold
            self.breaker.record(due.destination, ok=result.ok, retryable=result.retryable, now=now)
            if (self.breaker.failures(due.destination) >= self.breaker.threshold) != was_open:
                await self._breaker_changed(due.destination, result.detail)
            # outcomes are recorded in batches: one transaction for all that finished meanwhile
            self._outcomes.append((due, result, now - start))
        if self.flush_s > 0:
            # a batch's outcomes (the file drop's) are already several: no wait for more
            await self._gathered(at_once=len(done) > 1)
        else:
            await self._flush()
        self.wake()  # the patients' next deliveries may be due now

    async def _gathered(self, *, at_once: bool = False) -> None:
        """Wait until the outcomes gathered so far are recorded: ``flush_s`` after the first of
        them, or at once when they are :data:`FLUSH_AT` or more (or ``at_once``). A caller
        cancelled meanwhile leaves its outcomes to be recorded all the same.

        Only the wait for the first few pays: the transaction's fixed cost is shared by then,
        and a wait past it kept claims held for longer (a claim is freed once its outcome is
        recorded): the file drop's batches waiting 20 ms took the end to end from about 840
        to 490-570 messages/s (5 December, four ad-hoc runs)."""
        loop = asyncio.get_running_loop()
        if self._recorded is None:
            self._recorded = loop.create_future()
            self._flush_timer = loop.call_later(self.flush_s, self._start_flush)
        recorded = self._recorded
        if at_once or len(self._outcomes) >= FLUSH_AT or self._stopping:
            self._start_flush()
        await asyncio.shield(recorded)

    def _start_flush(self) -> None:
        """Record the gathered outcomes in a task of their own; their waiters learn when."""
        recorded, self._recorded = self._recorded, None
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if recorded is None:
            return

        async def flush() -> None:
            try:
                await self._flush()
            finally:
                if not recorded.done():
                    recorded.set_result(None)

        task = asyncio.ensure_future(flush())
        self._flush_tasks.add(task)
        task.add_done_callback(self._flush_tasks.discard)

    async def _breaker_changed(self, destination: str, detail: str | None) -> None:
        """Write a breaker's opening or closing where the console's dashboard reads it (the
        breaker lives in this process): only on a change, never per delivery; a failure to
        write is logged and delivery goes on."""
        if self.node is None:
            return
        failures = self.breaker.failures(destination)
        is_open = failures >= self.breaker.threshold
        log.warning(
            "breaker opened" if is_open else "breaker closed",
            extra={"destination": destination, "failures": failures},
        )
        try:
            await asyncio.to_thread(
                self.store.record_breaker,
                destination,
                self.node,
                is_open=is_open,
                failures=failures,
                last_error=detail if is_open else None,
            )
        except Exception as exc:  # the database away: the dashboard is behind, delivery is not
            log.warning("breaker state not recorded", extra={"error": type(exc).__name__})

    async def _flush(self) -> None:
        if self._flushing is None:
            self._flushing = asyncio.Lock()
        async with self._flushing:
            batch, self._outcomes = self._outcomes, []
            # the database away: the outcomes (deliveries made) are kept and recorded once it
            # answers, not dropped with their claims held for the lease (10 minutes) and every
            # later delivery of their patients waiting behind them; given up after ~2 minutes.
            # A statement PostgreSQL cancelled (the workers' statement_timeout, engine/store/
            # db.py) does not count: the database answers, and dropping outcomes of deliveries
            # made would send them again once the lease ran out
            failures = 0
            while batch and failures < 8:
                try:
                    await asyncio.to_thread(self._record_batch, batch)
                    return
                except Exception as exc:
                    failures += 0 if statement_cancelled(exc) else 1
                    log.error(
                        "outcomes not recorded", extra={"error": failure_name(exc), "n": len(batch)}
                    )
                    await asyncio.sleep(backoff_s(max(failures, 1)))

    def _record_batch(self, batch: list[tuple[DueDelivery, DeliveryResult, float]]) -> None:
        outcomes: list[Outcome] = []
        notes: list[tuple[DueDelivery, DeliveryResult, float, bool]] = []
        for due, result, elapsed in batch:
            dead = False
            if result.ok:
                outcomes.append(Outcome(due.id, True))
            elif result.needs_patient:
                # the destination does not know the patient: retrying sends the same unknown
                # MRN again and dead-lettering loses a document an operator can still place, so
                # it waits (``needs-patient``) for a resend or a match. It leaves its queue: the
                # patient's next delivery to this destination is promoted, because what follows
                # (an ADT that registers the patient, say) must not wait behind it for a person.
                outcomes.append(Outcome(due.id, False, result.detail, needs_patient=True))
            else:
                attempts = due.attempts + 1
                config = self.routes.destinations.get(due.destination)
                policy = config.retry if config is not None else None
                if result.retryable and policy is not None and not policy.gives_up_after(attempts):
                    delay = policy.delay_for(attempts) * self.rng.uniform(0.5, 1.0)
                    # a server that says when to come back (Retry-After) is believed, up to an
                    # hour; a wait no datetime holds (Retry-After 1e12, a date in year 9999, an
                    # absurd policy) must not raise here: that lost the batch's every outcome,
                    # the delivered ones too (sent again after their lease)
                    delay = max(delay, min(result.retry_after_s or 0.0, 3600.0))
                    try:
                        retry_at = self.store.now() + timedelta(seconds=delay)
                    except (OverflowError, ValueError):  # ValueError: nan
                        retry_at = self.store.now() + timedelta(hours=1)
                    outcomes.append(Outcome(due.id, False, result.detail, retry_at))
                else:
                    dead = True
                    outcomes.append(Outcome(due.id, False, result.detail, None))
            # its number and duration, for the delivery's attempts (engine/store/attempts.py)
            outcomes[-1] = replace(outcomes[-1], attempt=due.attempts + 1, seconds=elapsed)
            notes.append((due, result, elapsed, dead))
        self.store.record_outcomes(outcomes, self.node)
        for due, result, elapsed, dead in notes:
            log.log(
                logging.INFO if result.ok else logging.WARNING,
                "delivery",
                extra={
                    "message_id": due.message_id,
                    "destination": due.destination,
                    "outcome": "delivered"
                    if result.ok
                    else "needs-patient"
                    if result.needs_patient
                    else ("dead" if dead else "retry"),
                    "detail": result.detail,
                },
            )
            if self.observer is not None:
                self.observer.delivered(
                    due.destination, elapsed, result.ok, dead, needs_patient=result.needs_patient
                )
