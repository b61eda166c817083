"""The MLLP listener under connection abuse (issue 11): idle sockets that fill every slot, bytes
sent outside a frame to keep a connection alive, one peer opening many connections. A client that
behaves must be served throughout.

The handler is a fake (its ACK is ``ACK:`` and the payload), so these tests are about the socket
side only; the real handler is tested in test_mllp_server.py.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import pytest

from engine.adapters.mllp.server import MLLPServer

HOST = "127.0.0.1"
#: another loopback address: a second peer as the listener sees it
OTHER_PEER = "127.0.0.2"
DEADLINE_S = 5.0


class _FakeHandler:
    """Answers ``ACK:<payload>``; a ``HOLD`` message waits for ``release`` (a message whose ACK
    is still being worked on)."""

    def __init__(self) -> None:
        self.holding = threading.Event()
        self.release = threading.Event()

    async def on_message(self, payload: bytes, peer: str) -> bytes | None:
        if payload == b"HOLD":
            self.holding.set()
            await asyncio.to_thread(self.release.wait, DEADLINE_S)
        return b"ACK:" + payload

    async def on_oversize(self, head: bytes, limit: int, peer: str) -> bytes | None:
        return None


@contextmanager
def running(**limits: float) -> Iterator[tuple[int, _FakeHandler]]:
    """A listener on an ephemeral loopback port, in its own loop thread."""
    handler = _FakeHandler()
    loop = asyncio.new_event_loop()
    server = MLLPServer(handler, host=HOST, port=0, **limits)  # type: ignore[arg-type]
    loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield server.bound_port, handler
    finally:
        handler.release.set()
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def connect(port: int, source: str = HOST) -> socket.socket:
    return socket.create_connection((HOST, port), timeout=DEADLINE_S, source_address=(source, 0))


def exchange(sock: socket.socket, payload: bytes) -> bytes:
    """Send one frame, return the reply's payload (b"" if the connection closed first)."""
    return send_and_read(sock, b"\x0b" + payload + b"\x1c\r")


def send_and_read(sock: socket.socket, data: bytes) -> bytes:
    """Send bytes, return the payload of the next reply (b"" if the connection closed first)."""
    sock.sendall(data)
    buf = b""
    while not buf.endswith(b"\x1c\r"):
        chunk = sock.recv(65536)
        if not chunk:
            return b""
        buf += chunk
    return buf[1:-2]


def closed_by_server(sock: socket.socket) -> bool:
    """True once the listener has closed ``sock`` (within the deadline), False if it stays open."""
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True  # closed with our bytes unread: also closed
    except TimeoutError:
        return False


def test_noise_does_not_reset_the_idle_timer() -> None:
    with running(idle_timeout_s=0.5) as (port, _handler), connect(port) as sock:
        sock.settimeout(0.05)
        stop = time.monotonic() + DEADLINE_S
        closed = False
        while not closed and time.monotonic() < stop:
            try:
                sock.sendall(b"\r\n")  # never a start block
                closed = sock.recv(16) == b""
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
        assert closed, "a sender of noise kept its connection past the idle timeout"


def test_noise_is_bounded_and_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with running(idle_timeout_s=60, max_noise_bytes=16 * 1024) as (port, _h), connect(port) as sock:
        with suppress(BrokenPipeError, ConnectionResetError):
            for _ in range(16):
                sock.sendall(b"SYNTHETIC-NOISE " * 256)  # 4 KiB each, no start block
        assert closed_by_server(sock)
    assert "SYNTHETIC-NOISE" not in caplog.text
    assert any("noise" in r.getMessage() for r in caplog.records)


def test_per_peer_limit_refuses_one_peer_and_admits_another() -> None:
    with running(max_connections=10, max_connections_per_peer=3) as (port, _h):
        mine = [connect(port) for _ in range(3)]
        try:
            for i, sock in enumerate(mine):
                assert exchange(sock, b"M%d" % i) == b"ACK:M%d" % i
            with connect(port) as fourth:
                assert closed_by_server(fourth)
            with connect(port, OTHER_PEER) as other:
                assert exchange(other, b"OTHER") == b"ACK:OTHER"
            assert exchange(mine[0], b"AGAIN") == b"ACK:AGAIN"  # the first three carry on
        finally:
            for sock in mine:
                sock.close()


def test_full_server_closes_the_oldest_idle_connection() -> None:
    with running(max_connections=3, frame_timeout_s=60) as (port, _h):
        with connect(port) as old, connect(port) as newer, connect(port) as mid_frame:
            assert exchange(old, b"OLD") == b"ACK:OLD"
            assert exchange(newer, b"NEWER") == b"ACK:NEWER"
            mid_frame.sendall(b"\x0bHALF")  # a frame has started: not idle
            with connect(port) as late:
                assert exchange(late, b"LATE") == b"ACK:LATE"
            assert closed_by_server(old)
            assert exchange(newer, b"STILL") == b"ACK:STILL"
            assert send_and_read(mid_frame, b"-DONE\x1c\r") == b"ACK:HALF-DONE"


def test_full_server_with_no_idle_connection_refuses() -> None:
    with running(max_connections=2, frame_timeout_s=60) as (port, handler):
        with connect(port) as mid_frame, connect(port) as awaiting_ack:
            mid_frame.sendall(b"\x0bHALF")
            awaiting_ack.sendall(b"\x0bHOLD\x1c\r")
            assert handler.holding.wait(DEADLINE_S)
            with connect(port) as late:
                assert closed_by_server(late)
            handler.release.set()
            assert send_and_read(awaiting_ack, b"") == b"ACK:HOLD"
            assert exchange(awaiting_ack, b"X") == b"ACK:X"
            assert send_and_read(mid_frame, b"-DONE\x1c\r") == b"ACK:HALF-DONE"


class _Attack:
    """Keeps ``idle`` silent sockets and ``noisy`` noise senders open against the listener,
    opening a new one whenever the listener closes one, until stopped."""

    def __init__(self, port: int, idle: int, noisy: int) -> None:
        self.port = port
        self.idle: list[socket.socket] = [self._open() for _ in range(idle)]
        self.noisy: list[socket.socket] = [self._open() for _ in range(noisy)]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _open(self) -> socket.socket:
        sock = connect(self.port)
        sock.setblocking(False)
        return sock

    def _alive(self, sock: socket.socket, noise: bool) -> bool:
        try:
            if noise:
                sock.send(b"\r\n")
            return sock.recv(16) != b""
        except BlockingIOError:
            return True
        except OSError:
            return False

    def _run(self) -> None:
        while not self.stop.wait(0.02):
            for pool, noise in ((self.idle, False), (self.noisy, True)):
                for i, sock in enumerate(pool):
                    if not self._alive(sock, noise):
                        sock.close()
                        with suppress(OSError):
                            pool[i] = self._open()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(DEADLINE_S)
        for sock in self.idle + self.noisy:
            sock.close()


def test_well_behaved_client_is_served_under_attack() -> None:
    with running(max_connections=10, idle_timeout_s=60) as (port, _h):
        attack = _Attack(port, idle=10, noisy=4)
        attack.thread.start()
        try:
            sock = connect(port, OTHER_PEER)
            acked = 0
            for i in range(20):
                payload = b"GOOD%d" % i
                for _attempt in range(3):  # reconnect and resend, as an MLLP sender does
                    try:
                        if exchange(sock, payload) == b"ACK:" + payload:
                            acked += 1
                            break
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    sock.close()
                    sock = connect(port, OTHER_PEER)
            sock.close()
            assert acked == 20
        finally:
            attack.close()
