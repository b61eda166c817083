"""Ingest pressure: the receiver tells the queue workers when it is saturated, so that under a
burst they give the database to the ACK path and catch up once the burst is over.

On SQLite one writer at a time holds the database; the receiver's group commits (each message's
ACK waits on one) and the workers' transactions take turns. While the receiver's writer is busy
more than ``threshold`` of the time with work of its own (over windows of ``window_s``) —
senders are keeping it saturated — the workers pause before each of their transactions (never
longer than ``max_wait_s`` at a time, so processing always moves on). At an ordinary rate the
writer is mostly idle and the workers never wait.

A pause buys the receiver time; it must not become the workers' pace. The workers pause for at
most ``max_share`` of the time: after a pause of *w* seconds they run unpaused for at least
*w* · (1 − share) / share (as long again, at one half). Without that bound a rate the receiver's
writer is saturated by for good (200 messages/s on a slow disk, in the soak) made the workers
wait 250 ms before every claim and every batch, about four transactions a second: they delivered
about 90 messages a second whatever the destinations could take, and the backlog grew without
end. A burst still gets the writer first, for half the time; a sustained rate gets a queue that
keeps up. A destination that is down changes nothing
here: its deliveries wait in their own queue.

And a saturation that lasts is not a burst: after ``burst_s`` of it (no ``calm_s`` without it in
between) the workers stop pausing until it ends. At 1,000 messages/s offered for minutes (the
soak's ``--rate 1000 --routes file``, 5 December 2026) the receiver's writer was busy more than
half the time for good, the pauses held the workers to about 430 deliveries a second, and the
backlog grew about 560 a second without end; without the pauses they kept the pace for 40 to
200 s (then fell behind as the folder filled, at 800-900 a second) and the ACKs' p99 windows
were 13-24 ms against 18-24 ms with them. Offered
more than the engine can take end to end, the senders are slowed rather than a backlog grown:
the ACKs wait for their turn at the writer.

The state is one shared double (a monotonic deadline), written by the receiver and read by the
worker process ``engine serve`` starts; without it (``engine worker`` elsewhere, on PostgreSQL)
the workers never wait.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

__all__ = ["IngestPressure"]


class IngestPressure:
    """Receiver side: :meth:`committed` after each group commit. Worker side: :meth:`yield_to`."""

    def __init__(
        self,
        shared: Any = None,
        *,
        threshold: float = 0.5,
        window_s: float = 0.1,
        hold_s: float = 0.2,
        max_wait_s: float = 0.25,
        max_share: float = 0.5,
        burst_s: float = 10.0,
        calm_s: float = 2.0,
    ) -> None:
        #: a ``multiprocessing.Value("d")`` (or anything with ``.value``): saturated until
        self.shared = shared
        self.threshold = threshold
        self.window_s = window_s
        self.hold_s = hold_s
        self.max_wait_s = max_wait_s
        if not 0.0 < max_share <= 1.0:
            raise ValueError("max_share is a fraction of the time, above 0 and at most 1")
        self.max_share = max_share
        #: a saturation longer than this is a sustained rate, not a burst: no pauses
        self.burst_s = burst_s
        #: the time without saturation that ends one (a new one is a new burst)
        self.calm_s = calm_s
        #: when the saturation under way began, and when it was last seen (monotonic seconds)
        self._since = 0.0
        self._seen = float("-inf")
        #: after a pause, the workers run unpaused until then (monotonic seconds)
        self._free_until = 0.0
        self._window_start = time.monotonic()
        self._busy = 0.0

    def committed(self, seconds: float, now: float | None = None) -> None:
        """The receiver's writer spent ``seconds`` of its own on a group commit: not counting
        the wait for a worker's transaction, or the workers' own transactions would make them
        pause (the receiver looking busy because they write), then write in a rush, in turns."""
        now = time.monotonic() if now is None else now
        self._busy += seconds
        elapsed = now - self._window_start
        if elapsed < self.window_s:
            return
        if self.shared is not None and self._busy / elapsed >= self.threshold:
            self.shared.value = now + self.hold_s
        self._window_start, self._busy = now, 0.0

    def saturated(self) -> bool:
        return self.shared is not None and time.monotonic() < self.shared.value

    async def yield_to(self, poll_s: float = 0.02) -> float:
        """Wait while the receiver is saturated, at most ``max_wait_s``, and not within the
        unpaused time a previous pause earned (``max_share``), nor once the saturation has
        lasted ``burst_s``; the seconds waited."""
        start = time.monotonic()
        if not self.saturated():
            return 0.0
        if start - self._seen > self.calm_s:
            self._since = start  # a new saturation
        self._seen = start
        if start < self._free_until or start - self._since > self.burst_s:
            return 0.0
        deadline = start + self.max_wait_s
        while self.saturated() and time.monotonic() < deadline:
            await asyncio.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
        end = time.monotonic()
        waited = end - start
        self._free_until = end + waited * (1.0 - self.max_share) / self.max_share
        return waited
