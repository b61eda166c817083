"""A stub Epic that enforces SMART Backend Services (real HTTP, loopback, in memory).

SMART App Launch IG, Backend Services, and RFC 7523 as Epic applies them:

* ``GET {base}/.well-known/smart-configuration``: the token endpoint, ``private_key_jwt`` client
  authentication, RS384 and ES384;
* ``POST /oauth2/token`` (form: ``grant_type=client_credentials``, ``client_assertion_type``
  jwt-bearer, ``client_assertion``, ``scope``): the assertion's key is fetched from the registered
  client's JWKS URL over HTTP and chosen by ``kid``; ``alg`` RS384/ES384 only; ``iss`` = ``sub`` =
  the registered client id; ``aud`` = this token URL; ``exp`` in the future and at most five
  minutes after ``iat``; a ``jti`` seen before is a replay. Answers ``{access_token, token_type,
  expires_in, scope}`` or 400/401 with an OAuth error (RFC 6749 section 5.2);
* the FHIR API under ``{base}`` answers 401 without a token it issued and has not expired:
  Epic's reads and writes (CapabilityStatement, Patient, Appointment and Coverage search,
  DocumentReference and Binary create: :mod:`engine.sim.epic_fhir`) in front of the stub FHIR
  server's handlers and storage (:mod:`engine.sim.fhir_server`: reads by id). The demo patients,
  their coverages and appointments the next two business days are there from the start.

Test switches: :meth:`StubEpicState.register`, :meth:`StubEpicState.revoke_tokens` (the next FHIR
call answers 401), :meth:`StubEpicState.fail_token_next`, ``token_delay_s`` (a slow token
endpoint); ``token_requests`` counts token calls; :meth:`StubEpicState.fail_next` (the next N FHIR
requests answer a status, with Retry-After, or after a delay); :meth:`StubEpicState.grant_token`.
The FHIR stub's ``$fail``/``$log``/``$reset`` need no token. Started with ``admin=True``
(``engine stub-epic --admin``), ``POST /admin/fail`` takes ``{"status", "count", "retry_after",
"delay_s"}`` and ``GET /admin/stats`` gives the counts (never on by default: it needs no token).

Incomplete: no ``jku`` handling (only the registered JWKS URL is fetched); scopes are not
enforced.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from typing import Any
from urllib.parse import parse_qs

import httpx
import orjson
import uvicorn
from jose import jwt
from jose.exceptions import ExpiredSignatureError, JWTClaimsError, JWTError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from engine.sim.epic_fhir import MRN_SYSTEM, EpicData, business_days, epic_fhir_routes
from engine.sim.fhir_server import Failure, StubFhirState, create_stub_fhir_app, take_failure
from engine.sim.server_thread import ServerThread

__all__ = [
    "MRN_SYSTEM",
    "StubEpicServer",
    "StubEpicState",
    "business_days",
    "create_stub_epic_app",
    "run_stub_epic",
    "running_stub_epic",
]

FHIR_BASE = "/api/FHIR/R4"
TOKEN_PATH = "/oauth2/token"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ALGORITHMS = ("RS384", "ES384")
MAX_ASSERTION_S = 300
MAX_FORM_BYTES = 64 * 1024


class _OAuthError(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


@dataclass
class StubEpicState:
    """The stub's memory: registered clients, issued tokens, seen ``jti``s, the FHIR data."""

    fhir: StubFhirState = field(default_factory=StubFhirState)
    #: client id -> its registered JWKS URL
    clients: dict[str, str] = field(default_factory=dict)
    #: access token -> when it expires (time.time())
    tokens: dict[str, float] = field(default_factory=dict)
    seen_jti: set[str] = field(default_factory=set)
    token_requests: int = 0
    #: how many tokens were issued
    tokens_issued: int = 0
    expires_in: int = 300
    #: how long the token endpoint takes to answer (a slow EHR)
    token_delay_s: float = 0.0
    #: the refusals of the token endpoint's next requests: (status, OAuth error)
    token_failures: list[tuple[int, str]] = field(default_factory=list)
    #: the injected answers of the FHIR API's next requests (:meth:`fail_next`)
    failures: list[Failure] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Epic's side of the FHIR data (counts, Binary support), over ``fhir``
    data: EpicData = field(init=False)

    def __post_init__(self) -> None:
        self.data = EpicData(self.fhir)

    @property
    def creates_by_hash(self) -> Counter[str]:
        """DocumentReferences created per SHA-256 of their content."""
        return self.data.creates_by_hash

    @property
    def binary_creates(self) -> int:
        return self.data.binary_creates

    @property
    def binary_supported(self) -> bool:
        return self.data.binary_supported

    @binary_supported.setter
    def binary_supported(self, value: bool) -> None:
        self.data.binary_supported = value

    def reset_documents(self) -> None:
        self.data.reset_documents()

    def fail_next(
        self, status: int, count: int = 1, *, retry_after: int | None = None, delay_s: float = 0.0
    ) -> None:
        """The next ``count`` FHIR requests answer ``status`` (with Retry-After when given),
        after ``delay_s``; status 200 only delays them."""
        with self.lock:
            self.failures.append(Failure(status, count, delay_s, retry_after))

    def take_failure(self) -> Failure | None:
        with self.lock:
            return take_failure(self.failures)

    def grant_token(self) -> str:
        """A live access token without the OAuth dance (tests of the FHIR API only)."""
        access = secrets.token_urlsafe(24)
        with self.lock:
            self.tokens[access] = time.time() + self.expires_in
        return access

    def register(self, client_id: str, jwks_url: str) -> None:
        with self.lock:
            self.clients[client_id] = jwks_url

    def revoke_tokens(self) -> None:
        """Every token issued so far stops working (the next FHIR call answers 401)."""
        with self.lock:
            self.tokens.clear()

    def fail_token_next(self, status: int = 400, error: str = "invalid_client", n: int = 1) -> None:
        with self.lock:
            self.token_failures.extend([(status, error)] * n)

    def token_valid(self, token: str) -> bool:
        with self.lock:
            return self.tokens.get(token, 0.0) > time.time()


