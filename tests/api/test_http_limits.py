"""The HTTP port's connection limits (engine/api/http_limits.py), on uvicorn configured as
``engine serve`` configures it (engine/service.py ``_http_config``), with raw loopback sockets:
a request head is due within ``ENGINE_HTTP_HEAD_TIMEOUT_S`` of the connect or of the previous
answer, a request in progress is never cut, and connections are capped per address and in all
(the one waiting longest for a head makes room; when none waits, the new one is closed).

The deadlines here are short and the bounds generous: a close is waited for up to 20 s, and
"closed at once" is told by what the connection answers, not by the clock."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from engine.api.http_limits import HttpLimits, LimitedHttpProtocol
from engine.service import _http_config
from engine.settings import Settings
from tests.console.test_auth_tls import self_signed

WAIT_S = 20.0  # the longest any close is waited for (the deadlines are 0.5 s to 30 s)
GET = b"GET /hello HTTP/1.1\r\nHost: test\r\n\r\n"
GATED = b"GET /gate HTTP/1.1\r\nHost: test\r\n\r\n"

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


@pytest.fixture(params=["asyncio", "uvloop"])
def new_loop(request: pytest.FixtureRequest) -> LoopFactory:
    """Each test on both loops: asyncio's and uvloop's transports close and abort on their own
    code (``engine serve`` runs on uvloop where it is installed: engine/runtime.py)."""
    if request.param == "asyncio":
        return asyncio.new_event_loop
    uvloop = pytest.importorskip("uvloop")
    return uvloop.new_event_loop  # type: ignore[no-any-return]


class Gate:
    """``/gate`` answers only once the test opens the gate (a request kept in progress)."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.event: asyncio.Event | None = None
        self.arrived = 0

    async def wait(self) -> None:
        if self.event is None:
            self.loop, self.event = asyncio.get_running_loop(), asyncio.Event()
        self.arrived += 1
        await self.event.wait()

    def until_arrived(self, count: int) -> None:
        """Until ``count`` requests are in the app (their heads read)."""
        deadline = time.monotonic() + WAIT_S
        while self.arrived < count:
            assert time.monotonic() < deadline, f"{self.arrived} of {count} requests arrived"
            time.sleep(0.02)

    def open(self) -> None:
        assert self.loop is not None and self.event is not None
        self.loop.call_soon_threadsafe(self.event.set)


def make_app(gate: Gate) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        if scope["path"] == "/gate":
            await gate.wait()
        body = b"hello"
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"5")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


