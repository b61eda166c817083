"""An asyncio MLLP listener (HL7 v2.5.1 appendix C).

It owns the socket side only: framing, limits and timeouts. What to do with a message, and which
ACK to answer with, is the ``handler``'s business (the pipeline's), so the listener can be tested
with
a fake handler and the pipeline without sockets.

Limits a production interface needs and MLLP does not define:

* ``max_message_bytes``: a frame larger than this is refused: the handler's ``on_oversize`` may
  answer with a NAK built from the frame's head, then the connection is closed; other connections
  carry on.
* ``idle_timeout_s``: a connection that sends nothing for this long is closed.
* ``frame_timeout_s``: a frame that has started must finish within this time (slow-loris senders).
* ``max_connections``: further connections are accepted and closed at once.
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


class Reply:
    """Sends a later message (an enhanced-mode application ACK) on a connection, framed, in
    order with its other writes; quietly does nothing once the connection is gone."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._lock = asyncio.Lock()

    async def send(self, data: bytes) -> bool:
        async with self._lock:
            if self._writer.is_closing():
                return False
            try:
                self._writer.write(frame(data))
                await self._writer.drain()
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
        max_connections: int = 200,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self.idle_timeout_s = idle_timeout_s
        self.frame_timeout_s = frame_timeout_s
        self.max_connections = max_connections
        self.ssl_context = ssl_context
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def bound_port(self) -> int:
        """The port actually listened on (useful with port 0)."""
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._on_connect, self.host, self.port, ssl=self.ssl_context, limit=_READ_SIZE
        )
        log.info("mllp listening", extra={"port": self.bound_port})

    async def stop(self) -> None:
        """Stop accepting, let in-flight messages finish their ACK, close every connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer_info = writer.get_extra_info("peername")
        peer = f"{peer_info[0]}:{peer_info[1]}" if isinstance(peer_info, tuple) else str(peer_info)
        if len(self._connections) >= self.max_connections:
            log.warning("mllp connection refused: limit reached", extra={"peer": peer})
            writer.close()
            return
        self._connections.add(task)
        try:
            await self._serve_connection(reader, writer, peer)
        except asyncio.CancelledError:
            pass
        except (ConnectionError, OSError) as exc:
            log.info("mllp connection dropped", extra={"peer": peer, "error": type(exc).__name__})
        finally:
            self._connections.discard(task)
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> None:
        frames = FrameReader(self.max_message_bytes)
        reply = Reply(writer)
        loop = asyncio.get_running_loop()
        frame_started = 0.0
        while True:
            if frames.in_frame:
                timeout = self.frame_timeout_s - (loop.time() - frame_started)
                if timeout <= 0:
                    log.warning("mllp frame timeout", extra={"peer": peer})
                    return
            else:
                timeout = self.idle_timeout_s
            try:
                # asyncio.timeout, not wait_for: no task per read (a read per message here)
                async with asyncio.timeout(timeout):
                    data = await reader.read(_READ_SIZE)
            except TimeoutError:
                log.info(
                    "mllp %s timeout, closing",
                    "frame" if frames.in_frame else "idle",
                    extra={"peer": peer},
                )
                return
            if not data:
                return
            was_in_frame = frames.in_frame
            try:
                payloads = frames.feed(data)
            except FrameTooLarge as exc:
                log.warning("mllp frame over %d bytes refused", exc.limit, extra={"peer": peer})
                nak = await self.handler.on_oversize(exc.head, exc.limit, peer)
                if nak is not None:
                    writer.write(frame(nak))
                    await writer.drain()
                return
            for payload in payloads:
                token = current_reply.set(reply)
                try:
                    ack = await self.handler.on_message(payload, peer)
                finally:
                    current_reply.reset(token)
                if ack is not None:
                    await reply.send(ack)
            if frames.in_frame and (not was_in_frame or payloads):
                frame_started = loop.time()
