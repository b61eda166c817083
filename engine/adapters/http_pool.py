"""A lean HTTP/1.1 connection pool under httpx, for the FHIR destination's requests.

httpx stays the client the adapters program against (URLs, headers, auth, ``Response``,
its exceptions, environment proxies); this replaces only what sits under it for direct
``http://`` and ``https://`` requests, httpcore's connection pool. Why: at the soak's load the
worker spent about a fifth of its busy time in httpcore and anyio (5 December, py-spy, example
routes), a quarter of that in the pool checking, before every request, whether each idle
connection's socket had become readable (``is_socket_readable``: a poll per connection per
request). Here each connection is an asyncio protocol: the event loop tells it at once when the
server closes it, so picking an idle one costs a list pop, and the response is parsed by
httptools (llhttp, in C; uvicorn's parser, already a dependency).

What it does: keep-alive connections per origin (at most ``max_connections``, idle ones closed
after ``keepalive_s``); the request's connect, write, read and pool time-outs (httpx's
``timeout`` extension); request bodies as bytes or streamed (chunked when httpx says so);
responses read whole, refused past ``max_response_bytes``; TLS with the adapter's context. A
request that a reused connection lost before any byte of an answer came (the server closed it
while idle) is sent once more on a new connection, if its body can be sent again. Errors are
httpx's (``ConnectError``, ``ConnectTimeout``, ``ReadTimeout``, ``WriteTimeout``,
``PoolTimeout``, ``RemoteProtocolError``, ``ReadError``), so callers classify them as before.

What it leaves to httpcore (the ``fallback`` transport): ``HEAD`` and ``CONNECT`` (their
answers' framing differs) and any other scheme. No HTTP/2 (httpx's default is HTTP/1.1 too).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
from collections import deque
from collections.abc import Mapping
from typing import Any, cast

import httptools
import httpx

__all__ = ["DirectClient", "LeanTransport"]

#: what one connection may be asked to answer with at most (a transaction-response Bundle is
#: small; a server answering with hundreds of megabytes is refused, not buffered)
MAX_RESPONSE_BYTES = 32 * 1024 * 1024
#: how long a closing TLS connection may take to say goodbye before it is cut
_GOODBYE_S = 1.0
_Origin = tuple[str, str, int]


class _Lost(Exception):
    """The connection closed before any byte of the answer: the request may be sent again."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one exchange at a time."""

    def __init__(self, origin: _Origin, limit: int) -> None:
        self.origin = origin
        self.limit = limit
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.used = False
        self._parser: httptools.HttpResponseParser | None = None
        self._progress: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._paused = False
        self.gone: asyncio.Future[None] | None = None
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.size = 0
        self.got_bytes = False
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.surplus = False
        self.error: Exception | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.gone = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if self._parser is None:  # an answer nobody asked for: the connection is not usable
            self.close()
            return
        self.got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httpx.RemoteProtocolError("the server switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed HTTP answer ({type(exc).__name__})"))
        self._wake()

    def eof_received(self) -> bool | None:
        self._ended()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._ended()
        if self.gone is not None and not self.gone.done():
            self.gone.set_result(None)
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self.complete:  # bytes after the answer: not ours to read, nor the next request's
            self.surplus = True
            self.keep_alive = False

    def on_status(self, reason: bytes) -> None:
        if not self.surplus:
            self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.surplus:
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        if self.surplus:
            return
        self.status = self._parser.get_status_code()
        self.headers_done = self.status >= 200

    def on_body(self, body: bytes) -> None:
        if self.surplus:
            return
        self.size += len(body)
        if self.size > self.limit:
            self._fail(httpx.ReadError(f"response larger than {self.limit} bytes"))
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        assert self._parser is not None
        if self.surplus:
            return
        if self.status < 200:  # 1xx: an interim answer; the final one follows
            self.headers.clear()
            self.reason = b""
            return
        self.complete = True
        self.keep_alive = self._parser.should_keep_alive()

    # the exchange

    def _ended(self) -> None:
        """The server closed its side: the answer ends here, whole or not."""
        self.closed = True
        if self._parser is None or self.complete or self.error is not None:
            self._wake()
            return
        if not self.got_bytes:
            self.error = _Lost()
        elif self.headers_done and not self._framed():
            self.complete = True  # a body delimited by the end of the connection
            self.keep_alive = False
        else:
            self.error = httpx.RemoteProtocolError("the server closed the connection mid-answer")
        self._wake()

    def _framed(self) -> bool:
        """Whether the answer says where its body ends (a length or chunks)."""
        names = {n.lower() for n, _ in self.headers}
        return b"content-length" in names or b"transfer-encoding" in names

    def _fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def shut(self, grace_s: float) -> None:
        """Close, and return only once the socket is closed: a TLS connection says goodbye
        (close_notify, one round trip) within ``grace_s``, else is cut. asyncio closes a socket
        a loop turn or more after ``close()``; a caller about to end its loop (``asyncio.run``)
        would otherwise leave the socket open, to the garbage collector."""
        self.close()
        if not await self._gone_within(grace_s) and self.transport is not None:
            self.transport.abort()
            await self._gone_within(grace_s)

    async def _gone_within(self, seconds: float) -> bool:
        if self.gone is None:  # never connected
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await asyncio.shield(self.gone)
        return self.gone.done()

    def _wake(self) -> None:
        if self._progress is not None and not self._progress.done():
            self._progress.set_result(None)

    async def _within(
        self, future: asyncio.Future[None], seconds: float | None, late: Exception
    ) -> None:
        """Wait for ``future``; past ``seconds`` the connection is closed and ``late`` raised."""
        try:
            async with asyncio.timeout(seconds):
                await future
        except TimeoutError:
            self.close()
            raise late from None

    async def _wait(self, seconds: float | None, what: type[httpx.TimeoutException]) -> None:
        self._progress = asyncio.get_running_loop().create_future()
        try:
            await self._within(self._progress, seconds, what(f"no progress in {seconds} s"))
        finally:
            self._progress = None

    async def _drain(self, seconds: float | None) -> None:
        if not self._paused or self.closed:
            return
        self._drained = asyncio.get_running_loop().create_future()
        try:
            late = httpx.WriteTimeout(f"could not send for {seconds} s")
            await self._within(self._drained, seconds, late)
        finally:
            self._drained = None

    async def exchange(
        self,
        head: bytes,
        body: bytes | None,
        request: httpx.Request | None,
        timeouts: Mapping[str, Any],
    ) -> None:
        """Send one request and read its whole answer into this connection's fields (``body``
        None: ``request``'s stream)."""
        assert self.transport is not None
        self._reset()
        self.used = True
        self._parser = httptools.HttpResponseParser(self)
        try:
            if body is not None:
                self.transport.write(head + body)
            else:
                assert request is not None
                self.transport.write(head)
                await self._stream(request, timeouts.get("write"))
            while True:
                if self.error is not None:
                    raise self.error
                if self.complete:
                    break
                if self.closed:
                    raise httpx.ReadError("the connection closed")
                await self._wait(timeouts.get("read"), httpx.ReadTimeout)
        finally:
            self._parser = None

    async def _stream(self, request: httpx.Request, write_s: float | None) -> None:
        """A streamed body, chunked when httpx framed it so (no length known)."""
        chunked = request.headers.get("transfer-encoding", "").lower() == "chunked"
        assert self.transport is not None
        assert isinstance(request.stream, httpx.AsyncByteStream)
        async for part in request.stream:
            if self.closed:
                break  # the answer (an early refusal, say) is read below
            if part:
                self.transport.write(b"%x\r\n%b\r\n" % (len(part), part) if chunked else part)
                await self._drain(write_s)
        if chunked and not self.closed:
            self.transport.write(b"0\r\n\r\n")
        await self._drain(write_s)


