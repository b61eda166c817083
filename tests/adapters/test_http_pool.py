"""The FHIR destination's connection pool (engine/adapters/http_pool.py) against a real socket
server on the loopback: requests read by h11 (another library's HTTP/1.1 parser, the server
side), answers written byte for byte so that each framing and each misbehaviour is the one
the test names."""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest

from engine.adapters.fhir_http import fhir_client, lean_transport
from engine.adapters.fhir_rest import FhirDestination, FhirRestDestination
from engine.adapters.http_pool import DirectClient, LeanTransport

Answer = Callable[[h11.Request, bytes, int], Awaitable[bytes | None]]


class Server:
    """Reads each request with h11 and writes what ``answer`` returns (None: close without
    answering); counts connections and keeps the bodies it read."""

    def __init__(self, answer: Answer, tls: ssl.SSLContext | None = None) -> None:
        self.answer = answer
        self.tls = tls
        self.connections = 0
        self.bodies: list[bytes] = []
        self.requests: list[h11.Request] = []
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for w in self._writers:
            w.close()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"https://localhost:{port}" if self.tls else f"http://127.0.0.1:{port}"

    def close_idle(self) -> None:
        """Close every connection from the server's side (a keep-alive time-out)."""
        for w in self._writers:
            w.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        parser = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = await self._read(parser, reader)
                if request is None:
                    return
                self.requests.append(request)
                self.bodies.append(body)
                answer = await self.answer(request, body, self.connections)
                if answer is None:
                    writer.close()
                    return
                writer.write(answer)
                await writer.drain()
                if answer.startswith(b"HTTP/1.0"):  # its body ends with the connection
                    writer.close()
                    return
                parser = h11.Connection(h11.SERVER)  # the answers bypass h11: a fresh one each
        except (ConnectionError, h11.RemoteProtocolError):
            return

    @staticmethod
    async def _read(
        parser: h11.Connection, reader: asyncio.StreamReader
    ) -> tuple[h11.Request | None, bytes]:
        request: h11.Request | None = None
        body = b""
        while True:
            event = parser.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                if not data:
                    return None, b""
                parser.receive_data(data)
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return request, body


def ok(body: bytes = b'{"resourceType":"Bundle"}', extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%b\r\n%b" % (len(body), extra, body)


def client(transport: LeanTransport, timeout: float = 5.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=transport, timeout=timeout)


def lean(**kw: object) -> LeanTransport:
    return LeanTransport(ssl_context=ssl.create_default_context(), **kw)  # type: ignore[arg-type]


def sync(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """The test run to its end in an event loop of its own."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


def echo_after(seconds: float) -> Answer:
    """An answer that sends the request's body back after ``seconds``."""

    async def answer(_r: h11.Request, body: bytes, _n: int) -> bytes:
        await asyncio.sleep(seconds)
        return ok(body)

    return answer


@sync
async def test_keeps_connections_alive_within_its_limit() -> None:
    async with Server(echo_after(0.001)) as server:
        async with client(lean(max_connections=3)) as c:

            async def one(i: int) -> bytes:
                r = await c.post(server.url + "/fhir", content=b"entry %d" % i)
                assert r.status_code == 200
                return r.content

            got = await asyncio.gather(*(one(i) for i in range(60)))
    assert got == [b"entry %d" % i for i in range(60)]
    assert server.connections == 3
    assert sorted(server.bodies) == sorted(b"entry %d" % i for i in range(60))


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        b"HTTP/1.1 201 Created\r\nContent-Length: 11\r\n\r\nhello world",
        b"HTTP/1.0 201 Created\r\n\r\nhello world",  # ends with the connection
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nContent-Length: 11\r\n\r\nhello world",
    ],
    ids=["chunked", "length", "until-close", "interim-100"],
)
@sync
async def test_reads_each_framing(raw: bytes) -> None:
    async def answer(_r: h11.Request, _b: bytes, _n: int) -> bytes:
        return raw

    async with Server(answer) as server:
        async with client(lean()) as c:
            first = await c.post(server.url + "/fhir", content=b"{}")
            second = await c.post(server.url + "/fhir", content=b"{}")
    for r in (first, second):
        assert (r.status_code, r.content, r.reason_phrase) == (201, b"hello world", "Created")


