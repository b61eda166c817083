"""The MLLP listener against peers that are slow or stop reading, and how it stops.

A peer that never reads its ACKs must not hold its connection (and its slot) for ever; a frame
that keeps arriving at a modest rate must not be cut off by a fixed deadline, while a sender of a
byte a second still is; stopping the listener finishes the ACK of a message being handled.

The handler is a fake, so these tests are about the socket side only. Every wait is for an event
or the connection's end, bounded by a deadline many times the limits under test, so a loaded
machine makes them slower, not flaky.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

import pytest

from engine.adapters.mllp.server import MLLPServer, _FrameClock

HOST = "127.0.0.1"
#: how long a test waits for what must happen (many times every limit set below)
DEADLINE_S = 20.0
#: an ACK large enough that a peer which does not read fills every buffer in a few hundred
BIG_ACK = b"A" * 1024


class _FakeHandler:
    """Answers ``ACK:<payload>`` (or ``BIG_ACK`` for ``NAKME``); ``HOLD`` waits for ``release``
    (a message still being stored); an oversize frame is answered with ``oversize_nak``."""

    def __init__(self) -> None:
        self.messages = 0
        self.holding = threading.Event()
        self.release: asyncio.Event | None = None
        self.oversize_nak: bytes | None = None

    async def on_message(self, payload: bytes, peer: str) -> bytes | None:
        self.messages += 1
        if payload == b"HOLD":
            self.release = asyncio.Event()
            self.holding.set()
            await self.release.wait()
        if payload == b"NAKME":
            return BIG_ACK
        return b"ACK:" + payload

    async def on_oversize(self, head: bytes, limit: int, peer: str) -> bytes | None:
        return self.oversize_nak


@dataclass
class _Running:
    server: MLLPServer
    handler: _FakeHandler
    loop: asyncio.AbstractEventLoop
    stopped: list[Future[None]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.server.bound_port

    def stop(self, **kwargs: float) -> Future[None]:
        """Start stopping the listener in its loop; the future is done when it has stopped."""
        fut = asyncio.run_coroutine_threadsafe(self.server.stop(**kwargs), self.loop)
        self.stopped.append(fut)
        return fut

    def release(self) -> None:
        """Let a held message finish."""
        release = self.handler.release
        assert release is not None
        self.loop.call_soon_threadsafe(release.set)

    def open_connections(self) -> int:
        """How many connections the listener counts (read in its loop)."""
        return asyncio.run_coroutine_threadsafe(self._count(), self.loop).result(DEADLINE_S)

    async def _count(self) -> int:
        return len(self.server._open)


@contextmanager
def running(**limits: float) -> Iterator[_Running]:
    """A listener on an ephemeral loopback port, in its own loop thread."""
    handler = _FakeHandler()
    loop = asyncio.new_event_loop()
    server = MLLPServer(handler, host=HOST, port=0, **limits)  # type: ignore[arg-type]
    loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    run = _Running(server, handler, loop)
    try:
        yield run
    finally:
        if handler.release is not None:
            run.release()
        if not run.stopped:
            run.stop()
        run.stopped[0].result(DEADLINE_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(DEADLINE_S)
        loop.close()


def connect(port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        # before connect, so the window offered to the listener is small from the start
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(DEADLINE_S)
    try:
        sock.connect((HOST, port))
    except OSError:
        sock.close()
        raise
    return sock


def read_reply(sock: socket.socket) -> bytes:
    """The payload of the next reply (b"" if the connection closed first)."""
    buf = b""
    while not buf.endswith(b"\x1c\r"):
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return b""
        if not chunk:
            return b""
        buf += chunk
    return buf[1:-2]


def exchange(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(b"\x0b" + payload + b"\x1c\r")
    return read_reply(sock)


def closed_by_server(sock: socket.socket) -> bool:
    """True once the listener has closed ``sock`` (within the deadline); reads what is left."""
    try:
        while chunk := sock.recv(65536):
            del chunk
    except ConnectionResetError:
        return True  # closed hard: also closed
    except TimeoutError:
        return False
    return True


def wait_until(condition: Callable[[], bool]) -> bool:
    stop = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > stop:
            return False
        time.sleep(0.05)
    return True


def send_until_closed(sock: socket.socket, chunk: bytes, every_s: float) -> bool:
    """Send ``chunk`` every ``every_s`` until the listener closes the connection (True) or the
    deadline passes (False)."""
    sock.settimeout(every_s)
    stop = time.monotonic() + DEADLINE_S
    while time.monotonic() < stop:
        try:
            sock.sendall(chunk)
            if sock.recv(16) == b"":
                return True
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            return True
    return False


# -- a peer that stops reading its ACKs


def test_a_peer_that_never_reads_its_acks_is_aborted_and_its_slot_freed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # the review's scenario: thousands of tiny frames in one write, a small receive buffer, no
    # read; every NAK waits on a drain that never ends, and the connection (never idle) kept
    # its slot, so the next sender was refused for good
    caplog.set_level(logging.INFO)
    with running(max_connections=1, idle_timeout_s=60, frame_timeout_s=0.5) as run:
        with connect(run.port, rcvbuf=4096) as flood:
            with suppress(TimeoutError, ConnectionError):
                flood.settimeout(2)
                flood.sendall(b"\x0bNAKME\x1c\r" * 20_000)
            assert wait_until(lambda: run.handler.messages > 0)

            def served() -> bool:
                with connect(run.port) as late, suppress(ConnectionError, TimeoutError):
                    late.settimeout(2)
                    return exchange(late, b"LATE") == b"ACK:LATE"
                return False

            assert wait_until(served), "a peer not reading its ACKs kept its slot"
        # the peer's messages after the stuck ACK were not taken: they are its to send again
        assert run.handler.messages < 20_000
    aborted = [r for r in caplog.records if "abort" in r.getMessage()]
    assert aborted and all(getattr(r, "peer", "").startswith(HOST) for r in aborted)
    assert "NAKME" not in caplog.text


def test_an_oversize_nak_the_peer_never_reads_does_not_hold_the_connection() -> None:
    with running(max_message_bytes=1024, idle_timeout_s=60, frame_timeout_s=0.5) as run:
        run.handler.oversize_nak = b"N" * (8 * 1024 * 1024)
        with connect(run.port, rcvbuf=4096) as big:
            big.sendall(b"\x0b" + b"x" * 4096)
            assert wait_until(lambda: run.open_connections() == 0), "the NAK write never ended"


# -- stopping


def test_stop_finishes_the_ack_being_handled_and_closes_idle_connections_at_once() -> None:
    with running(idle_timeout_s=60) as run:
        port = run.port
        with connect(port) as idle, connect(port) as busy:
            assert exchange(idle, b"FIRST") == b"ACK:FIRST"
            busy.sendall(b"\x0bHOLD\x1c\r")
            assert run.handler.holding.wait(DEADLINE_S)
            stopped = run.stop()
            assert closed_by_server(idle)  # idle: closed while the other is still busy
            assert not stopped.done()
            run.release()
            assert read_reply(busy) == b"ACK:HOLD"
            assert closed_by_server(busy)
            stopped.result(DEADLINE_S)
        with pytest.raises(ConnectionRefusedError):
            connect(port).close()  # no longer listening


def test_stop_gives_a_message_that_never_finishes_a_bounded_grace() -> None:
    with running(idle_timeout_s=60) as run, connect(run.port) as busy:
        busy.sendall(b"\x0bHOLD\x1c\r")
        assert run.handler.holding.wait(DEADLINE_S)
        started = time.monotonic()
        run.stop(grace_s=0.3).result(DEADLINE_S)
        assert time.monotonic() - started < DEADLINE_S / 2
        assert read_reply(busy) == b""  # cut off without an ACK: the sender sends it again


# -- slow frames


def test_a_slow_steady_frame_is_not_cut_off_by_the_frame_timeout() -> None:
    # 50 KiB over about five seconds, two frame timeouts and more: a large message over a slow
    # link. Each chunk is twice the progress asked for, and the gap between two chunks a tenth
    # of the timeout, so only a stall of the test itself could fail it
    with running(frame_timeout_s=2.0, frame_progress_bytes=1024) as run:
        with connect(run.port) as sock:
            sock.sendall(b"\x0b")
            for _ in range(25):
                time.sleep(0.2)
                sock.sendall(b"x" * 2048)
            sock.sendall(b"\x1c\r")
            assert read_reply(sock) == b"ACK:" + b"x" * 2048 * 25


def test_a_byte_a_second_is_still_cut_off() -> None:
    # ten bytes a second, with the default progress asked for (64 KiB a frame timeout)
    with running(frame_timeout_s=1.0) as run:
        with connect(run.port) as sock:
            sock.sendall(b"\x0bMSH")
            assert send_until_closed(sock, b"x", every_s=0.1), "a dribbling sender kept its frame"
        assert run.handler.messages == 0


def test_a_frame_that_never_ends_is_cut_off_at_the_largest_frame_at_the_slowest_rate() -> None:
    # enough bytes every tenth of a second, but a start block in each, so the frame starts over
    # and never grows past the size limit: only the overall bound ends it (1.0 s x (1 + 4))
    limits = {"frame_timeout_s": 1.0, "frame_progress_bytes": 256, "max_message_bytes": 1024}
    with running(**limits) as run, connect(run.port) as sock:
        assert send_until_closed(sock, b"\x0b" + b"x" * 300, every_s=0.1)
        assert run.handler.messages == 0


def test_the_frame_clock_by_the_numbers() -> None:
    # the rule itself, on a clock of its own: 64 KiB per 30 s step, 16 MiB at most
    clock = _FrameClock(30.0, 64 * 1024, 16 * 1024 * 1024)
    clock.start(0.0)
    assert clock.left(29.0) == 1.0
    clock.grow(1024, 29.0)  # not a step yet: the deadline stays
    assert clock.left(29.5) == 0.5
    clock.grow(63 * 1024, 29.5)  # 64 KiB since the start: another 30 s from here
    assert clock.left(59.0) == 0.5
    # 16 MiB over a 2 Mbit/s link (about 64 s) is taken
    clock.start(0.0)
    for step in range(1, 257):
        clock.grow(64 * 1024, step * 0.25)
        assert clock.left(step * 0.25) > 0
    # however steady, no frame outlasts the largest frame at the slowest rate plus one timeout
    assert clock.limit_s == 30.0 * 257
    clock.start(0.0)
    now = 0.0
    while clock.left(now) > 0:
        now += 29.0
        clock.grow(64 * 1024, now)
    assert 30.0 * 256 < now <= 30.0 * 257 + 29.0
