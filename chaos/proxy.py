"""A TCP proxy on the loopback that the campaign controls: between the engine and PostgreSQL (or a
destination), able to cut every connection, to refuse new ones for a while, and to delay.

It runs its own asyncio loop in a daemon thread; the switches are thread-safe:

* :meth:`TcpProxy.cut` closes every open connection (both sides see a reset/EOF);
* :meth:`TcpProxy.down` cuts and then refuses new connections (accepted and closed at once)
  until :meth:`TcpProxy.up`;
* :attr:`TcpProxy.delay_s` holds every chunk that long before passing it on.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading

__all__ = ["TcpProxy"]

_CHUNK = 64 * 1024


class TcpProxy:
    """127.0.0.1:``port`` (a free one) → 127.0.0.1:``target``."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.delay_s = 0.0
        self.refusing = False
        self.cuts = 0
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._run, name="chaos-proxy", daemon=True)
        self._ready = threading.Event()
        self._server: asyncio.Server | None = None

    def start(self) -> TcpProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def serve() -> None:
            self._server = await asyncio.start_server(self._accept, sock=self._sock)
            self._ready.set()

        self._loop.run_until_complete(serve())
        self._loop.run_forever()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    break
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError):
            writer.close()

    def _cut_all(self) -> None:
        self.cuts += 1
        for w in list(self._writers):
            transport = w.transport
            # an abort (RST), as a dead peer or a cut cable is seen, not a polite FIN
            transport.abort()

    def cut(self) -> None:
        """Close every open connection now."""
        self._loop.call_soon_threadsafe(self._cut_all)

    def down(self) -> None:
        """Cut every connection and refuse new ones until :meth:`up`."""
        self.refusing = True
        self.cut()

    def up(self) -> None:
        self.refusing = False

    def stop(self) -> None:
        def close() -> None:
            self._cut_all()
            if self._server is not None:
                self._server.close()
            self._loop.stop()

        self._loop.call_soon_threadsafe(close)
        self._thread.join(10)
