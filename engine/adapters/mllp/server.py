"""An asyncio MLLP listener (HL7 v2.5.1 appendix C).

It owns the socket side only: framing, limits and timeouts. What to do with a message, and which
ACK to answer with, is the ``handler``'s business (the pipeline's), so the listener can be tested
with
a fake handler and the pipeline without sockets.

Limits a production interface needs and MLLP does not define:

* ``max_message_bytes``: a frame larger than this is refused: the handler's ``on_oversize`` may
  answer with a NAK built from the frame's head, then the connection is closed; other connections
  carry on. Whole frames that arrived before it in the same read are handled and answered first.
* ``idle_timeout_s``: a connection that exchanges no message for this long is closed. Bytes
  outside a frame (noise) do not count as activity, or a sender of one byte a minute would hold a
  connection for ever.
* ``max_noise_bytes``: a connection that sends more than this outside a frame since its last
  start block is closed (logged with the count, never the bytes).
* ``frame_timeout_s``: a frame that has started must grow by ``frame_progress_bytes`` (64 KiB)
  within this time, and again within this time of each such step, so a large message over a slow
  link is taken while a slow-loris sender (a byte a second) is cut off. However steady, a frame
  gets no longer than the largest frame takes at that slowest rate (plus one timeout): a frame that
  keeps starting over never outgrows the size limit, and is still ended.
* writes: an ACK (or a NAK, or an application ACK) that the peer does not take within
  ``frame_timeout_s`` aborts the connection. A peer that stops reading would otherwise hold it for
  ever: its connection awaits an ACK, so it is never idle and never closed to make room.
* ``max_connections_per_peer``: one address (a misconfigured sender reconnecting in a loop, or an
  attacker) holds at most this many connections; a further one is accepted and closed at once.
* ``max_connections``: when every slot is taken, the connection idle the longest is closed to admit
  the new one (a sender reconnects when it has a message; idle sockets must not lock real senders
  out for the idle timeout). A connection in a frame or awaiting its ACK is not idle; when none is
  idle, the new connection is accepted and closed at once.

:meth:`MLLPServer.stop` stops accepting, closes idle connections at once and gives a connection
handling a message up to ``STOP_GRACE_S`` to send its ACK before it is closed too: a message
committed while the engine stops is acknowledged, not left for the sender to resend.

With an ``ssl_context`` the TLS handshake is made on each admitted connection (within
``frame_timeout_s``), not by the socket server, so that a handshake that fails is logged: a
warning per connection with the peer and what TLS reported (never the bytes), and a plain-text
MLLP client on the TLS port named as the likely cause; the connection is then closed.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable
from contextvars import ContextVar
from typing import Protocol

from engine.adapters.mllp.framing import FrameReader, FrameTooLarge, frame

__all__ = ["MLLPHandler", "MLLPServer", "Reply", "current_reply"]

log = logging.getLogger(__name__)

_READ_SIZE = 64 * 1024
#: how long stop waits for connections handling a message to send its ACK; a store that is
#: committing answers in milliseconds, and a stop must not hang on one that does not
STOP_GRACE_S = 5.0
#: what OpenSSL reports when the first bytes are not a TLS record (an MLLP start block, HTTP)
_NOT_TLS = frozenset(
    {"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "HTTPS_PROXY_REQUEST", "UNKNOWN_PROTOCOL"}
)


class Reply:
    """Sends a later message (an enhanced-mode application ACK) on a connection, framed, in
    order with its other writes; quietly does nothing once the connection is gone.

    A write the peer does not take within ``timeout_s`` aborts the connection (see the module's
    limits); False then, as for a connection already gone."""

    def __init__(self, writer: asyncio.StreamWriter, timeout_s: float, peer: str) -> None:
        self._writer = writer
        self._timeout_s = timeout_s
        self._peer = peer
        self._lock = asyncio.Lock()

    async def send(self, data: bytes) -> bool:
        async with self._lock:
            if self._writer.is_closing():
                return False
            try:
                async with asyncio.timeout(self._timeout_s):
                    self._writer.write(frame(data))
                    await self._writer.drain()
            except TimeoutError:
                # the peer's receive window stayed shut: it is not reading. Aborted, not
                # closed, as a close would wait for the same unread bytes to go out
                log.warning(
                    "mllp ACK not taken by the peer within %.1f s (not reading?), aborted",
                    self._timeout_s,
                    extra={"peer": self._peer},
                )
                self._writer.transport.abort()
                return False
            except (ConnectionError, OSError):
                return False
            return True


#: the connection a handler is answering (set while ``on_message`` runs, and inherited by the
#: tasks it starts): how a handler sends something after its first answer
current_reply: ContextVar[Reply | None] = ContextVar("current_reply", default=None)


class MLLPHandler(Protocol):
    """What the listener calls. Returned bytes (an ACK) are framed and sent; None sends nothing."""

    def on_message(self, payload: bytes, peer: str) -> Awaitable[bytes | None]: ...

    def on_oversize(self, head: bytes, limit: int, peer: str) -> Awaitable[bytes | None]: ...


class _FrameClock:
    """Private: when the frame being received is to be cut off.

    The frame has ``timeout_s`` to grow by ``progress_bytes``, and ``timeout_s`` again after each
    such step; a fixed deadline per frame cut off a large message on a slow link every time (16
    MiB over a 2 Mbit/s VPN takes about a minute). Whatever its rate, a frame ends by
    ``limit_s`` after it started: the largest frame at the slowest rate allowed, plus a timeout.
    """

    __slots__ = ("timeout_s", "progress_bytes", "limit_s", "started", "stepped", "grown")

    def __init__(self, timeout_s: float, progress_bytes: int, max_bytes: int) -> None:
        self.timeout_s = timeout_s
        self.progress_bytes = progress_bytes
        self.limit_s = timeout_s * (1 + max_bytes / progress_bytes)
        self.started = self.stepped = 0.0
        #: bytes received since the last step
        self.grown = 0

    def start(self, now: float) -> None:
        self.started = self.stepped = now
        self.grown = 0

    def grow(self, nbytes: int, now: float) -> None:
        self.grown += nbytes
        if self.grown >= self.progress_bytes:
            self.stepped = now
            self.grown = 0

    def left(self, now: float) -> float:
        """Seconds before the frame is cut off (0 or less: now)."""
        return min(self.stepped + self.timeout_s, self.started + self.limit_s) - now


class _Connection:
    """Private: what the listener knows of one open connection, for its limits."""

    __slots__ = ("task", "host", "peer", "frames", "handling", "last_active")

    def __init__(self, task: asyncio.Task[None], host: str, peer: str, frames: FrameReader) -> None:
        self.task = task
        self.host = host
        self.peer = peer
        self.frames = frames
        #: a message has arrived and its ACK is not sent yet
        self.handling = False
        #: loop time of the last message exchanged (or of the connect): the idle timer's start
        self.last_active = asyncio.get_running_loop().time()

    @property
    def idle(self) -> bool:
        """Nothing in flight: no frame started, no message being handled or answered."""
        return not self.frames.in_frame and not self.handling


class MLLPServer:
    """Listens for MLLP connections and hands each frame to the handler, one at a time per peer.

    Messages on one connection are handled in order and each ACK is sent before the next message is
    read, as MLLP's request/response exchange expects.
    """

    def __init__(
        self,
        handler: MLLPHandler,
        *,
        host: str = "0.0.0.0",
        port: int = 2575,
        max_message_bytes: int = 16 * 1024 * 1024,
        idle_timeout_s: float = 300.0,
        frame_timeout_s: float = 30.0,
        frame_progress_bytes: int = 64 * 1024,
        max_connections: int = 200,
        max_connections_per_peer: int = 20,
        max_noise_bytes: int = 64 * 1024,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self.idle_timeout_s = idle_timeout_s
        self.frame_timeout_s = frame_timeout_s
        self.frame_progress_bytes = frame_progress_bytes
        self.max_connections = max_connections
        self.max_connections_per_peer = max_connections_per_peer
        self.max_noise_bytes = max_noise_bytes
        self.ssl_context = ssl_context
        self._server: asyncio.Server | None = None
        #: the connections counted against the limits
        self._open: dict[asyncio.Task[None], _Connection] = {}
        #: every connection task still running, including those closed to make room (for stop)
        self._tasks: set[asyncio.Task[None]] = set()
        #: stop has begun: no connection is admitted, none reads another message
        self._stopping = False

    @property
    def bound_port(self) -> int:
        """The port actually listened on (useful with port 0)."""
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._stopping = False
        # TLS is started per connection (_handshake), so that a failed handshake is seen
        self._server = await asyncio.start_server(
            self._on_connect, self.host, self.port, limit=_READ_SIZE
        )
        log.info("mllp listening", extra={"port": self.bound_port})

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop accepting, close idle connections at once, let a connection handling a message
        finish it and send its ACK (for at most ``grace_s``), then close every connection.

        Only the message being handled is finished: others that came in the same read are not
        handled, and stay the sender's to send again, as on any closed connection.
        """
        self._stopping = True
        if self._server is not None:
            self._server.close()
        busy = {c.task for c in self._open.values() if c.handling}
        for task in self._tasks - busy:
            task.cancel()
        if busy:
            # a busy connection ends by itself once its ACK is sent (_answer sees _stopping)
            await asyncio.wait(busy, timeout=grace_s)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer_info = writer.get_extra_info("peername")
        host = str(peer_info[0]) if isinstance(peer_info, tuple) else str(peer_info)
        peer = f"{peer_info[0]}:{peer_info[1]}" if isinstance(peer_info, tuple) else str(peer_info)
        if self._stopping or not self._admit(host, peer):
            writer.close()
            return
        conn = _Connection(task, host, peer, FrameReader(self.max_message_bytes))
        self._open[task] = conn
        self._tasks.add(task)
        try:
            if self.ssl_context is None or await self._handshake(writer, conn.peer):
                await self._serve_connection(reader, writer, conn)
        except asyncio.CancelledError:
            pass
        except (ConnectionError, OSError) as exc:
            log.info("mllp connection dropped", extra={"peer": peer, "error": type(exc).__name__})
        finally:
            self._open.pop(task, None)
            self._tasks.discard(task)
            await _close(writer)

    async def _handshake(self, writer: asyncio.StreamWriter, peer: str) -> bool:
        """Start TLS on a new connection; a failure is logged once (peer, TLS's reason) and the
        connection is to be closed."""
        assert self.ssl_context is not None
        try:
            await writer.start_tls(self.ssl_context, ssl_handshake_timeout=self.frame_timeout_s)
        except (ssl.SSLError, ConnectionError, OSError, TimeoutError) as exc:
            reason = str(getattr(exc, "reason", None) or type(exc).__name__)
            log.warning(
                "mllp TLS handshake failed, closing: %s%s",
                reason,
                " (a plain-text client on the TLS port?)" if reason in _NOT_TLS else "",
                extra={"peer": peer},
            )
            return False
        return True

    def _admit(self, host: str, peer: str) -> bool:
        """Whether a new connection from ``host`` may be served. When every slot is taken, makes
        room by closing the connection idle the longest; refuses when none is idle."""
        from_host = sum(1 for c in self._open.values() if c.host == host)
        if from_host >= self.max_connections_per_peer:
            log.warning(
                "mllp connection refused: %d connections from this peer (max_connections_per_peer)",
                from_host,
                extra={"peer": peer},
            )
            return False
        if len(self._open) < self.max_connections:
            return True
        idle = [c for c in self._open.values() if c.idle]
        if not idle:
            log.warning(
                "mllp connection refused: %d connections, none idle (max_connections)",
                len(self._open),
                extra={"peer": peer},
            )
            return False
        oldest = min(idle, key=lambda c: c.last_active)
        # out of the count now, so the new connection's slot is free at once; the task closes
        # its socket as it ends
        del self._open[oldest.task]
        oldest.task.cancel()
        log.info("mllp idle connection closed to admit another", extra={"peer": oldest.peer})
        return True

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Connection
    ) -> None:
        frames = conn.frames
        reply = Reply(writer, self.frame_timeout_s, conn.peer)
        loop = asyncio.get_running_loop()
        clock = _FrameClock(self.frame_timeout_s, self.frame_progress_bytes, frames.max_bytes)
        while True:
            # in a frame the frame clock runs; outside one the idle timer, which only a message
            # restarts (noise does not)
            if frames.in_frame:
                timeout = clock.left(loop.time())
            else:
                timeout = self.idle_timeout_s - (loop.time() - conn.last_active)
            try:
                if timeout <= 0:
                    raise TimeoutError
                # asyncio.timeout, not wait_for: no task per read (a read per message here)
                async with asyncio.timeout(timeout):
                    data = await reader.read(_READ_SIZE)
            except TimeoutError:
                log.info(
                    "mllp %s timeout, closing",
                    "frame" if frames.in_frame else "idle",
                    extra={"peer": conn.peer},
                )
                return
            if not data:
                return
            was_in_frame = frames.in_frame
            try:
                payloads = frames.feed(data)
            except FrameTooLarge as exc:
                await self._refuse(exc, conn, reply)
                return
            if payloads and not await self._answer(payloads, conn, reply):
                return
            if frames.noise > self.max_noise_bytes:
                log.warning(
                    "mllp %d bytes of noise outside a frame (max %d), closing",
                    frames.noise,
                    self.max_noise_bytes,
                    extra={"peer": conn.peer},
                )
                return
            if frames.in_frame:
                if not was_in_frame or payloads:
                    clock.start(loop.time())  # a new frame (its clock starts once answered)
                else:
                    clock.grow(len(data), loop.time())

    async def _answer(self, payloads: list[bytes], conn: _Connection, reply: Reply) -> bool:
        """Hand each message to the handler and send its ACK, in order. False when the connection
        is to end: an ACK could not be sent (the peer is gone or was not reading), or the listener
        is stopping. Messages left unhandled then were never acknowledged: the sender's to send
        again, and a peer that does not read cannot make the listener store thousands more."""
        conn.handling = True
        try:
            for payload in payloads:
                if self._stopping:
                    return False
                token = current_reply.set(reply)
                try:
                    ack = await self.handler.on_message(payload, conn.peer)
                finally:
                    current_reply.reset(token)
                if ack is not None and not await reply.send(ack):
                    return False
            return not self._stopping
        finally:
            conn.handling = False
            conn.last_active = asyncio.get_running_loop().time()

    async def _refuse(self, exc: FrameTooLarge, conn: _Connection, reply: Reply) -> None:
        """Answer the whole messages that came before an oversize frame, then refuse it."""
        if exc.frames and not await self._answer(exc.frames, conn, reply):
            return
        log.warning("mllp frame over %d bytes refused", exc.limit, extra={"peer": conn.peer})
        # awaiting its NAK, so not idle (not closed to make room), and finished on stop
        conn.handling = True
        try:
            nak = await self.handler.on_oversize(exc.head, exc.limit, conn.peer)
            if nak is not None:
                await reply.send(nak)
        finally:
            conn.handling = False


#: how long a closing connection may take to say it is closed before its transport is aborted
CLOSE_WAIT_S = 2.0


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close a connection, waiting a bounded time for it to go: a TLS handshake cancelled half
    way (the engine stopping while a client connected and said nothing) leaves a transport whose
    ``wait_closed`` never returns, which held ``engine serve`` at SIGTERM."""
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), CLOSE_WAIT_S)
    except TimeoutError:
        writer.transport.abort()
    except (ConnectionError, OSError):
        pass