def _head(request: httpx.Request) -> bytes:
    url = request.url
    lines = [b"%b %b HTTP/1.1" % (_method(request.method), url.raw_path)]
    lines += [_header(name, value) for name, value in request.headers.raw]
    return b"\r\n".join(lines) + b"\r\n\r\n"


#: an HTTP token (RFC 9110 section 5.6.2): what a method and a header's name may hold
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _method(method: str) -> bytes:
    """The request line's method, a token: anything else (a line break and a second request
    after it, from a Bundle's ``request.method``) is refused, as httpcore refuses it."""
    raw = method.encode("ascii", "replace")
    if not _TOKEN.fullmatch(raw):
        raise httpx.LocalProtocolError(f"method {raw[:20]!r} is not an HTTP token")
    return raw


def _header(name: bytes, value: bytes) -> bytes:
    """One header line; a name that is not a token, or a value holding a line break or NUL (a
    header of its own, smuggled), is refused."""
    if not _TOKEN.fullmatch(name):
        raise httpx.LocalProtocolError(f"header name {name[:40]!r} is not an HTTP token")
    if b"\r" in value or b"\n" in value or b"\0" in value:
        raise httpx.LocalProtocolError(f"header {name[:40]!r} holds a line break or NUL")
    return b"%b: %b" % (name, value)


def _replayable(request: httpx.Request) -> bytes | None:
    """The body when it is bytes (it can be sent again); None for a stream."""
    try:
        return request.content
    except httpx.RequestNotRead:
        return None


