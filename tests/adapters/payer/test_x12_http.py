"""The x12-http adapter against the HTTP stub payer (and bare peers) over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine.adapters.payer import PayerConfig, PayerRejected, PayerUnavailable
from engine.adapters.payer.core import EDI_X12, PAYLOAD_270, decode_form, encode_form
from engine.adapters.payer.x12_http import X12HttpPayer
from engine.sim.payer.http_server import PayerStubServer, running_payer_stub
from engine.sim.payer.stub import StubPayer
from engine.sim.server_thread import ServerThread
from engine.x12.x271 import read_271
from tests.adapters.payer.conftest import NOW, TRACE, alice, x270

CLIENTS = {"oak-clinic": "pa55"}


@pytest.fixture(scope="module")
def server() -> Iterator[PayerStubServer]:
    payer = StubPayer(clock=lambda: NOW)
    with running_payer_stub(payer=payer, clients=CLIENTS, silent_s=0.5) as s:
        yield s


@pytest.fixture
def stub(server: PayerStubServer) -> PayerStubServer:
    server.state.reset()
    server.state.clients = None
    return server


def config(url: str, **extra: Any) -> PayerConfig:
    return PayerConfig.model_validate(
        {"adapter": "x12-http", "url": url, "sender_id": "OAKCLINIC", "receiver_id": "SYNPAY"}
        | extra
    )


def oauth(stub: PayerStubServer, **extra: Any) -> PayerConfig:
    stub.state.clients = dict(CLIENTS)
    auth = {
        "type": "oauth2",
        "token_url": stub.token_url,
        "client_id": "oak-clinic",
        "client_secret_env": "PAYER_SECRET",
    }
    return config(stub.realtime_url, auth=auth, **extra)


def run(payer: X12HttpPayer, *texts: str, timeout_s: float = 5.0) -> list[str]:
    async def go() -> list[str]:
        try:
            return [await payer.exchange(t, timeout_s=timeout_s) for t in texts]
        finally:
            await payer.close()

    return asyncio.run(go())


def test_core_multipart_round_trip(stub: PayerStubServer) -> None:
    payer = X12HttpPayer("SYNPAY", config(stub.realtime_url))
    (answer,) = run(payer, x270(alice()))
    (result,) = read_271(answer)[0].results
    assert result.matches(TRACE) and result.active is True
    (received,) = stub.state.received
    assert received["content_type"] == "multipart/form-data"
    assert received["PayloadType"] == PAYLOAD_270 and received["ProcessingMode"] == "RealTime"
    assert (received["SenderID"], received["ReceiverID"]) == ("OAKCLINIC", "SYNPAY")
    assert received["CORERuleVersion"] == "2.2.0" and "Payload" not in received
    assert uuid.UUID(received["PayloadID"]).version == 4
    assert received["TimeStamp"].endswith("Z") and len(received["TimeStamp"]) == 20


def test_the_stub_answers_core_in_kind(stub: PayerStubServer) -> None:
    content_type, body = encode_form(
        {
            "PayloadType": PAYLOAD_270,
            "ProcessingMode": "RealTime",
            "PayloadID": "f81d4fae-7dec-41d0-a765-00a0c91e6bf6",
            "TimeStamp": "2026-11-27T18:00:00Z",
            "SenderID": "OAKCLINIC",
            "ReceiverID": "SYNPAY",
            "CORERuleVersion": "2.2.0",
            "Payload": x270(alice()),
        }
    )
    resp = httpx.post(stub.realtime_url, content=body, headers={"Content-Type": content_type})
    assert resp.status_code == 200
    fields = decode_form(resp.headers["content-type"], resp.content)
    assert fields["PayloadType"] == "X12_271_Response_005010X279A1"
    assert fields["PayloadID"] == "f81d4fae-7dec-41d0-a765-00a0c91e6bf6"
    assert (fields["SenderID"], fields["ReceiverID"]) == ("SYNPAY", "OAKCLINIC")
    assert fields["ErrorCode"] == "Success" and fields["Payload"].startswith("ISA*")
    wrong = encode_form({**dict(decode_form(content_type, body)), "PayloadType": "X12_276"})
    resp = httpx.post(stub.realtime_url, content=wrong[1], headers={"Content-Type": wrong[0]})
    assert resp.status_code == 400
    assert decode_form(resp.headers["content-type"], resp.content)["ErrorCode"] == (
        "PayloadTypeNotSupported"
    )


def test_plain_edi_x12_round_trip(stub: PayerStubServer) -> None:
    payer = X12HttpPayer("SYNPAY", config(stub.realtime_url, envelope="plain"))
    (answer,) = run(payer, x270(alice()))
    assert read_271(answer)[0].results[0].active is True
    assert stub.state.received == [{"content_type": EDI_X12}]


def test_oauth2_token_fetched_once_cached_and_refreshed_on_401(stub: PayerStubServer) -> None:
    payer = X12HttpPayer("SYNPAY", oauth(stub), environ={"PAYER_SECRET": "pa55"})
    assert payer.auth is not None

    async def go() -> list[str]:
        out = [await payer.exchange(x270(alice())), await payer.exchange(x270(alice()))]
        stub.state.revoke_tokens()  # the server forgets our token: 401, new token, once more
        out.append(await payer.exchange(x270(alice())))
        await payer.close()
        return out

    answers = asyncio.run(go())
    assert all(read_271(a)[0].results[0].active for a in answers)
    assert payer.auth.credentials.fetches == 2 and stub.state.token_fetches == 2
    assert [r.get("status") for r in stub.state.received] == [None, None, "401", None]


def test_oauth2_token_refreshed_before_it_expires(stub: PayerStubServer) -> None:
    payer = X12HttpPayer("SYNPAY", oauth(stub), environ={"PAYER_SECRET": "pa55"})
    assert payer.auth is not None
    now = [1000.0]
    payer.auth.credentials.clock = lambda: now[0]

    async def go() -> None:
        await payer.exchange(x270(alice()))
        now[0] += 3600 - 29  # within 30 s of expires_in
        await payer.exchange(x270(alice()))
        await payer.close()

    asyncio.run(go())
    assert stub.state.token_fetches == 2
    assert [r.get("status") for r in stub.state.received] == [None, None]  # never a 401


def test_a_wrong_client_secret_is_rejected(stub: PayerStubServer) -> None:
    payer = X12HttpPayer("SYNPAY", oauth(stub), environ={"PAYER_SECRET": "wrong"})
    with pytest.raises(PayerRejected, match="oauth2 token endpoint -> HTTP 401"):
        run(payer, x270(alice()))
    assert stub.state.received == []


def test_401_twice_is_rejected(stub: PayerStubServer) -> None:
    payer = X12HttpPayer("SYNPAY", oauth(stub), environ={"PAYER_SECRET": "pa55"})
    assert payer.auth is not None
    payer.auth.authorization = _fixed_token  # type: ignore[method-assign]
    with pytest.raises(PayerRejected, match="HTTP 401"):
        run(payer, x270(alice()))
    assert len(stub.state.received) == 2


async def _fixed_token(client: httpx.AsyncClient, payer: str) -> str:
    return "Bearer not-a-token"


def test_503_is_unavailable_with_retry_after(stub: PayerStubServer) -> None:
    stub.payer.set_outage("unavailable")
    payer = X12HttpPayer("SYNPAY", config(stub.realtime_url))
    with pytest.raises(
        PayerUnavailable, match=r"HTTP 503 \(CORE ErrorCode ServiceUnavailable\)"
    ) as e:
        run(payer, x270(alice()))
    assert e.value.retry_after_s == 1.0


def test_outage_aaa_42_over_http(stub: PayerStubServer) -> None:
    httpx.post(f"{stub.url}/admin/outage", json={"mode": "aaa42", "payer_id": "SYNPAY"})
    payer = X12HttpPayer("SYNPAY", config(stub.realtime_url))
    (answer,) = run(payer, x270(alice()))
    assert read_271(answer)[0].errors[0].reason.code == "42"
    stats = httpx.get(f"{stub.url}/admin/stats").json()
    assert stats["down_payers"] == {"SYNPAY": "aaa42"} and stats["outcomes"] == {"aaa42": 1}
    assert stats["by_payer"] == {"SYNPAY": 1} and stats["http_requests"] == 1


def test_400_is_rejected(stub: PayerStubServer) -> None:
    payer = X12HttpPayer("SYNPAY", config(stub.realtime_url))
    with pytest.raises(PayerRejected, match=r"HTTP 400 \(CORE ErrorCode PayloadNotX12\)"):
        run(payer, "this is not X12")
    plain = X12HttpPayer("SYNPAY", config(stub.realtime_url, envelope="plain"))
    with pytest.raises(PayerRejected, match=r"HTTP 400$"):
        run(plain, "this is not X12")


def test_timeouts_are_unavailable(stub: PayerStubServer) -> None:
    assert httpx.post(f"{stub.url}/admin/latency", json={"latency_ms": 400}).status_code == 200
    payer = X12HttpPayer("SYNPAY", config(stub.realtime_url))
    # the 0.1 s timeout answers, not the stub's 271 after 0.4 s
    with pytest.raises(PayerUnavailable, match="SYNPAY: (timeout|no answer within)"):
        run(payer, x270(alice()), timeout_s=0.1)
    httpx.post(f"{stub.url}/admin/reset")
    stub.payer.set_outage("silent")
    with pytest.raises(PayerUnavailable):
        run(X12HttpPayer("SYNPAY", config(stub.realtime_url)), x270(alice()), timeout_s=0.1)


def test_connection_refused_is_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    payer = X12HttpPayer("SYNPAY", config(f"http://127.0.0.1:{port}/realtime"))
    with pytest.raises(PayerUnavailable, match="ConnectError"):
        run(payer, x270(alice()))


def test_concurrency_is_limited_per_payer(stub: PayerStubServer) -> None:
    stub.payer.latency_ms = 100
    payer = X12HttpPayer("SYNPAY", config(stub.realtime_url, max_concurrency=2))

    async def go() -> list[str]:
        try:
            return await asyncio.gather(*(payer.exchange(x270(alice())) for _ in range(4)))
        finally:
            await payer.close()

    started = time.monotonic()
    assert len(asyncio.run(go())) == 4
    assert time.monotonic() - started >= 0.2  # two rounds of two


class _Peer:
    """A bare peer answering fixed statuses, for what the stub does not do."""

    def __init__(self) -> None:
        self.status = 200
        self.body = b""
        self.headers: dict[str, str] = {}
        self.app = Starlette(routes=[Route("/rt", self.rt, methods=["POST"])])

    async def rt(self, request: Request) -> Response:
        await request.body()
        return Response(self.body, self.status, headers=self.headers)


@pytest.fixture(scope="module")
def peer() -> Iterator[tuple[_Peer, str]]:
    p = _Peer()
    http = ServerThread(p.app)
    http.start()
    try:
        yield p, f"{http.url}/rt"
    finally:
        http.stop()


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (429, PayerUnavailable),
        (408, PayerUnavailable),
        (500, PayerUnavailable),
        (404, PayerRejected),
        (403, PayerRejected),
        (302, PayerRejected),
    ],
)
def test_status_classification(
    peer: tuple[_Peer, str], status: int, error: type[Exception]
) -> None:
    p, url = peer
    p.status, p.body, p.headers = status, b"", {"Retry-After": "7"}
    with pytest.raises(error, match=f"HTTP {status}"):
        run(X12HttpPayer("SYNPAY", config(url, envelope="plain")), x270(alice()))


def test_an_empty_answer_is_unavailable(peer: tuple[_Peer, str]) -> None:
    p, url = peer
    p.status, p.body, p.headers = 200, b"", {}
    with pytest.raises(PayerUnavailable, match="without an answer"):
        run(X12HttpPayer("SYNPAY", config(url, envelope="plain")), x270(alice()))


def test_payloads_and_member_ids_are_never_logged(
    stub: PayerStubServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    payer = X12HttpPayer("SYNPAY", config(stub.realtime_url))
    run(payer, x270(alice()))
    stub.payer.set_outage("unavailable")
    with pytest.raises(PayerUnavailable):
        run(X12HttpPayer("SYNPAY", config(stub.realtime_url)), x270(alice()))
    logged = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "payer exchange answered" in logged and "payer exchange unavailable" in logged
    for secret in ("XQZ123456789", "TESTPATIENT", "ISA*", "19840229"):
        assert secret not in logged
