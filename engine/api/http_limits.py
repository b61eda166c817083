"""Limits on the HTTP port's connections, kept by the protocol uvicorn runs for each of them.

The HTTP port shares the receiver's process (and so its file descriptors) with the MLLP listener
and the database pool: a client that holds sockets open without finishing a request would starve
those too, and every message would be answered with a NAK. uvicorn bounds neither: its keep-alive
timer starts only once a response is sent and stops at the first byte of the next request, so a
request head sent a byte at a time (or never) keeps its connection for ever; and its
``limit_concurrency`` answers 503 to a request *head*, after the socket was accepted and held.
:class:`LimitedHttpProtocol` (uvicorn's httptools protocol, the parser the engine installs) adds:

* ``head_timeout_s``: a connection that has not delivered a whole request head within this time
  of its connect, or of the end of the previous response on a kept-alive connection, is closed.
  A request answered before its body was read (a 401 or a 413, say) keeps its connection while
  that body still comes, with no gap longer than uvicorn's keep-alive time (5 s): the next head
  is due from the body's end.
* ``body_timeout_s``: the body of every request must keep coming: all of it, or another
  :data:`BODY_PROGRESS_BYTES`, within ``head_timeout_s + body_timeout_s`` of the head or of the
  last such step, or the connection is closed. FastAPI reads a form or JSON body before a route's
  dependencies run (the login check among them), so an anonymous client could otherwise send a
  head and then a byte of its body now and then, for ever. A steady upload of a large scan over
  a slow link keeps going (64 KiB a window: about 7 kbit/s at the defaults). ``/hl7v2`` and
  ``/fhir`` answer a body that stops coming with a 408 first, where they read it (``read_capped``:
  64 KiB more within each ``body_timeout_s``).
* ``max_connections_per_peer``: one address holds at most this many connections; a further one is
  accepted and closed at once.
* ``max_connections``: when every slot is taken, the connection that has waited the longest for a
  request head is closed to admit the new one (like the MLLP listener's idle connections); a
  connection with a request in progress is never closed for this, and when every one has one, the
  new connection is accepted and closed at once.

Closing at once is what protects the descriptors: the process never holds more than the limit
(and the few being closed), whatever the rate of new connections. Under TLS, the protocol sees a
connection only once its handshake is done; until then asyncio's own handshake timeout (60 s)
bounds it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from engine.settings import Settings

__all__ = ["HttpLimits", "LimitedHttpProtocol", "limited_http_protocol"]

log = logging.getLogger(__name__)

#: how much more of a body must arrive within each window (``body_timeout_s`` above)
BODY_PROGRESS_BYTES = 64 * 1024


@dataclass(frozen=True)
class HttpLimits:
    """What :class:`LimitedHttpProtocol` enforces (module docstring); the defaults are the
    settings' (``ENGINE_HTTP_HEAD_TIMEOUT_S``, ``ENGINE_HTTP_MAX_CONNECTIONS``, ``_PER_PEER``)."""

    head_timeout_s: float = 10.0
    max_connections: int = 256
    max_connections_per_peer: int = 64
    body_timeout_s: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        return cls(
            head_timeout_s=settings.http_head_timeout_s,
            max_connections=settings.http_max_connections,
            max_connections_per_peer=settings.http_max_connections_per_peer,
            body_timeout_s=settings.http_body_timeout_s,
        )


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for each request head and a cap on
    connections, in all and per address (module docstring). One instance per connection."""

    limits: ClassVar[HttpLimits] = HttpLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        #: the request's body must arrive, or grow by BODY_PROGRESS_BYTES, before this fires
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_grown = 0
        #: whether the current request's body has all arrived (uvicorn's own ``more_body``
        #: stays set when the app answered before reading it all)
        self._body_done = True
        #: since when (time.monotonic(): uvloop's loop.time() ticks in whole milliseconds, too
        #: coarse to tell which of two waited longer) a request head is awaited; None while a
        #: request is in progress
        self.awaiting_head_since: float | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self._admit():
            transport.abort()  # nothing to say to it, and nothing to flush
            return
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        self._stop_body_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # (uvicorn's keep-alive timer stopped at any data)
        # a body still coming after its request was answered: the connection stays while it
        # keeps coming, with no gap longer than uvicorn's keep-alive time (a client that sent
        # ``Expect: 100-continue`` may never send it); the body timer bounds it as well
        if self._draining():
            self._arm_keep_alive()

    def _arm_keep_alive(self) -> None:
        """uvicorn's keep-alive timer (closes the connection when it fires), unless armed."""
        if self.timeout_keep_alive_task is None and not self.transport.is_closing():
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def _draining(self) -> bool:
        """Whether the current request was answered and its body still comes."""
        return not self._body_done and self.cycle is not None and self.cycle.response_complete

    def on_headers_complete(self) -> None:
        self._stop_head_timer()
        self._unset_keepalive_if_required()  # (armed after an early answer: a new request now)
        self._body_done = False
        super().on_headers_complete()
        self._await_body()  # (a request without a body completes at once: stopped there)

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._body_grown += len(body)
        if self._body_grown >= BODY_PROGRESS_BYTES and self._body_timer is not None:
            self._await_body()

    def on_message_complete(self) -> None:
        self._stop_body_timer()
        self._body_done = True
        super().on_message_complete()
        # answered before its body had all come: the connection is idle from now on, the next
        # head due (uvicorn's keep-alive timer armed, if it is not)
        if self.cycle is not None and self.cycle.response_complete and not self.pipeline:
            if not self.transport.is_closing():
                self._await_head()
                self._arm_keep_alive()

    def _await_body(self) -> None:
        self._stop_body_timer()
        window = self.limits.head_timeout_s + self.limits.body_timeout_s
        self._body_timer = self.loop.call_later(window, self._body_overdue)

    def _stop_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._body_grown = 0

    def _body_overdue(self) -> None:
        self._body_timer = None
        if not self.transport.is_closing():
            log.info(
                "http connection closed: its request body stopped coming (body_timeout_s %g s)",
                self.limits.body_timeout_s,
                extra={"peer": self._peer()},
            )
            self.transport.abort()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # not while a pipelined request (its head already read) is still to be answered, nor
        # while the body of one answered early still comes (its body timer bounds that)
        if self.transport.is_closing():
            return
        if not self._body_done:  # the body still comes: data_received keeps it (above)
            return
        if self.cycle is None or self.cycle.response_complete:
            self._await_head()

    def _await_head(self) -> None:
        self._stop_head_timer()
        self.awaiting_head_since = time.monotonic()
        self._head_timer = self.loop.call_later(self.limits.head_timeout_s, self._head_overdue)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self.awaiting_head_since = None

    def _head_overdue(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            log.info(
                "http connection closed: no whole request head within %g s (head_timeout_s)",
                self.limits.head_timeout_s,
                extra={"peer": self._peer()},
            )
            self.transport.abort()

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else ""

    def _admit(self) -> bool:
        """Whether this new connection may be served. When every slot is taken, makes room by
        closing the connection that has waited the longest for a request head; refuses when
        every other one has a request in progress."""
        # the server's set holds every open connection, this one too; one being closed is let go
        others = [c for c in self.connections if c is not self and not c.transport.is_closing()]
        host = _host(self)
        from_host = sum(1 for c in others if _host(c) == host)
        if host is not None and from_host >= self.limits.max_connections_per_peer:
            log.warning(
                "http connection refused: %d connections from this peer (max_connections_per_peer)",
                from_host,
                extra={"peer": self._peer()},
            )
            return False
        if len(others) < self.limits.max_connections:
            return True
        waiting = [
            c
            for c in others
            if isinstance(c, LimitedHttpProtocol) and c.awaiting_head_since is not None
        ]
        if not waiting:
            log.warning(
                "http connection refused: %d connections, none waiting (max_connections)",
                len(others),
                extra={"peer": self._peer()},
            )
            return False
        oldest = min(waiting, key=lambda c: c.awaiting_head_since or 0.0)
        oldest._stop_head_timer()
        oldest.transport.abort()  # out of the count at once: its transport is closing
        log.info("http connection closed to admit another", extra={"peer": oldest._peer()})
        return True


def _host(connection: object) -> str | None:
    """The peer's address of any of uvicorn's protocols (None on a Unix socket)."""
    client = getattr(connection, "client", None)
    return str(client[0]) if client else None


def limited_http_protocol(chosen: HttpLimits) -> type[LimitedHttpProtocol]:
    """A :class:`LimitedHttpProtocol` holding ``chosen``, for ``uvicorn.Config(http=...)``
    (uvicorn makes each connection's protocol itself, from the class alone)."""

    class Limited(LimitedHttpProtocol):
        limits = chosen

    return Limited
