"""The FHIR REST destination against the stub FHIR server over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from engine.adapters.destination import DeliveryResult, Payload
from engine.adapters.fhir_rest import (
    FhirDestination,
    FhirRestDestination,
    OAuth2ClientCredentials,
    dependency_order,
)
from engine.adapters.http_pool import DirectClient
from engine.adapters.registry import build_destination
from engine.errors import ConfigError
from engine.routes.spec import DestinationSpec
from engine.sim.fhir_server import StubFhirServer, running_stub_fhir
from engine.sim.server_thread import ServerThread

BUNDLES = Path(__file__).resolve().parents[2] / "fixtures" / "fhir"
ADT_A01 = (BUNDLES / "adt_a01.json").read_bytes()


@pytest.fixture(scope="module")
def server() -> Iterator[StubFhirServer]:
    with running_stub_fhir() as s:
        yield s


@pytest.fixture
def stub(server: StubFhirServer) -> StubFhirServer:
    server.state.reset()
    server.state.accepted_tokens = None
    return server


def payload(body: bytes = ADT_A01, kind: str = "fhir-bundle") -> Payload:
    return Payload(
        message_id=42,
        destination="fhir",
        kind=kind,  # type: ignore[arg-type]
        body=body,
        content_type="application/fhir+json",
        idempotency_key="42:fhir",
        control_id="ADT-A01-0001",
    )


def config(base_url: str, **extra: Any) -> FhirDestination:
    return FhirDestination.model_validate({"base_url": base_url, **extra})


def deliver_all(dest: FhirRestDestination, *payloads: Payload) -> list[DeliveryResult]:
    async def run() -> list[DeliveryResult]:
        try:
            return [await dest.deliver(p) for p in payloads]
        finally:
            await dest.close()

    return asyncio.run(run())


def test_transaction_mode_posts_the_bundle_and_is_idempotent(stub: StubFhirServer) -> None:
    spec = DestinationSpec.model_validate({"type": "fhir", "base_url": stub.base_url})
    dest = build_destination("fhir", spec)
    assert isinstance(dest, FhirRestDestination)
    first, second = deliver_all(dest, payload(), payload())
    assert first == DeliveryResult(True, False, "fhir: transaction -> 200")
    assert second.ok
    assert stub.state.count("Patient") == 1 and stub.state.count("Encounter") == 1
    log = stub.state.log
    assert [(e["interaction"], e["idempotency_key"]) for e in log] == [
        ("transaction", "42:fhir")
    ] * 2
    assert log[1]["replayed"]  # the server saw the key again and did not apply it twice
    other = Payload(**{**payload().__dict__, "idempotency_key": "43:fhir"})
    (third,) = deliver_all(FhirRestDestination("fhir", config(stub.base_url)), other)
    assert third.ok and [e["status"] for e in stub.state.log[2]["entry"]] == [200] * 7
    assert stub.state.count("Patient") == 1  # conditional updates: applied again, still one


def test_conditional_mode_sends_each_entry_in_dependency_order(stub: StubFhirServer) -> None:
    dest = FhirRestDestination("fhir", config(stub.base_url, mode="conditional"))
    (result,) = deliver_all(dest, payload())
    assert result == DeliveryResult(True, False, "fhir: 7 entries -> 2xx")
    log = stub.state.log
    assert all(e["interaction"] == "update" for e in log)
    order = [e["entry"][0]["resourceType"] for e in log]
    # the Encounter refers to the Location and Practitioner listed after it in the Bundle
    assert order.index("Encounter") > max(order.index("Location"), order.index("Practitioner"))
    assert order.index("Coverage") > order.index("Organization")
    ids = {e["entry"][0]["resourceType"]: e["entry"][0]["id"] for e in log}
    encounter = stub.state.get("Encounter", ids["Encounter"])
    assert encounter is not None
    assert encounter["subject"]["reference"] == f"Patient/{ids['Patient']}"
    # each entry has its own idempotency key: the payload's plus the entry number
    assert [e["idempotency_key"] for e in log] == [f"42:fhir/{i}" for i in (1, 2, 4, 5, 6, 7, 3)]
    (again,) = deliver_all(
        FhirRestDestination("fhir", config(stub.base_url, mode="conditional")), payload()
    )
    assert again.ok and stub.state.count("Patient") == 1


def test_requests_go_straight_to_the_engines_pool(
    stub: StubFhirServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past httpx's client (engine/adapters/http_pool.py, DirectClient), in both modes."""
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    sent: list[str] = []
    real = DirectClient.request

    async def counted(self: DirectClient, method: str, url: str, **kw: Any) -> httpx.Response:
        sent.append(method)
        return await real(self, method, url, **kw)

    monkeypatch.setattr(DirectClient, "request", counted)
    (one,) = deliver_all(FhirRestDestination("fhir", config(stub.base_url)), payload())
    dest = FhirRestDestination("fhir", config(stub.base_url, mode="conditional"))
    (each,) = deliver_all(dest, payload())
    assert one.ok and each.ok
    assert sent == ["POST"] + ["PUT"] * 7
    assert [e["interaction"] for e in stub.state.log] == ["transaction"] + ["update"] * 7