class LeanTransport(httpx.AsyncBaseTransport):
    """httpx transport: keep-alive HTTP/1.1 connections per origin, parsed by httptools."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext,
        max_connections: int = 64,
        keepalive_s: float = 5.0,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self.ssl_context = ssl_context
        self.max_connections = max_connections
        self.keepalive_s = keepalive_s
        self.max_response_bytes = max_response_bytes
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._open: dict[_Origin, int] = {}
        self._waiting: dict[_Origin, deque[asyncio.Future[None]]] = {}
        self._fallback: httpx.AsyncHTTPTransport | None = None
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https") or request.method in ("HEAD", "CONNECT"):
            if self._fallback is None:
                self._fallback = httpx.AsyncHTTPTransport(verify=self.ssl_context)
            return await self._fallback.handle_async_request(request)
        port = url.port or (443 if url.scheme == "https" else 80)
        origin: _Origin = (url.scheme, url.host, port)
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        head, body = _head(request), _replayable(request)
        response = await self.exchange(origin, head, body, timeouts, request)
        response.request = request
        return response

    async def exchange(
        self,
        origin: _Origin,
        head: bytes,
        body: bytes | None,
        timeouts: Mapping[str, Any],
        request: httpx.Request | None = None,
    ) -> httpx.Response:
        """One request, its head already framed (by :class:`DirectClient`, or from httpx's
        request in :meth:`handle_async_request`), its whole answer read; ``body`` None streams
        ``request``'s."""
        if self._closed:
            raise RuntimeError("the transport is closed")
        for attempt in (1, 2):
            conn = await self._acquire(origin, request, timeouts)
            reused = conn.used
            try:
                await conn.exchange(head, body, request, timeouts)
            except _Lost:
                self._discard(conn)
                if reused and body is not None and attempt == 1:
                    continue  # closed while idle, as our request went: once more, anew
                raise httpx.RemoteProtocolError(
                    "the server closed the connection without answering", request=request
                ) from None
            except BaseException:
                self._discard(conn)
                raise
            response = httpx.Response(
                conn.status,
                headers=conn.headers,
                content=b"".join(conn.body),
                extensions={"http_version": b"HTTP/1.1", "reason_phrase": conn.reason},
            )
            if conn.keep_alive and not conn.closed:
                self._release(conn)
            else:
                self._discard(conn)
            return response
        raise AssertionError("unreachable")

    async def _acquire(
        self, origin: _Origin, request: httpx.Request | None, timeouts: Mapping[str, Any]
    ) -> _Connection:
        """An idle connection to ``origin`` still open and fresh, else a new one when there is
        room, else the first to be given back (within the pool time-out)."""
        deadline = None if timeouts.get("pool") is None else time.monotonic() + timeouts["pool"]
        while True:
            idle = self._idle.get(origin)
            now = time.monotonic()
            while idle:
                conn = idle.pop()
                if not conn.closed and now - conn.idle_since < self.keepalive_s:
                    return conn
                self._discard(conn)
            if self._open.get(origin, 0) < self.max_connections:
                return await self._connect(origin, request, timeouts.get("connect"))
            waiter = asyncio.get_running_loop().create_future()
            queue = self._waiting.setdefault(origin, deque())
            queue.append(waiter)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                async with asyncio.timeout(left):
                    await waiter
            except BaseException as exc:
                if waiter.done() and not waiter.cancelled():
                    self._next(origin)  # woken, then stopped: the turn goes to the next
                if isinstance(exc, TimeoutError):
                    raise httpx.PoolTimeout("no connection free in time", request=request) from None
                raise
            finally:
                with contextlib.suppress(ValueError):
                    queue.remove(waiter)

    async def _connect(
        self, origin: _Origin, request: httpx.Request | None, seconds: float | None
    ) -> _Connection:
        scheme, host, port = origin
        self._open[origin] = self._open.get(origin, 0) + 1
        loop = asyncio.get_running_loop()
        tls = self.ssl_context if scheme == "https" else None
        try:
            async with asyncio.timeout(seconds):
                _, conn = await loop.create_connection(
                    lambda: _Connection(origin, self.max_response_bytes),
                    host,
                    port,
                    ssl=tls,
                    server_hostname=host if tls else None,
                )
        except TimeoutError:
            self._gone(origin)
            raise httpx.ConnectTimeout(f"no connection in {seconds} s", request=request) from None
        except (OSError, ssl.SSLError) as exc:
            self._gone(origin)
            raise httpx.ConnectError(f"{type(exc).__name__}: {exc}", request=request) from None
        except BaseException:
            self._gone(origin)
            raise
        return conn

    def _release(self, conn: _Connection) -> None:
        if self._closed:  # an exchange that ended after aclose: nobody would close it later
            self._discard(conn)
            return
        conn.idle_since = time.monotonic()
        self._idle.setdefault(conn.origin, []).append(conn)
        self._next(conn.origin)

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        self._gone(conn.origin)

    def _gone(self, origin: _Origin) -> None:
        self._open[origin] = max(0, self._open.get(origin, 0) - 1)
        self._next(origin)

    def _next(self, origin: _Origin) -> None:
        """Wake the first request waiting for a connection to ``origin``."""
        queue = self._waiting.get(origin)
        while queue:
            waiter = queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        self._closed = True
        idle = [conn for conns in self._idle.values() for conn in conns]
        self._idle.clear()
        await asyncio.gather(*(conn.shut(_GOODBYE_S) for conn in idle))
        if self._fallback is not None:
            await self._fallback.aclose()