@contextmanager
def serving(
    tmp_path: Path,
    new_loop: LoopFactory,
    gate: Gate | None = None,
    app: Any = None,
    keep_alive_s: int = int(WAIT_S * 3),
    **limits: Any,
) -> Iterator[int]:
    """uvicorn with the engine's configuration (``limits``: ``http_*`` settings) in a loop thread
    of its own, on an ephemeral loopback port, serving ``app`` (else :func:`make_app`'s)."""
    settings = Settings(var_dir=tmp_path, http_host="127.0.0.1", **limits)
    config = _http_config(settings, app or make_app(gate or Gate()))
    # uvicorn's own keep-alive timer (5 s) would close an idle connection a slow test still uses
    config.timeout_keep_alive = keep_alive_s
    server = uvicorn.Server(config)  # not the main thread: uvicorn leaves the signals alone
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    loop = new_loop()
    thread = threading.Thread(
        target=loop.run_until_complete, args=(server.serve(sockets=[listener]),), daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + WAIT_S
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        yield listener.getsockname()[1]
    finally:
        if gate is not None and gate.loop is not None:
            gate.open()  # a request left waiting would hold uvicorn's shutdown
        server.should_exit = True
        thread.join(WAIT_S)
        loop.close()
        listener.close()


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    """A connection from ``source`` (any 127.0.0.0/8 address is the loopback's on Linux)."""
    return socket.create_connection(("127.0.0.1", port), timeout=WAIT_S, source_address=(source, 0))


def closed(sock: socket.socket) -> bool:
    """Whether the server ends the connection (within WAIT_S) without answering anything."""
    try:
        return sock.recv(4096) == b""
    except TimeoutError:
        return False
    except (ConnectionResetError, ssl.SSLError):  # an abort: a reset (or a TLS record cut short)
        return True


def answer(sock: socket.socket, request: bytes = GET) -> bytes:
    """Send ``request`` and read its answer (status line, headers and the 5-byte body)."""
    sock.sendall(request)
    data = b""
    while not (b"\r\n\r\n" in data and data.endswith(b"hello")):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def gated_answer(sock: socket.socket) -> bytes:
    """The answer to a ``/gate`` request already sent, the connection never closed before it."""
    data = b""
    while not data.endswith(b"hello"):
        chunk = sock.recv(4096)
        assert chunk, "the connection was closed while its request was in progress"
        data += chunk
    return data


def test_the_engine_configures_uvicorn_with_its_limits(tmp_path: Path) -> None:
    settings = Settings(
        var_dir=tmp_path,
        http_head_timeout_s=3.5,
        http_max_connections=7,
        http_max_connections_per_peer=2,
    )
    config = _http_config(settings, make_app(Gate()))
    assert isinstance(config.http, type) and issubclass(config.http, LimitedHttpProtocol)
    limits = config.http.limits
    assert (limits.head_timeout_s, limits.max_connections, limits.max_connections_per_peer) == (
        3.5,
        7,
        2,
    )
    # the defaults, and uvicorn's own 503 limit left unset (it would not free a descriptor)
    defaults = _http_config(Settings(var_dir=tmp_path), make_app(Gate()))
    assert isinstance(defaults.http, type) and issubclass(defaults.http, LimitedHttpProtocol)
    assert defaults.http.limits == HttpLimits() == HttpLimits(10.0, 256, 64, 60.0)
    assert defaults.limit_concurrency is None
    # a stop waits a bounded time for requests in progress (uvicorn's default: for ever)
    assert defaults.timeout_graceful_shutdown == 10


def test_a_connection_that_sends_nothing_is_closed_at_the_head_deadline(
    tmp_path: Path, new_loop: LoopFactory
) -> None:
    with serving(tmp_path, new_loop, http_head_timeout_s=0.5) as port, connect(port) as sock:
        started = time.monotonic()
        assert closed(sock)
        assert time.monotonic() - started >= 0.4  # the deadline's doing, not a refusal


def dribble_until_cut(sock: socket.socket, piece: bytes, every_s: float) -> bool:
    """Send ``piece`` every ``every_s`` until the server ends the connection (True) or WAIT_S
    passes (False)."""
    started = time.monotonic()
    while time.monotonic() - started < WAIT_S:
        try:
            sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            return True
        sock.settimeout(every_s)
        try:
            if sock.recv(4096) == b"":
                return True
        except TimeoutError:
            pass
        except ConnectionResetError:
            return True
    return False


def test_a_head_sent_a_line_at_a_time_is_cut_off(tmp_path: Path, new_loop: LoopFactory) -> None:
    with serving(tmp_path, new_loop, http_head_timeout_s=0.5) as port, connect(port) as sock:
        sock.sendall(b"POST /hl7v2 HTTP/1.1\r\nHost: test\r\n")
        # each line well within any per-read timeout
        cut = dribble_until_cut(sock, b"X-Slow: 1\r\n", 0.1)
        assert cut, "a head that never ends kept its connection"


def test_the_deadline_starts_again_after_each_answer(tmp_path: Path, new_loop: LoopFactory) -> None:
    with serving(tmp_path, new_loop, http_head_timeout_s=0.5) as port, connect(port) as sock:
        # a head in two parts, well within the deadline, is answered
        sock.sendall(GET[:10])
        assert answer(sock, GET[10:]).startswith(b"HTTP/1.1 200")
        # then half the next head: uvicorn's keep-alive timer stops at its first byte, this
        # deadline does not
        sock.sendall(GET[:10])
        assert closed(sock)


def test_a_request_in_progress_is_not_cut_by_the_head_deadline(
    tmp_path: Path, new_loop: LoopFactory
) -> None:
    gate = Gate()
    with serving(tmp_path, new_loop, gate, http_head_timeout_s=0.5) as port, connect(port) as sock:
        sock.sendall(GATED)
        gate.until_arrived(1)
        time.sleep(1.5)  # three deadlines while the app works
        gate.open()
        assert gated_answer(sock).startswith(b"HTTP/1.1 200")
        assert answer(sock).startswith(b"HTTP/1.1 200")  # and kept alive for the next


#: short deadlines for the early-answer tests: the next head (0.5 s) and uvicorn's own keep-alive
#: time (1 s, 5 s in production)
EARLY = {"http_head_timeout_s": 0.5, "keep_alive_s": 1}


def _posted(sock: socket.socket, length: int, *extra: str) -> None:
    """A POST of ``length`` bytes to /hello, which answers without reading them: answered."""
    head = f"POST /hello HTTP/1.1\r\nHost: test\r\nContent-Length: {length}\r\n"
    head += "".join(f"{line}\r\n" for line in extra) + "\r\n"
    assert answer(sock, head.encode()).startswith(b"HTTP/1.1 200")  # the app read nothing


def test_a_body_still_coming_after_an_early_answer_is_not_cut_by_the_head_deadline(
    tmp_path: Path, new_loop: LoopFactory
) -> None:
    """An app may answer before reading the body (a 401 or 413 does): the client still sends
    it, and the connection stays while it comes; the next head is due from its end."""
    with serving(tmp_path, new_loop, **EARLY) as port, connect(port) as sock:
        piece, pieces = b"x" * 100, 15
        _posted(sock, len(piece) * pieces)
        for _ in range(pieces):  # 3 s of body: past both deadlines, never idle for either
            time.sleep(0.2)
            sock.sendall(piece)
        assert answer(sock).startswith(b"HTTP/1.1 200"), "the body's connection was cut"
        # and the deadline holds again from the body's end
        sock.sendall(GET[:10])
        assert closed(sock)


@pytest.mark.parametrize("some", [b"", b"x" * 10], ids=["none of it", "some of it"])
def test_a_body_that_stops_after_an_early_answer_is_closed_at_the_keep_alive_time(
    tmp_path: Path, new_loop: LoopFactory, some: bytes
) -> None:
    """A client that sent ``Expect: 100-continue`` and got its answer may never send the body,
    or stop sending it: the connection is closed when it has been idle for uvicorn's
    keep-alive time, not held for the body's whole window (70 s in production)."""
    with serving(tmp_path, new_loop, **EARLY) as port, connect(port) as sock:
        _posted(sock, 1000, "Expect: 100-continue")
        sock.sendall(some)
        started = time.monotonic()
        assert closed(sock)
        assert time.monotonic() - started < 5  # the keep-alive's 1 s, not the body's 60.5 s


def test_the_next_request_in_the_same_read_as_an_early_answered_body_is_not_cut(
    tmp_path: Path, new_loop: LoopFactory
) -> None:
    """The rest of an early-answered body and the next request, in one read: the idle timer
    armed at the body's end stops at the next head, whose answer takes longer than it."""
    gate = Gate()
    with serving(tmp_path, new_loop, gate, **EARLY) as port, connect(port) as sock:
        _posted(sock, 10)
        sock.sendall(b"x" * 10 + GATED)
        gate.until_arrived(1)
        time.sleep(1.5)  # past the keep-alive time while the app works
        gate.open()
        assert gated_answer(sock).startswith(b"HTTP/1.1 200")


def test_one_address_holds_at_most_its_share(tmp_path: Path, new_loop: LoopFactory) -> None:
    limits = {"http_head_timeout_s": 30.0, "http_max_connections_per_peer": 2}
    with (
        serving(tmp_path, new_loop, **limits) as port,
        connect(port) as first,
        connect(port) as second,
    ):
        with connect(port) as third:
            # refused as it is accepted: a whole request gets no answer
            third.sendall(GET)
            assert closed(third)
        # another address is served, and so are the first two
        with connect(port, "127.0.0.2") as other:
            assert answer(other).startswith(b"HTTP/1.1 200")
        assert answer(first).startswith(b"HTTP/1.1 200")
        assert answer(second).startswith(b"HTTP/1.1 200")


def test_a_full_port_closes_the_connection_waiting_longest_for_a_head(
    tmp_path: Path, new_loop: LoopFactory
) -> None:
    limits = {"http_head_timeout_s": 30.0, "http_max_connections": 2}
    with serving(tmp_path, new_loop, **limits) as port, connect(port, "127.0.0.2") as oldest:
        # the first has surely been accepted before the second connects
        assert answer(oldest).startswith(b"HTTP/1.1 200")
        with connect(port, "127.0.0.3") as newer:
            assert answer(newer).startswith(b"HTTP/1.1 200")
            with connect(port, "127.0.0.4") as newest:
                assert answer(newest).startswith(b"HTTP/1.1 200")
                assert closed(oldest)
                assert answer(newer).startswith(b"HTTP/1.1 200")


def test_a_full_port_of_requests_in_progress_refuses_the_next(
    tmp_path: Path, new_loop: LoopFactory
) -> None:
    gate = Gate()
    limits = {"http_head_timeout_s": 30.0, "http_max_connections": 2}
    with serving(tmp_path, new_loop, gate, **limits) as port:
        with connect(port, "127.0.0.2") as one, connect(port, "127.0.0.3") as two:
            one.sendall(GATED)
            two.sendall(GATED)
            gate.until_arrived(2)  # both in progress: neither waits for a head
            with connect(port, "127.0.0.4") as three:
                three.sendall(GET)
                assert closed(three)
            gate.open()
            assert answer(one, b"").startswith(b"HTTP/1.1 200")
            assert answer(two, b"").startswith(b"HTTP/1.1 200")


def test_over_tls_requests_are_served_and_a_late_head_is_cut(
    tmp_path: Path, new_loop: LoopFactory
) -> None:
    cert, key = self_signed(tmp_path)
    trust = ssl.create_default_context(cafile=str(cert))
    limits = {"http_head_timeout_s": 0.5, "http_tls_cert": cert, "http_tls_key": key}
    with serving(tmp_path, new_loop, **limits) as port:
        with trust.wrap_socket(connect(port), server_hostname="127.0.0.1") as tls:
            assert answer(tls).startswith(b"HTTP/1.1 200")
            tls.sendall(GET[:10])
            assert closed(tls)
        with trust.wrap_socket(connect(port), server_hostname="127.0.0.1") as tls:
            assert closed(tls)  # handshake done, then nothing sent