def _one_entry(method: str, url: str) -> Payload:
    """A conditional-mode Bundle of one Patient sent as ``method`` to ``url``."""
    entry = {
        "fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000001",
        "resource": {"resourceType": "Patient", "identifier": [{"value": "M1"}]},
        "request": {"method": method, "url": url},
    }
    body = json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [entry]})
    return payload(body.encode())


def test_a_bundles_method_cannot_smuggle_a_request(stub: StubFhirServer) -> None:
    """A Bundle received over HTTP is passed on as it came: its ``request.method`` goes into
    the request line. One that holds a line break and a second request after it (which
    would have been sent, with the destination's token, and its answer read as the
    entry's) is refused for good, and nothing reaches the server."""
    smuggled = "DELETE /fhir/Patient/victim HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\nPUT"
    dest = FhirRestDestination("fhir", config(stub.base_url, mode="conditional"))
    (result,) = deliver_all(dest, _one_entry(smuggled, "Patient?identifier=M1"))
    assert (result.ok, result.retryable) == (False, False)
    assert result.detail == "fhir: entry 1 has no FHIR request.method"
    assert stub.state.log == []


@pytest.mark.parametrize(
    ("url", "sent"),
    [
        ("http://127.0.0.2:9/fhir/Patient?identifier=M1", False),  # another server
        ("BASE/Patient?identifier=http://hospital.example/mrn|M1", True),  # under the base
        ("Patient?identifier=http://hospital.example/mrn|M1", True),  # a URL in the query
    ],
)
def test_an_entrys_url_stays_under_the_base(stub: StubFhirServer, url: str, sent: bool) -> None:
    """``entry.request.url`` is relative to the base: an absolute one elsewhere would get the
    destination's credentials; refused for good. Under the base it is taken as relative."""
    dest = FhirRestDestination("fhir", config(stub.base_url, mode="conditional"))
    (result,) = deliver_all(dest, _one_entry("PUT", url.replace("BASE", stub.base_url)))
    assert result.ok is sent
    if not sent:
        assert not result.retryable and "outside the destination's base URL" in result.detail
    assert len(stub.state.log) == (1 if sent else 0)


def test_a_token_holding_a_line_break_fails_for_good(stub: StubFhirServer) -> None:
    """Refused before a byte is sent, and not retried (the same token would be refused again)."""
    cfg = config(stub.base_url, auth={"type": "bearer", "token_env": "FHIR_TOKEN"})
    dest = FhirRestDestination("fhir", cfg, environ={"FHIR_TOKEN": "abc\r\nX-Smuggled: 1"})
    (result,) = deliver_all(dest, payload())
    assert result == DeliveryResult(False, False, "fhir: request not sendable (LocalProtocolError)")
    assert stub.state.log == []


def test_dependency_order_keeps_bundle_order_and_survives_cycles() -> None:
    def entry(url: str, *refs: str) -> dict[str, Any]:
        return {"fullUrl": url, "resource": {"x": [{"reference": r} for r in refs]}}

    assert dependency_order([entry("a", "c"), entry("b"), entry("c", "b")]) == [1, 2, 0]
    assert dependency_order([entry("a", "b"), entry("b", "a"), entry("c")]) == [2, 0, 1]


