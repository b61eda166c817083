"""The stub payer over real HTTP, CAQH CORE real-time style, for tests and ``engine payer-stub``.

Endpoints::

    POST /realtime        a 270: CORE multipart/form-data (PayloadType
                          X12_270_Request_005010X279A1, ProcessingMode RealTime, PayloadID,
                          TimeStamp, SenderID, ReceiverID, CORERuleVersion, Payload), answered in
                          kind (X12_271_Response_005010X279A1, the same PayloadID, ErrorCode
                          Success); or a bare ``application/edi-x12`` body, answered with a bare
                          271
    POST /oauth2/token    the OAuth 2.0 client credentials grant (RFC 6749 section 4.4), when the
                          stub is made with ``clients``; then /realtime needs ``Bearer <token>``
    GET  /health          {"ok": true}

Test switches (not CORE)::

    GET  /admin/stats           requests (in all, by payer ID, by outcome), tokens fetched
    POST /admin/latency         {"latency_ms": 200, "jitter_ms": 50}
    POST /admin/outage          {"mode": "aaa42" | "unavailable" | "silent" | null, "payer_id": ...}
                                (no payer_id: the whole stub; null mode: up again)
    POST /admin/revoke-tokens   every token issued stops working (the next request gets 401)
    POST /admin/reset           up, no latency, counters at zero, tokens revoked

An outage in ``unavailable`` mode answers 503 (with ``Retry-After: 1``); ``silent`` holds the
request for ``silent_s`` seconds (the client's timeout fires first) and then answers 504. An
envelope the stub cannot read gets 400 with a CORE ErrorCode; a body that is not X12 at all,
400. The answers themselves come from :class:`~engine.sim.payer.stub.StubPayer`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engine.adapters.payer.contract import PayerRejected
from engine.adapters.payer.core import (
    CORE_RULE_VERSION,
    EDI_X12,
    PAYLOAD_270,
    PAYLOAD_271,
    PAYLOAD_999,
    PAYLOAD_TA1,
    REAL_TIME,
    CoreEnvelope,
    core_timestamp,
    decode_form,
    encode_form,
)
from engine.sim.payer.roster import load_roster
from engine.sim.payer.stub import StubPayer
from engine.sim.server_thread import ServerThread

__all__ = [
    "PayerStubServer",
    "PayerStubState",
    "create_payer_stub_app",
    "run_payer_stub",
    "running_payer_stub",
]

_MAX_BODY = 5 * 1024 * 1024
_PLAIN_TYPES = frozenset({EDI_X12, "application/x12", "text/plain"})
_PAYLOAD_TYPES = {"ta1": PAYLOAD_TA1, "999": PAYLOAD_999}


@dataclass
class PayerStubState:
    """The HTTP side of the stub: who may get tokens, what came in. Read it under ``lock``."""

    payer: StubPayer
    #: client_id -> secret; None: /realtime needs no token
    clients: dict[str, str] | None = None
    token_ttl_s: int = 3600
    #: how long a ``silent`` outage holds a request
    silent_s: float = 30.0
    tokens: set[str] = field(default_factory=set)
    token_fetches: int = 0
    #: every /realtime request: its content type and CORE fields but Payload (no PHI kept)
    received: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def revoke_tokens(self) -> None:
        with self.lock:
            self.tokens.clear()

    def reset(self) -> None:
        self.payer.reset()
        with self.lock:
            self.tokens.clear()
            self.token_fetches = 0
            self.received.clear()

    def stats(self) -> dict[str, Any]:
        p = self.payer
        with p.lock:
            payer = {
                "requests": p.requests,
                "by_payer": dict(p.requests_by_payer),
                "outcomes": dict(p.outcomes),
                "latency_ms": p.latency_ms,
                "jitter_ms": p.jitter_ms,
                "down": p.down,
                "down_payers": dict(p.down_payers),
            }
        with self.lock:
            return payer | {
                "http_requests": len(self.received),
                "token_fetches": self.token_fetches,
            }


def _core_response(
    status: int,
    request: CoreEnvelope | None,
    error_code: str,
    message: str,
    payload: str = "",
    payload_type: str = PAYLOAD_271,
) -> Response:
    """A CORE multipart response to ``request`` (or to an envelope too broken to read)."""
    envelope = CoreEnvelope(
        payload_type=payload_type,
        processing_mode=REAL_TIME,
        payload_id=request.payload_id if request else "",
        timestamp=core_timestamp(),
        sender_id=request.receiver_id if request else "",
        receiver_id=request.sender_id if request else "",
        core_rule_version=CORE_RULE_VERSION,
        payload=payload,
        error_code=error_code,
        error_message=message,
    )
    content_type, body = encode_form(envelope.fields())
    return Response(body, status, media_type=content_type)


class _Stub:
    def __init__(self, state: PayerStubState) -> None:
        self.state = state

    def _authorized(self, request: Request) -> bool:
        if self.state.clients is None:
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        with self.state.lock:
            return scheme.lower() == "bearer" and token in self.state.tokens

    async def realtime(self, request: Request) -> Response:
        body = await request.body()
        content_type = request.headers.get("content-type", "")
        media = content_type.split(";")[0].strip().lower()
        core: CoreEnvelope | None = None
        record = {"content_type": media}
        if len(body) > _MAX_BODY:
            return Response("request too large", 413)
        if not self._authorized(request):
            with self.state.lock:
                self.state.received.append(record | {"status": "401"})
            return Response("a valid bearer token is required", 401)
        if media == "multipart/form-data":
            try:
                core = CoreEnvelope.from_fields(decode_form(content_type, body))
            except ValueError as exc:
                return _core_response(400, None, "EnvelopeError", str(exc))
            record |= {k: v for k, v in core.fields().items() if k != "Payload"}
            with self.state.lock:
                self.state.received.append(record)
            if core.payload_type != PAYLOAD_270:
                return _core_response(
                    400, core, "PayloadTypeNotSupported", f"expected {PAYLOAD_270}"
                )
            if core.processing_mode != REAL_TIME:
                return _core_response(
                    400, core, "ProcessingModeNotSupported", "this stub is real-time only"
                )
            x270 = core.payload
        elif media in _PLAIN_TYPES:
            with self.state.lock:
                self.state.received.append(record)
            try:
                x270 = body.decode("utf-8")
            except UnicodeDecodeError:
                return Response("the body is not UTF-8 text", 400)
        else:
            return Response(f"expected multipart/form-data or {EDI_X12}", 415)
        payer = self.state.payer
        await asyncio.sleep(payer.delay_s())
        try:
            reply = payer.respond(x270)
        except PayerRejected:
            if core is not None:
                return _core_response(400, core, "PayloadNotX12", "the Payload is not X12")
            return Response("the body is not an X12 interchange", 400)
        if reply.kind == "silent":
            await asyncio.sleep(self.state.silent_s)
            return Response("no answer", 504)
        if reply.kind == "unavailable":
            if core is not None:
                response = _core_response(503, core, "ServiceUnavailable", "the payer is down")
                response.headers["Retry-After"] = "1"
                return response
            return Response("the payer is down", 503, headers={"Retry-After": "1"})
        if core is not None:
            payload_type = _PAYLOAD_TYPES.get(reply.outcome, PAYLOAD_271)
            return _core_response(200, core, "Success", "None", reply.text, payload_type)
        return Response(reply.text, 200, media_type=EDI_X12)

    async def token(self, request: Request) -> Response:
        clients = self.state.clients
        if clients is None:
            return JSONResponse({"error": "unsupported_grant_type"}, 400)
        form = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic":
            try:
                client_id, _, secret = base64.b64decode(value).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return JSONResponse({"error": "invalid_client"}, 401)
        if form.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, 400)
        if not client_id or clients.get(client_id) != secret:
            return JSONResponse({"error": "invalid_client"}, 401)
        with self.state.lock:
            token = f"stub-token-{next(self.state._ids)}"
            self.state.tokens.add(token)
            self.state.token_fetches += 1
        return JSONResponse(
            {"access_token": token, "token_type": "Bearer", "expires_in": self.state.token_ttl_s}
        )

    async def health(self, request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def admin(self, request: Request) -> Response:
        op = request.path_params["op"]
        payer = self.state.payer
        if request.method == "GET":
            if op == "stats":
                return JSONResponse(self.state.stats())
            return JSONResponse({"error": f"unknown admin operation {op}"}, 404)
        try:
            raw = await request.body()
            body = orjson.loads(raw) if raw.strip() else {}
            if not isinstance(body, dict):
                raise TypeError("not an object")
            if op == "latency":
                with payer.lock:
                    payer.latency_ms = int(body.get("latency_ms", 0))
                    payer.jitter_ms = int(body.get("jitter_ms", 0))
            elif op == "outage":
                mode = body.get("mode", "aaa42")
                if mode not in ("aaa42", "unavailable", "silent", None):
                    raise ValueError(f"mode {mode!r}")
                payer.set_outage(mode, body.get("payer_id"))
            elif op == "revoke-tokens":
                self.state.revoke_tokens()
            elif op == "reset":
                self.state.reset()
            else:
                return JSONResponse({"error": f"unknown admin operation {op}"}, 404)
        except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
            return JSONResponse({"error": f"bad admin request ({exc})"}, 400)
        return JSONResponse({"ok": True})


def create_payer_stub_app(
    payer: StubPayer | None = None,
    *,
    clients: Mapping[str, str] | None = None,
    token_ttl_s: int = 3600,
    silent_s: float = 30.0,
) -> Starlette:
    """The stub as an ASGI app; ``app.state.payer_stub`` is its :class:`PayerStubState`.

    ``clients`` (client_id -> secret) turns on OAuth2: /realtime then needs a bearer token from
    /oauth2/token.
    """
    state = PayerStubState(
        payer or StubPayer(),
        dict(clients) if clients is not None else None,
        token_ttl_s,
        silent_s,
    )
    stub = _Stub(state)
    app = Starlette(
        routes=[
            Route("/realtime", stub.realtime, methods=["POST"]),
            Route("/oauth2/token", stub.token, methods=["POST"]),
            Route("/health", stub.health, methods=["GET"]),
            Route("/admin/{op}", stub.admin, methods=["GET", "POST"]),
        ]
    )
    app.state.payer_stub = state
    return app


def run_payer_stub(
    host: str = "127.0.0.1",
    port: int = 8091,
    *,
    roster: Path | None = None,
    latency_ms: int = 0,
    jitter_ms: int = 0,
) -> None:
    """Serve the stub until interrupted (``engine payer-stub``); POST 270s to ``/realtime``."""
    payer = StubPayer(load_roster(roster), latency_ms=latency_ms, jitter_ms=jitter_ms)
    uvicorn.run(create_payer_stub_app(payer), host=host, port=port, log_level="info")


class PayerStubServer(ServerThread):
    """The HTTP stub payer on a free port, in a thread (for tests)."""

    def __init__(
        self,
        payer: StubPayer | None = None,
        *,
        clients: Mapping[str, str] | None = None,
        token_ttl_s: int = 3600,
        silent_s: float = 30.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        app = create_payer_stub_app(
            payer, clients=clients, token_ttl_s=token_ttl_s, silent_s=silent_s
        )
        self.state: PayerStubState = app.state.payer_stub
        self.payer = self.state.payer
        super().__init__(app, host, port)

    @property
    def realtime_url(self) -> str:
        return f"{self.url}/realtime"

    @property
    def token_url(self) -> str:
        return f"{self.url}/oauth2/token"


@contextmanager
def running_payer_stub(**kwargs: Any) -> Iterator[PayerStubServer]:
    """``with running_payer_stub() as stub: ... stub.realtime_url ... stub.payer``."""
    server = PayerStubServer(**kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()