def _oauth_error(exc: _OAuthError) -> Response:
    body = {"error": exc.error, "error_description": exc.description}
    headers = {"Cache-Control": "no-store"}
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Bearer error="invalid_client"'
    return JSONResponse(body, exc.status, headers=headers)


class _Epic:
    def __init__(self, state: StubEpicState) -> None:
        self.state = state

    async def smart_configuration(self, request: Request) -> Response:
        origin = f"{request.url.scheme}://{request.url.netloc}"
        return JSONResponse(
            {
                "token_endpoint": origin + TOKEN_PATH,
                "token_endpoint_auth_methods_supported": ["private_key_jwt"],
                "token_endpoint_auth_signing_alg_values_supported": list(ALGORITHMS),
                "grant_types_supported": ["client_credentials"],
                "scopes_supported": ["system/*.read", "system/*.write", "system/*.rs"],
                "capabilities": ["client-confidential-asymmetric"],
            }
        )

    async def token(self, request: Request) -> Response:
        with self.state.lock:
            self.state.token_requests += 1
            failure = self.state.token_failures.pop(0) if self.state.token_failures else None
            delay = self.state.token_delay_s
        if delay > 0:
            await asyncio.sleep(delay)
        if failure is not None:
            return _oauth_error(_OAuthError(failure[0], failure[1], "injected failure"))
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            return _oauth_error(_OAuthError(400, "invalid_request", "form larger than 64 KiB"))
        form = {k: v[0] for k, v in parse_qs(body.decode("latin-1")).items()}
        token_url = f"{request.url.scheme}://{request.url.netloc}{TOKEN_PATH}"
        try:
            if form.get("grant_type") != "client_credentials":
                raise _OAuthError(400, "unsupported_grant_type", "client_credentials only")
            if form.get("client_assertion_type") != ASSERTION_TYPE:
                raise _OAuthError(
                    400, "invalid_request", "client_assertion_type must be jwt-bearer"
                )
            assertion = form.get("client_assertion")
            if not assertion:
                raise _OAuthError(400, "invalid_request", "no client_assertion")
            await self.verify(assertion, token_url)
        except _OAuthError as exc:
            return _oauth_error(exc)
        access = secrets.token_urlsafe(24)
        with self.state.lock:
            self.state.tokens[access] = time.time() + self.state.expires_in
            self.state.tokens_issued += 1
            expires_in = self.state.expires_in
        scope = form.get("scope", "")
        return JSONResponse(
            {
                "access_token": access,
                "token_type": "bearer",
                "expires_in": expires_in,
                "scope": scope,
            },
            headers={"Cache-Control": "no-store"},
        )

    async def verify(self, assertion: str, token_url: str) -> dict[str, Any]:
        """The assertion's claims once every rule holds; else an :class:`_OAuthError`."""
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.get_unverified_claims(assertion)
        except JWTError as exc:
            raise _OAuthError(400, "invalid_request", "client_assertion is not a JWT") from exc
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALGORITHMS:
            raise _OAuthError(400, "invalid_client", f"alg {alg!r} not allowed (RS384, ES384)")
        client_id = unverified.get("iss")
        with self.state.lock:
            jwks_url = self.state.clients.get(client_id) if isinstance(client_id, str) else None
        if jwks_url is None:
            raise _OAuthError(400, "invalid_client", "iss is not a registered client")
        key = await self._key(jwks_url, kid)
        try:
            claims: dict[str, Any] = jwt.decode(
                assertion,
                key,
                algorithms=[alg],
                audience=token_url,
                issuer=client_id,
                options={"require_exp": True, "require_iat": True, "require_jti": True},
            )
        except ExpiredSignatureError as exc:
            raise _OAuthError(400, "invalid_client", "client_assertion expired") from exc
        except JWTClaimsError as exc:
            raise _OAuthError(400, "invalid_client", f"claims refused: {exc}") from exc
        except JWTError as exc:
            raise _OAuthError(400, "invalid_client", "signature does not verify") from exc
        if claims.get("sub") != client_id:
            raise _OAuthError(400, "invalid_client", "sub must equal iss (the client id)")
        if int(claims["exp"]) - int(claims["iat"]) > MAX_ASSERTION_S:
            raise _OAuthError(400, "invalid_client", "exp more than 5 minutes after iat")
        jti = str(claims["jti"])
        with self.state.lock:
            if jti in self.state.seen_jti:
                raise _OAuthError(400, "invalid_client", "jti already used (replay)")
            self.state.seen_jti.add(jti)
        return claims

    async def _key(self, jwks_url: str, kid: object) -> dict[str, Any]:
        try:
            async with httpx.AsyncClient(timeout=5.0) as client:
                resp = await client.get(jwks_url)
            keys = orjson.loads(resp.content)["keys"] if resp.status_code == 200 else []
        except (httpx.HTTPError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise _OAuthError(400, "invalid_client", "the client's JWKS cannot be read") from exc
        for key in keys if isinstance(keys, list) else []:
            if isinstance(key, dict) and key.get("kid") == kid:
                return key
        raise _OAuthError(400, "invalid_client", "no key with this kid in the client's JWKS")


class _TokenGate:
    """The FHIR API behind the stub's bearer tokens (401 without a live one; ``metadata`` is
    open, as a FHIR server's CapabilityStatement is), after any injected failure."""

    def __init__(self, app: ASGIApp, state: StubEpicState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "/$" not in scope["path"]:
            failure = self.state.take_failure()
            if failure is not None:
                if failure.delay_s:
                    await asyncio.sleep(failure.delay_s)
                if failure.status != 200:
                    await _injected(failure)(scope, receive, send)
                    return
            if scope["path"] == f"{FHIR_BASE}/metadata":  # open, as a FHIR server's is
                await self.app(scope, receive, send)
                return
            headers = dict(scope["headers"])
            auth = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not self.state.token_valid(token):
                body = {
                    "resourceType": "OperationOutcome",
                    "issue": [{"severity": "error", "code": "login", "diagnostics": "no token"}],
                }
                response = Response(
                    orjson.dumps(body),
                    401,
                    headers={"WWW-Authenticate": "Bearer"},
                    media_type="application/fhir+json",
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _injected(failure: Failure) -> Response:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "transient", "diagnostics": "injected failure"}],
    }
    headers = {"Retry-After": str(failure.retry_after)} if failure.retry_after is not None else {}
    return Response(orjson.dumps(body), failure.status, headers, "application/fhir+json")