def test_503_is_retryable_then_recovers(stub: StubFhirServer) -> None:
    stub.state.fail_next(503, 1, retry_after=3)
    dest = FhirRestDestination("fhir", config(stub.base_url))
    failed, ok = deliver_all(dest, payload(), payload())
    assert (failed.ok, failed.retryable, failed.retry_after_s) == (False, True, 3.0)
    assert failed.detail == "fhir: transaction -> 503 (OperationOutcome: transient)"
    assert ok.ok and stub.state.count("Patient") == 1


@pytest.mark.parametrize("status", [408, 429, 500, 502])
def test_other_retryable_statuses(stub: StubFhirServer, status: int) -> None:
    stub.state.fail_next(status)
    (result,) = deliver_all(FhirRestDestination("fhir", config(stub.base_url)), payload())
    assert (result.ok, result.retryable) == (False, True)


def test_400_is_permanent_with_status_and_issue_code(stub: StubFhirServer) -> None:
    batch = json.dumps({"resourceType": "Bundle", "type": "batch"}).encode()
    (result,) = deliver_all(FhirRestDestination("fhir", config(stub.base_url)), payload(batch))
    assert result == DeliveryResult(
        False, False, "fhir: transaction -> 400 (OperationOutcome: not-supported)"
    )


def test_conditional_mode_failure_says_how_far_it_got(stub: StubFhirServer) -> None:
    bundle = json.loads(ADT_A01)
    bundle["entry"][3]["request"]["url"] = "Organization?name=x"
    dest = FhirRestDestination("fhir", config(stub.base_url, mode="conditional"))
    (result,) = deliver_all(dest, payload(json.dumps(bundle).encode()))
    assert not result.ok and not result.retryable
    assert result.detail.startswith("fhir: entry 4 (PUT Organization) -> 400 (OperationOutcome: ")
    assert result.detail.endswith("of 7 entries")
    (bad,) = deliver_all(
        FhirRestDestination("fhir", config(stub.base_url, mode="conditional")), payload(b"not json")
    )
    assert bad == DeliveryResult(False, False, "fhir: payload is not a FHIR Bundle")


def test_timeout_and_connection_refused_are_retryable(stub: StubFhirServer) -> None:
    stub.state.fail_next(503, 1, delay_s=1.0)
    dest = FhirRestDestination("fhir", config(stub.base_url, timeout_s=0.2))
    (slow,) = deliver_all(dest, payload())
    assert (slow.ok, slow.retryable) == (False, True) and slow.detail.startswith("fhir: timeout")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    dest = FhirRestDestination("fhir", config(f"http://127.0.0.1:{closed_port}/fhir"))
    (refused,) = deliver_all(dest, payload())
    assert refused == DeliveryResult(False, True, "fhir: ConnectError")


def test_wrong_payload_kind_is_permanent(stub: StubFhirServer) -> None:
    (result,) = deliver_all(
        FhirRestDestination("fhir", config(stub.base_url)), payload(kind="hl7v2")
    )
    assert result == DeliveryResult(False, False, "fhir: cannot deliver a hl7v2 payload")


# -- authentication ------------------------------------------------------------------------------


def test_bearer_token_from_the_environment_is_sent(stub: StubFhirServer) -> None:
    stub.state.accepted_tokens = {"s3cret"}
    cfg = config(stub.base_url, auth={"type": "bearer", "token_env": "FHIR_TOKEN"})
    dest = FhirRestDestination("fhir", cfg, environ={"FHIR_TOKEN": "s3cret"})
    (result,) = deliver_all(dest, payload())
    assert result.ok and stub.state.authorizations == ["Bearer s3cret"]

    wrong = FhirRestDestination("fhir", cfg, environ={"FHIR_TOKEN": "stale"})
    (refused,) = deliver_all(wrong, payload())
    assert refused.detail.startswith("fhir: transaction -> 401") and not refused.retryable
    assert stub.state.authorizations[1:] == ["Bearer stale"]  # a fixed token is not retried

    with pytest.raises(ConfigError, match="environment variable FHIR_TOKEN is not set"):
        FhirRestDestination("fhir", cfg, environ={})