@sync
async def test_a_connection_the_server_closed_while_idle_is_replaced() -> None:
    async def answer(_r: h11.Request, body: bytes, _n: int) -> bytes:
        return ok(body)

    async with Server(answer) as server:
        async with client(lean()) as c:
            assert (await c.post(server.url, content=b"one")).content == b"one"
            server.close_idle()
            await asyncio.sleep(0.05)
            assert (await c.post(server.url, content=b"two")).content == b"two"
    assert server.connections == 2


@sync
async def test_a_reused_connection_lost_as_the_request_went_is_tried_once_more() -> None:
    """The server took the request on the kept-alive connection and closed it without a
    word (its keep-alive time-out raced ours): sent again on a new connection."""

    async def answer(_r: h11.Request, body: bytes, n: int) -> bytes | None:
        if n == 1 and body == b"two":
            return None
        return ok(body)

    async with Server(answer) as server:
        async with client(lean()) as c:
            assert (await c.post(server.url, content=b"one")).content == b"one"
            assert (await c.post(server.url, content=b"two")).content == b"two"
    assert server.bodies == [b"one", b"two", b"two"]


@sync
async def test_a_new_connection_closed_without_an_answer_is_an_error() -> None:
    async def answer(_r: h11.Request, _b: bytes, _n: int) -> None:
        return None

    async with Server(answer) as server:
        async with client(lean()) as c:
            with pytest.raises(httpx.RemoteProtocolError, match="without answering"):
                await c.post(server.url, content=b"{}")
    assert server.bodies == [b"{}"]  # sent once: a fresh connection is not retried


@sync
async def test_an_answer_cut_mid_body_is_an_error() -> None:
    async def answer(_r: h11.Request, _b: bytes, _n: int) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part"

    async with Server(answer) as server:
        server_answer = server.answer

        async def then_close(r: h11.Request, b: bytes, n: int) -> bytes | None:
            server._writers[-1].write(await server_answer(r, b, n))  # type: ignore[arg-type]
            return None

        server.answer = then_close
        async with client(lean()) as c:
            with pytest.raises(httpx.RemoteProtocolError, match="mid-answer"):
                await c.post(server.url, content=b"{}")


@sync
async def test_a_malformed_answer_is_a_protocol_error() -> None:
    async def answer(_r: h11.Request, _b: bytes, _n: int) -> bytes:
        return b"SMTP ready\r\n\r\n"

    async with Server(answer) as server:
        async with client(lean()) as c:
            with pytest.raises(httpx.RemoteProtocolError, match="malformed"):
                await c.post(server.url, content=b"{}")


@sync
async def test_an_answer_over_the_limit_is_refused() -> None:
    big = b"x" * 5000

    async def answer(_r: h11.Request, _b: bytes, _n: int) -> bytes:
        return ok(big)

    async with Server(answer) as server:
        async with client(lean(max_response_bytes=4096)) as c:
            with pytest.raises(httpx.ReadError, match="larger than 4096"):
                await c.post(server.url, content=b"{}")
            small = lean(max_response_bytes=5000)
            async with client(small) as c2:
                assert (await c2.post(server.url, content=b"{}")).content == big


@sync
async def test_a_silent_server_is_a_read_timeout_and_the_pool_recovers() -> None:
    async def answer(_r: h11.Request, body: bytes, _n: int) -> bytes:
        if body == b"slow":
            await asyncio.sleep(2)
        return ok(body)

    async with Server(answer) as server:
        async with client(lean(max_connections=1), timeout=0.3) as c:
            with pytest.raises(httpx.ReadTimeout):
                await c.post(server.url, content=b"slow")
            assert (await c.post(server.url, content=b"next")).content == b"next"


@sync
async def test_waiting_for_a_connection_is_bounded_by_the_pool_timeout() -> None:
    async with Server(echo_after(0.5)) as server:
        timeout = httpx.Timeout(5.0, pool=0.1)
        async with httpx.AsyncClient(transport=lean(max_connections=1), timeout=timeout) as c:
            first = asyncio.ensure_future(c.post(server.url, content=b"a"))
            await asyncio.sleep(0.05)
            with pytest.raises(httpx.PoolTimeout):
                await c.post(server.url, content=b"b")
            assert (await first).content == b"a"
            assert (await c.post(server.url, content=b"c")).content == b"c"
    assert server.connections == 1


@sync
async def test_a_refused_connection_is_a_connect_error() -> None:
    async with Server(lambda *_: asyncio.sleep(0, ok())) as server:
        url = server.url
    await asyncio.sleep(0.05)
    async with client(lean()) as c:
        with pytest.raises(httpx.ConnectError):
            await c.post(url, content=b"{}")