class _Admin:
    """Test controls over HTTP, mounted only when the stub is started with ``admin``."""

    def __init__(self, state: StubEpicState) -> None:
        self.state = state

    async def fail(self, request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
            retry_after = body.get("retry_after")
            self.state.fail_next(
                int(body.get("status", 503)),
                int(body.get("count", 1)),
                retry_after=None if retry_after is None else int(retry_after),
                delay_s=float(body.get("delay_s", 0)),
            )
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            return JSONResponse({"error": 'expected {"status": 503, "count": N}'}, 400)
        return JSONResponse({"ok": True})

    async def stats(self, request: Request) -> Response:
        data = self.state.data
        with data.lock:
            return JSONResponse(
                {
                    "document_creates": sum(data.creates_by_hash.values()),
                    "documents_created_twice": sum(
                        1 for n in data.creates_by_hash.values() if n > 1
                    ),
                    "binary_creates": data.binary_creates,
                    "searches": dict(data.searches),
                    "token_requests": self.state.token_requests,
                    "tokens_issued": self.state.tokens_issued,
                }
            )


def create_stub_epic_app(
    state: StubEpicState | None = None,
    *,
    admin: bool = False,
    today: date | None = None,
    load_patients: int = 0,
) -> Starlette:
    """The stub as an ASGI app, seeded with the demo data as of ``today``; ``app.state.epic``
    is its :class:`StubEpicState`. ``admin`` adds the unauthenticated test controls."""
    state = state or StubEpicState()
    state.data.seed_demo(today or date.today())
    state.data.seed_load_patients(load_patients)
    epic = _Epic(state)
    fhir = create_stub_fhir_app(state.fhir, base=FHIR_BASE)
    api = Starlette(routes=[*epic_fhir_routes(state.data, FHIR_BASE), Mount("/", app=fhir)])
    routes = [
        Route(f"{FHIR_BASE}/.well-known/smart-configuration", epic.smart_configuration),
        Route(TOKEN_PATH, epic.token, methods=["POST"]),
    ]
    if admin:
        controls = _Admin(state)
        routes += [
            Route("/admin/fail", controls.fail, methods=["POST"]),
            Route("/admin/stats", controls.stats, methods=["GET"]),
        ]
    app = Starlette(routes=[*routes, Mount("/", app=_TokenGate(api, state))])
    app.state.epic = state
    return app


def run_stub_epic(
    host: str = "127.0.0.1",
    port: int = 8091,
    *,
    jwks_url: str = "http://127.0.0.1:8080/.well-known/jwks.json",
    client_id: str = "engine-demo",
    admin: bool = False,
    load_patients: int = 0,
) -> None:
    """Serve the stub until interrupted (``engine stub-epic``), ``client_id`` registered with
    ``jwks_url`` (the engine's /.well-known/jwks.json); ``load_patients`` synthetic patients
    beside the demo ones (benches)."""
    state = StubEpicState()
    state.register(client_id, jwks_url)
    app = create_stub_epic_app(state, admin=admin, load_patients=load_patients)
    uvicorn.run(app, host=host, port=port, log_level="info")


class StubEpicServer(ServerThread):
    """The stub Epic on a free loopback port."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        admin: bool = False,
        today: date | None = None,
    ) -> None:
        self.state = StubEpicState()
        super().__init__(create_stub_epic_app(self.state, admin=admin, today=today), host, port)

    @property
    def base_url(self) -> str:
        return self.url + FHIR_BASE

    @property
    def token_url(self) -> str:
        return self.url + TOKEN_PATH


@contextmanager
def running_stub_epic(**kwargs: Any) -> Iterator[StubEpicServer]:
    server = StubEpicServer(**kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()