class TokenEndpoint:
    """A tiny OAuth2 token endpoint (RFC 6749 section 4.4) that tells the stub which tokens work."""

    def __init__(self, stub: StubFhirServer, expires_in: int = 3600) -> None:
        self.stub = stub
        self.expires_in = expires_in
        self.issued: list[str] = []
        self.forms: list[dict[str, str]] = []
        self.app = Starlette(routes=[Route("/token", self.token, methods=["POST"])])

    async def token(self, request: Request) -> JSONResponse:
        form = dict(parse_qsl((await request.body()).decode()))
        self.forms.append(form)
        basic = request.headers.get("authorization", "")
        creds = base64.b64decode(basic.removeprefix("Basic ")).decode() if basic else ""
        if creds != "engine:pa55" or form.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "invalid_client"}, 401)
        token = f"tok-{len(self.issued) + 1}"
        self.issued.append(token)
        self.stub.state.accepted_tokens = {token}  # older tokens stop working
        return JSONResponse(
            {"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in}
        )


@pytest.fixture(scope="module")
def token_server(server: StubFhirServer) -> Iterator[tuple[TokenEndpoint, str]]:
    endpoint = TokenEndpoint(server)
    http = ServerThread(endpoint.app)
    http.start()
    try:
        yield endpoint, f"{http.url}/token"
    finally:
        http.stop()


@pytest.fixture
def token_endpoint(
    stub: StubFhirServer, token_server: tuple[TokenEndpoint, str]
) -> tuple[TokenEndpoint, str]:
    token_server[0].issued.clear()
    token_server[0].forms.clear()
    return token_server


def oauth2_config(stub: StubFhirServer, token_url: str) -> FhirDestination:
    auth = {
        "type": "oauth2",
        "token_url": token_url,
        "client_id": "engine",
        "client_secret_env": "FHIR_SECRET",
        "scope": "system/*.write",
    }
    return config(stub.base_url, auth=auth)


def test_oauth2_token_is_cached_and_refreshed_on_401(
    stub: StubFhirServer, token_endpoint: tuple[TokenEndpoint, str]
) -> None:
    endpoint, token_url = token_endpoint
    stub.state.accepted_tokens = set()
    dest = FhirRestDestination(
        "fhir", oauth2_config(stub, token_url), environ={"FHIR_SECRET": "pa55"}
    )
    auth = dest.auth
    assert isinstance(auth, OAuth2ClientCredentials)

    async def run() -> list[DeliveryResult]:
        out = [await dest.deliver(payload()), await dest.deliver(payload())]
        stub.state.accepted_tokens = set()  # the server forgets our token
        out.append(await dest.deliver(payload()))
        await dest.close()
        return out

    results = asyncio.run(run())
    assert [r.ok for r in results] == [True, True, True]
    assert endpoint.issued == ["tok-1", "tok-2"] and auth.credentials.fetches == 2
    assert endpoint.forms[0] == {"grant_type": "client_credentials", "scope": "system/*.write"}
    assert stub.state.authorizations == [
        "Bearer tok-1",
        "Bearer tok-1",
        "Bearer tok-1",
        "Bearer tok-2",
    ]


def test_oauth2_token_expiry_fetches_a_new_one(
    stub: StubFhirServer, token_endpoint: tuple[TokenEndpoint, str]
) -> None:
    endpoint, token_url = token_endpoint
    dest = FhirRestDestination(
        "fhir", oauth2_config(stub, token_url), environ={"FHIR_SECRET": "pa55"}
    )
    auth = dest.auth
    assert isinstance(auth, OAuth2ClientCredentials)
    now = [1000.0]
    auth.credentials.clock = lambda: now[0]

    async def run() -> None:
        await dest.deliver(payload())
        now[0] += 3600 - 29  # within the 30 s margin before expiry
        await dest.deliver(payload())
        await dest.close()

    asyncio.run(run())
    assert endpoint.issued == ["tok-1", "tok-2"]


def test_oauth2_wrong_secret_is_permanent(
    stub: StubFhirServer, token_endpoint: tuple[TokenEndpoint, str]
) -> None:
    _, token_url = token_endpoint
    dest = FhirRestDestination(
        "fhir", oauth2_config(stub, token_url), environ={"FHIR_SECRET": "wrong"}
    )
    (result,) = deliver_all(dest, payload())
    assert result == DeliveryResult(False, False, "fhir: oauth2 token endpoint -> 401")
    assert stub.state.log == []  # nothing reached the FHIR server