class DirectClient:
    """Requests handed straight to a :class:`LeanTransport`, past ``httpx.AsyncClient``.

    The FHIR destination sends a request or more a message. Through httpx's client each one
    merges and parses its URL, merges and normalises its headers, looks for cookies, runs the
    auth and redirect flows and the event hooks, then wraps the answer: at the soak's load about
    as much of the worker's time as the exchange on the wire (6 December 2026, py-spy of the
    worker, example routes at 1,000 messages/s offered: httpx 15 % of the samples holding the
    GIL, the pool 13 %). The destination uses none of it but cookies (redirects not followed,
    its Authorization header its own), so this frames the request head itself, with the headers
    the client would have added (taken from httpx once: the server sees the same request), and
    gives the pool the bytes. URLs are parsed by httpx, the few a destination sends to over and
    over (its base URL) once. Errors are the pool's (httpx's); the answer an ``httpx.Response``.
    A server that sets a cookie (a balancer's affinity, say) gets it back: its answer's cookies go
    into the client's jar, and while the jar holds any, requests go through httpx's client.
    """

    #: at most this many URLs are remembered parsed, those without a query only (a transaction
    #: destination posts to one; a conditional URL carries identifiers, seen once)
    _REMEMBERED = 32

    def __init__(self, transport: LeanTransport, client: httpx.AsyncClient) -> None:
        self.transport = transport
        self._client = client  # its base URL and defaults; sends only what this cannot
        self._base = client.base_url
        probe = client.build_request("POST", self._base, content=b"")
        self._defaults = [  # (lower-case name, the header's line)
            (name.decode("ascii").lower(), _header(name, value))
            for name, value in probe.headers.raw
            if name.lower() not in (b"host", b"content-length", b"content-type")
        ]
        self._timeouts = probe.extensions.get("timeout", {})
        self._urls: dict[str, tuple[_Origin, bytes, httpx.URL]] = {}

    def _target(self, url: str) -> tuple[_Origin, bytes, httpx.URL] | None:
        """(origin, Host header, URL) of ``url``, relative to the base as httpx merges it; None
        for what only httpx's client sends (another scheme)."""
        known = self._urls.get(url)
        if known is not None:
            return known
        full = httpx.URL(url)
        if full.is_relative_url:  # under the base, as httpx's client merges it
            merged = self._base.raw_path + full.raw_path.lstrip(b"/")
            full = self._base.copy_with(raw_path=merged)
        if full.scheme not in ("http", "https") or not full.host:
            return None
        port = full.port or (443 if full.scheme == "https" else 80)
        found = ((full.scheme, full.host, port), full.netloc, full)
        if "?" not in url and len(self._urls) < self._REMEMBERED:
            self._urls[url] = found
        return found

    async def request(
        self, method: str, url: str, *, content: bytes | None, headers: Mapping[str, str]
    ) -> httpx.Response:
        method = method.upper()
        target = self._target(url)
        if target is None or method in ("HEAD", "CONNECT") or self._client.cookies:
            # a server that set a cookie gets it back as it would through httpx: its jar
            return await self._client.request(method, url, content=content, headers=headers)
        origin, host, full = target
        given = {name.lower(): value for name, value in headers.items()}
        lines = [b"%b %b HTTP/1.1" % (_method(method), full.raw_path)]
        if "host" not in given:
            lines.append(b"Host: " + host)
        lines += [line for name, line in self._defaults if name not in given]
        lines += [_header(k.encode("ascii"), v.encode("ascii")) for k, v in headers.items()]
        body = content or b""
        if "content-length" in given:  # the caller's, as httpx sends it, if it is the truth
            if given["content-length"].strip() != str(len(body)):
                raise httpx.LocalProtocolError("Content-Length is not the body's length")
        elif body or method in ("POST", "PUT", "PATCH"):
            lines.append(b"Content-Length: %d" % len(body))
        head = b"\r\n".join(lines) + b"\r\n\r\n"
        response = await self.transport.exchange(origin, head, body, self._timeouts)
        if "set-cookie" in response.headers:  # kept as httpx's client keeps it
            response.request = httpx.Request(method, full)
            self._client.cookies.extract_cookies(response)
        return response
