"""Every request's body must keep coming (engine/api/http_limits.py, ``body_timeout_s``; review of
7 December): FastAPI reads a form or JSON body before a route's dependencies (the login check
among them) run, so an anonymous client could send a head and then a byte of its body now and
then, and hold its connection for ever. Now a body must arrive whole, or grow by 64 KiB, within
each window of ``head_timeout_s + body_timeout_s``; a steady large upload goes on."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engine.api.http_limits import BODY_PROGRESS_BYTES
from tests.api.test_http_limits import (
    LoopFactory,
    closed,
    connect,
    dribble_until_cut,
    new_loop,
    serving,
)

__all__ = ["new_loop"]  # (the fixture, used by name)


def _reading_app() -> Any:
    """Reads the whole body first (as FastAPI does for a form), then answers with its size."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        body = str(size).encode()
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


@contextmanager
def _serving(tmp_path: Path, new_loop: LoopFactory) -> Iterator[int]:
    with serving(
        tmp_path, new_loop, app=_reading_app(), http_head_timeout_s=0.5, http_body_timeout_s=1.0
    ) as port:
        yield port


def _head(length: int) -> bytes:
    return (
        b"POST /console/login HTTP/1.1\r\nHost: test\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: %d\r\n\r\n" % length
    )


def test_a_body_sent_a_byte_now_and_then_is_cut_off(tmp_path: Path, new_loop: LoopFactory) -> None:
    with _serving(tmp_path, new_loop) as port, connect(port) as sock:
        sock.sendall(_head(10_000) + b"u")  # (the whole body would take 2,000 s at this rate)
        started = time.monotonic()
        cut = dribble_until_cut(sock, b"x", 0.2)  # a byte every 0.2 s
        took = time.monotonic() - started
        assert cut, "a body dribbled for ever kept its connection"
        assert took >= 1.0  # the window's doing (1.5 s), not a refusal


def test_a_steady_large_body_is_taken(tmp_path: Path, new_loop: LoopFactory) -> None:
    """Four windows long, but 64 KiB more in each: not cut."""
    size = 4 * BODY_PROGRESS_BYTES
    with _serving(tmp_path, new_loop) as port, connect(port) as sock:
        sock.sendall(_head(size))
        for _ in range(4):
            sock.sendall(b"a" * BODY_PROGRESS_BYTES)
            time.sleep(1.0)  # within the 1.5 s window after each step
        answer = b""
        while not answer.endswith(str(size).encode()):
            chunk = sock.recv(4096)
            assert chunk, f"the upload was cut: {answer!r}"
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200")


def test_a_request_without_a_body_is_not_timed(tmp_path: Path, new_loop: LoopFactory) -> None:
    with _serving(tmp_path, new_loop) as port, connect(port) as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: test\r\n\r\n")
        answer = b""
        while not answer.endswith(b"\r\n\r\n0"):
            chunk = sock.recv(4096)
            assert chunk, f"cut before its answer: {answer!r}"
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200")
        time.sleep(1.0)  # past the head deadline (0.5 s), within the body window (1.5 s)
        assert closed(sock)  # by the head deadline: the connection is idle