@sync
async def test_a_streamed_body_goes_chunked() -> None:
    async def answer(r: h11.Request, body: bytes, _n: int) -> bytes:
        return ok(b"%d" % len(body))

    async def parts() -> AsyncIterator[bytes]:
        for i in range(50):
            yield b"%04d" % i * 1000

    async with Server(answer) as server:
        async with client(lean()) as c:
            r = await c.post(server.url, content=parts())
    assert r.content == b"200000"
    assert server.bodies[0] == b"".join(b"%04d" % i * 1000 for i in range(50))
    assert (b"transfer-encoding", b"chunked") in server.requests[0].headers


@sync
async def test_head_goes_through_httpcore() -> None:
    async def answer(r: h11.Request, _b: bytes, _n: int) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n"  # a HEAD answer has no body

    async with Server(answer) as server:
        async with client(lean()) as c:
            r = await c.head(server.url + "/metadata")
    assert (r.status_code, r.content) == (200, b"")
    assert server.requests[0].method == b"HEAD"


@sync
async def test_closed_transport_refuses() -> None:
    t = lean()
    await t.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await t.handle_async_request(httpx.Request("POST", "http://127.0.0.1:9/", content=b""))


def test_the_fhir_destination_uses_it_unless_the_environment_names_a_proxy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Behind a proxy (HTTPS_PROXY and the like) httpx proxies only through its own transport,
    so the FHIR client keeps httpcore there; tests that pass a transport keep theirs."""
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    config = FhirDestination(base_url="http://127.0.0.1:9/fhir")
    made = FhirRestDestination("fhir", config)
    assert isinstance(made._http()._transport, LeanTransport)
    assert made._direct is not None and made._direct.transport is made._http()._transport
    assert not isinstance(
        fhir_client(timeout_s=1, verify=True, transport=None)._transport, LeanTransport
    )
    mock = httpx.MockTransport(lambda r: httpx.Response(200))
    tested = FhirRestDestination("fhir", config, transport=mock)
    assert tested._http()._transport is mock and tested._direct is None
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    behind = FhirRestDestination("fhir", config)
    assert not isinstance(behind._http()._transport, LeanTransport)
    assert behind._direct is None and lean_transport(True) is None


def test_a_route_that_checks_no_certificate_gets_a_context_that_checks_none() -> None:
    from engine.adapters.fhir_http import _context, tls_verify

    assert _context(False).verify_mode == ssl.CERT_NONE
    assert _context(False).check_hostname is False
    assert _context(tls_verify(True)).verify_mode == ssl.CERT_REQUIRED


@sync
async def test_bytes_after_the_answer_are_not_read_as_the_next_ones() -> None:
    """A server that writes a second answer after the first: the first is the request's, the
    connection is not used again (the surplus would be taken for the next request's answer)."""

    async def answer(_r: h11.Request, body: bytes, _n: int) -> bytes:
        return ok(body) + b"HTTP/1.1 500 Oops\r\nContent-Length: 4\r\n\r\nlate"

    async with Server(answer) as server:
        async with client(lean()) as c:
            first = await c.post(server.url, content=b"one")
            second = await c.post(server.url, content=b"two")
    assert (first.status_code, first.content) == (200, b"one")
    assert (second.status_code, second.content) == (200, b"two")
    assert server.connections == 2


@sync
async def test_a_connection_that_finishes_after_aclose_is_closed_not_kept() -> None:
    """A request still under way when the transport is closed: its connection is closed when
    it ends, not put back where nothing would ever close it."""
    async with Server(echo_after(0.2)) as server:
        t = lean()
        async with httpx.AsyncClient(transport=t, timeout=5) as c:
            under_way = asyncio.ensure_future(c.post(server.url, content=b"late"))
            await asyncio.sleep(0.05)
            await t.aclose()
            assert (await under_way).content == b"late"
            assert t._idle == {}
            assert t._open == {("http", "127.0.0.1", int(server.url.rsplit(":", 1)[1])): 0}


async def _sockets_after_aclose(server: Server, t: LeanTransport, requests: int) -> list[int]:
    """The file numbers of the pool's sockets as they are the moment ``aclose`` returns."""
    async with httpx.AsyncClient(transport=t, timeout=5) as c:
        await asyncio.gather(*(c.get(server.url) for _ in range(requests)))
        sockets = [
            conn.transport.get_extra_info("socket")
            for conns in t._idle.values()
            for conn in conns
            if conn.transport is not None
        ]
        assert sockets
        await t.aclose()
        return [s.fileno() for s in sockets]


@sync
async def test_aclose_returns_once_every_socket_is_closed() -> None:
    """asyncio closes a socket a loop turn after ``close()``: aclose waits for it, so a caller
    that ends its loop next (``asyncio.run``) leaves no socket to the garbage collector."""
    async with Server(lambda *_: asyncio.sleep(0, ok())) as server:
        assert set(await _sockets_after_aclose(server, lean(), 3)) == {-1}


def test_aclose_waits_for_tls_goodbyes(pki: Path) -> None:
    """Over TLS a close is a close_notify and its answer first (the socket outlived an
    ``asyncio.run`` in CI, found by the garbage collector in a later test)."""
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(pki / "server.crt", pki / "server.key")
    trusting = ssl.create_default_context(cafile=str(pki / "ca.crt"))

    async def run() -> list[int]:
        async with Server(lambda *_: asyncio.sleep(0, ok()), tls=served) as server:
            return await _sockets_after_aclose(server, LeanTransport(ssl_context=trusting), 2)

    assert set(asyncio.run(run())) == {-1}


# -- DirectClient: the FHIR destination's requests, straight to the pool -------------------------


def _both(base: str) -> tuple[httpx.AsyncClient, DirectClient]:
    """httpx's client over the pool, as the FHIR destination makes it, and the direct client
    the destination sends through (the same client's base URL and headers)."""
    t = LeanTransport(ssl_context=ssl.create_default_context())
    c = fhir_client(base_url=base + "/fhir/", timeout_s=5, verify=True, transport=t)
    return c, DirectClient(t, c)


@sync
async def test_direct_requests_are_the_ones_httpx_would_send() -> None:
    """Method, target, headers and body as h11 reads them on the server: the same through
    either path, for a POST to the base, a conditional PUT under it, a GET with no body."""
    async with Server(echo_after(0)) as server:
        c, direct = _both(server.url)
        asks: list[tuple[str, str, bytes | None]] = [
            ("POST", server.url + "/fhir", b'{"resourceType":"Bundle"}'),
            ("PUT", "Patient?identifier=urn:mrn|M1&beneficiary=Patient/7", b"{}"),
            ("GET", "Patient/7", None),
        ]
        for method, url, body in asks:
            headers = {"Idempotency-Key": "k/1", "Content-Type": "application/fhir+json"}
            if body is None:
                del headers["Content-Type"]
            via_httpx = await c.request(method, url, content=body, headers=headers)
            via_direct = await direct.request(method, url, content=body, headers=headers)
            assert via_httpx.status_code == via_direct.status_code == 200
            assert via_httpx.content == via_direct.content == (body or b"")
        await c.aclose()
    first, second = server.requests[0::2], server.requests[1::2]
    assert [r.target for r in first] == [
        b"/fhir",
        b"/fhir/Patient?identifier=urn:mrn|M1&beneficiary=Patient/7",
        b"/fhir/Patient/7",
    ]
    for a, b in zip(first, second, strict=True):
        assert (a.method, a.target, sorted(a.headers)) == (b.method, b.target, sorted(b.headers))
    assert b"content-length" not in dict(first[2].headers)
    assert server.bodies[0::2] == server.bodies[1::2]


@sync
async def test_a_header_given_replaces_the_clients_default() -> None:
    """An Accept or a Content-Length the caller gives is sent once, the caller's (a second
    Content-Length makes the request invalid: uvicorn answers 400)."""
    heads: list[bytes] = []
    async with Server(echo_after(0)) as server:
        c, direct = _both(server.url)
        exchange = direct.transport.exchange

        async def seen(origin: Any, head: bytes, *rest: Any) -> httpx.Response:
            heads.append(head)
            return await exchange(origin, head, *rest)

        direct.transport.exchange = seen  # type: ignore[method-assign]
        await direct.request("GET", "metadata", content=None, headers={"accept": "text/plain"})
        framed = {"Content-Length": "2"}
        answer = await direct.request("POST", "Binary", content=b"{}", headers=framed)
        await c.aclose()
    accepts = [v for n, v in server.requests[0].headers if n == b"accept"]
    assert accepts == [b"text/plain"]
    assert heads[1].lower().count(b"content-length") == 1 and answer.content == b"{}"


@sync
@pytest.mark.parametrize("value", ["token\r\nX-Smuggled: 1", "a\nb", "a\x00b"])
async def test_a_header_holding_a_line_break_is_refused_before_anything_is_sent(
    value: str,
) -> None:
    """A token or key with a line break in it would add a header of its own (a smuggled
    request, even): refused on both paths, and nothing reaches the server."""
    async with Server(echo_after(0)) as server:
        c, direct = _both(server.url)
        headers = {"Authorization": f"Bearer {value}"}
        with pytest.raises(httpx.LocalProtocolError, match="line break or NUL"):
            await direct.request("POST", "", content=b"{}", headers=headers)
        with pytest.raises(httpx.LocalProtocolError, match="line break or NUL"):
            await c.request("POST", "", content=b"{}", headers=headers)
        await c.aclose()
    assert server.requests == []


@sync
async def test_direct_requests_use_the_pools_connections_and_its_errors() -> None:
    """Kept alive like httpx's (one connection for requests one after another), and a server
    that goes silent is httpx's ReadTimeout, which the destination retries."""
    async with Server(echo_after(0)) as server:
        t = LeanTransport(ssl_context=ssl.create_default_context())
        c = fhir_client(base_url=server.url + "/", timeout_s=0.2, verify=True, transport=t)
        direct = DirectClient(t, c)
        for _ in range(3):
            await direct.request("POST", "", content=b"{}", headers={})
        assert server.connections == 1
        server.answer = echo_after(1.0)
        with pytest.raises(httpx.ReadTimeout):
            await direct.request("POST", "", content=b"{}", headers={})
        await c.aclose()


@sync
@pytest.mark.parametrize(
    "method", ["DELETE /fhir/Patient/1 HTTP/1.1\r\nHost: x\r\n\r\nPUT", "PUT X", "PÜT"]
)
async def test_a_method_that_is_no_token_is_refused_on_both_paths(method: str) -> None:
    async with Server(echo_after(0)) as server:
        c, direct = _both(server.url)
        with pytest.raises(httpx.LocalProtocolError, match="not an HTTP token"):
            await direct.request(method, "Patient", content=b"{}", headers={})
        with pytest.raises(httpx.LocalProtocolError, match="not an HTTP token"):
            await c.request(method, "Patient", content=b"{}")
        await c.aclose()
    assert server.requests == []


@sync
@pytest.mark.parametrize(
    ("headers", "content", "refusal"),
    [
        ({"X-A: evil": "v"}, b"{}", "not an HTTP token"),
        ({"X A": "v"}, b"{}", "not an HTTP token"),
        ({"": "v"}, b"{}", "not an HTTP token"),
        # a shorter length would leave the rest of the body to be read as the next request
        ({"Content-Length": "2"}, b"{}GET /x HTTP/1.1", "not the body's length"),
    ],
)
async def test_a_header_name_no_token_or_a_false_length_is_refused(
    headers: dict[str, str], content: bytes, refusal: str
) -> None:
    async with Server(echo_after(0)) as server:
        c, direct = _both(server.url)
        with pytest.raises(httpx.LocalProtocolError, match=refusal):
            await direct.request("POST", "", content=content, headers=headers)
        await c.aclose()
    assert server.requests == []


@sync
async def test_a_callers_host_is_sent_once_and_the_method_upper_case() -> None:
    async with Server(echo_after(0)) as server:
        c, direct = _both(server.url)
        await direct.request("put", "Patient/1", content=b"{}", headers={"Host": "fhir.example"})
        await c.aclose()
    (request,) = server.requests
    assert request.method == b"PUT"
    assert [v for n, v in request.headers if n == b"host"] == [b"fhir.example"]


@sync
async def test_a_cookie_the_server_sets_comes_back_as_through_httpx() -> None:
    """A balancer's affinity cookie: kept in the client's jar and sent on the next request."""

    async def answer(_r: h11.Request, body: bytes, _n: int) -> bytes:
        return ok(body, b"Set-Cookie: affinity=node7; Path=/\r\n")

    async with Server(answer) as server:
        c, direct = _both(server.url)
        for _ in range(2):
            await direct.request("POST", "", content=b"{}", headers={})
        await c.aclose()
    cookies = [[v for n, v in r.headers if n == b"cookie"] for r in server.requests]
    assert cookies == [[], [b"affinity=node7"]]
