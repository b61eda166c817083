"""The console: logging in and out — local users, and OpenID Connect when a provider is set.

``GET /console/login`` shows the form with a pre-session CSRF token (its signed cookie
``engine_login``); ``POST /console/login`` checks the token, then the password
(engine/store/users.py: lock-out, audit), and answers every refusal with the same words, so the
form does not tell whether a user exists, is disabled or locked. A login makes a new session
(a session id the browser held before is ended: no fixation) and sends the browser to ``next``
when that is a path on this site, else to ``/console/``. ``POST /console/logout`` (CSRF) ends the
session, audited.

OpenID Connect (``ENGINE_OIDC_ISSUER``; OpenID Connect Core 1.0 §3.1, the authorization code
flow): ``GET /console/login/oidc`` sends the browser to the provider with a fresh ``state``,
``nonce`` and PKCE S256 challenge (RFC 7636), which a signed cookie (``engine_oidc``, ten
minutes) remembers; ``GET /console/login/oidc/callback`` checks ``state``, trades the code (with
the PKCE verifier) for tokens at the token endpoint, and checks the ID token (§3.1.3.7): its
signature against the provider's JWKS with an explicit list of asymmetric algorithms (never
``none``, never a shared-secret HMAC), ``iss``, ``aud`` (and ``azp`` when several audiences),
``exp``, ``iat`` and ``nonce``. The user is named by ``ENGINE_OIDC_USERNAME_CLAIM`` and gets the
roles ``ENGINE_OIDC_ROLES_CLAIM`` maps to through ``ENGINE_OIDC_ROLE_MAP`` (with a map, only the
values it names count; without one, values that are engine role names); no engine role, no login.
authlib builds the authorization request and makes the token request; joserfc (authlib's JOSE
library) checks the ID token. Discovery and keys are fetched when first needed and kept five
minutes (a key id not seen yet fetches the keys again, once).
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from itsdangerous import BadSignature, URLSafeTimedSerializer
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet
from starlette.concurrency import run_in_threadpool

from engine.api.auth import Role
from engine.api.deps import peer_of
from engine.console.auth import CsrfDep
from engine.console.render import render
from engine.console.sessions import (
    check_login_token,
    console_secret,
    cookie_secure,
    end_session,
    login_policy,
    login_token,
    read_small_form,
    safe_next,
    set_login_cookie,
    settings_of,
    start_session,
    users_of,
)
from engine.settings import Settings
from engine.store.db import utcnow
from engine.store.operator import Who
from engine.store.users import LoginResult, UserProblem, normal_username

__all__ = ["ID_TOKEN_ALGORITHMS", "REFUSED", "OidcFailure", "router"]

router = APIRouter()

#: one answer for an unknown user, a wrong password, a locked or disabled account
REFUSED = "Wrong user name or password, or the account is locked for now."
#: a login form is a few short fields
_LOGIN_FORM_BYTES = 8 * 1024

OIDC_COOKIE = "engine_oidc"
#: how long a trip to the provider and back may take
OIDC_FLOW_S = 600
#: the ID token signatures we check (asymmetric only: the client secret never signs them here)
ID_TOKEN_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384")
_CACHE_S = 300.0
#: how long a failed discovery is answered from memory
_FAILED_CACHE_S = 10.0
#: password checks at once (argon2id: 64 MiB and about a second each), in their own threads
HASH_WIDTH = 2
#: how long a login waits for a free password check before it is answered 429
HASH_WAIT_S = 2.0
#: failed logins a peer may have in a burst, and how often it gets one more back
PEER_BURST = 20
PEER_REFILL_S = 3.0
_PEERS_KEPT = 10_000
_MAX_DOCUMENT_BYTES = 256 * 1024
_TIMEOUT_S = 10.0


def _login_page(
    request: Request,
    *,
    next_path: str,
    error: str = "",
    username: str = "",
    status_code: int = 200,
) -> HTMLResponse:
    token, cookie = login_token(request)
    settings = settings_of(request)
    response = render(
        request,
        "login.html",
        user=None,
        status_code=status_code,
        csrf_token=token,
        next=next_path,
        error=error,
        username=username,
        oidc=settings.oidc_name if settings.oidc_issuer and settings.oidc_client_id else None,
    )
    set_login_cookie(request, response, cookie)
    return response


class LoginBusy(Exception):
    """Too many logins at once, or too many failures from one peer: answer 429."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("too many logins")
        self.retry_after = retry_after


class LoginThrottle:
    """Password checks of one app: at most ``HASH_WIDTH`` at once, in their own threads (the
    shared thread pool that every page uses is never taken by a hash), and a token bucket of
    failed logins per peer, unknown user names included, taken before the hash."""

    def __init__(self) -> None:
        self._slots = threading.BoundedSemaphore(HASH_WIDTH)
        self._pool = ThreadPoolExecutor(HASH_WIDTH, thread_name_prefix="console-login")
        self._peers: dict[str, tuple[float, float]] = {}  # peer: (tokens, when)

    def _take(self, peer: str) -> None:
        now = time.monotonic()
        tokens, when = self._peers.get(peer, (float(PEER_BURST), now))
        tokens = min(float(PEER_BURST), tokens + (now - when) / PEER_REFILL_S)
        if tokens < 1:
            raise LoginBusy(int((1 - tokens) * PEER_REFILL_S) + 1)
        if len(self._peers) >= _PEERS_KEPT and peer not in self._peers:
            self._peers.clear()  # a flood of addresses: start again rather than grow
        self._peers[peer] = (tokens - 1, now)

    def _give_back(self, peer: str) -> None:
        tokens, when = self._peers.get(peer, (float(PEER_BURST), time.monotonic()))
        self._peers[peer] = (min(float(PEER_BURST), tokens + 1), when)

    async def check(self, peer: str, check: Callable[..., LoginResult], *args: Any) -> LoginResult:
        """Run ``check(*args)`` (the store's password check) in a login thread; LoginBusy when
        the peer is over its budget or no thread is free within ``HASH_WAIT_S``. Its result's
        ``user``, when set, gives the peer's token back."""
        self._take(peer)
        deadline = time.monotonic() + HASH_WAIT_S
        while not self._slots.acquire(blocking=False):
            if time.monotonic() >= deadline:
                self._give_back(peer)
                raise LoginBusy(1)
            await asyncio.sleep(0.02)
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._pool, check, *args)
        finally:
            self._slots.release()
        if result.user is not None:
            self._give_back(peer)
        return result


def _throttle(request: Request) -> LoginThrottle:
    state = request.app.state
    throttle: LoginThrottle | None = getattr(state, "console_login_throttle", None)
    if throttle is None:
        throttle = LoginThrottle()
        state.console_login_throttle = throttle
    return throttle


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str | None = None) -> HTMLResponse:
    """The login form."""
    return _login_page(request, next_path=safe_next(next))


@router.post("/login")
async def login(request: Request) -> Response:
    """Check the form's token and the password; a new session and off to ``next``."""
    form = await read_small_form(request, _LOGIN_FORM_BYTES)
    next_path = safe_next(form.get("next"))
    users = users_of(request)
    if users is None:
        return _login_page(
            request,
            next_path=next_path,
            error="This engine has no user store: logging in is not possible.",
            status_code=503,
        )
    username = form.get("username", "").strip()[:64]
    if not check_login_token(request, form.get("csrf_token")):
        return _login_page(
            request,
            next_path=next_path,
            username=username,
            error="The login form had expired. Please log in again.",
            status_code=403,
        )
    settings = settings_of(request)
    peer = peer_of(request)
    try:
        result = await _throttle(request).check(
            request.client.host if request.client else "",
            users.check_login,
            username,
            form.get("password", ""),
            peer,
            login_policy(settings),
        )
    except LoginBusy as busy:
        answer = _login_page(
            request,
            next_path=next_path,
            username=username,
            error="Too many logins just now. Please wait a moment and try again.",
            status_code=429,
        )
        answer.headers["Retry-After"] = str(busy.retry_after)
        return answer
    if result.user is None:
        return _login_page(
            request, next_path=next_path, username=username, error=REFUSED, status_code=401
        )
    response = RedirectResponse(next_path, status_code=303)
    await start_session(request, response, result.user, method="password")
    idle = timedelta(minutes=settings.console_idle_minutes)
    # sessions nobody came back to end here (audited), so the table does not grow
    await run_in_threadpool(users.sweep_sessions, utcnow(), idle)
    return response


@router.post("/logout")
async def logout(request: Request, user: CsrfDep) -> Response:
    """End the session; back to the login form."""
    response = RedirectResponse("/console/login", status_code=303)
    await end_session(request, response, user)
    return response


# -- OpenID Connect ---------------------------------------------------------------------


class OidcFailure(Exception):
    """A login through the provider that did not hold; the text is safe to show and log."""


@dataclass(frozen=True)
class _Provider:
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    algorithms: tuple[str, ...]


class Oidc:
    """One provider: its discovery document and keys (kept ``_CACHE_S``), and the two steps of
    a login."""

    def __init__(self, settings: Settings) -> None:
        assert settings.oidc_issuer and settings.oidc_client_id
        self.settings = settings
        self.issuer = settings.oidc_issuer.rstrip("/")
        self.client_id = settings.oidc_client_id
        self._provider: tuple[float, _Provider] | None = None
        self._keys: tuple[float, KeySet] | None = None
        self._failed: tuple[float, str] | None = None  # a discovery that failed, and why

    async def _json(self, url: str, what: str) -> dict[str, Any]:
        from authlib.common.security import is_secure_transport  # type: ignore[import-untyped]

        if not is_secure_transport(url):
            raise OidcFailure(f"the provider's {what} is not at an https URL")
        try:
            async with httpx.AsyncClient(timeout=_TIMEOUT_S) as client:
                answer = await client.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise OidcFailure(
                f"the provider's {what} did not answer ({type(exc).__name__})"
            ) from None
        if answer.status_code != 200 or len(answer.content) > _MAX_DOCUMENT_BYTES:
            raise OidcFailure(f"the provider's {what} answered {answer.status_code}")
        try:
            body = answer.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise OidcFailure(f"the provider's {what} is not a JSON object")
        return body

    async def provider(self) -> _Provider:
        if self._provider is not None and time.monotonic() - self._provider[0] < _CACHE_S:
            return self._provider[1]
        if self._failed is not None and time.monotonic() - self._failed[0] < _FAILED_CACHE_S:
            raise OidcFailure(self._failed[1])  # not one request to the provider per visitor
        try:
            return await self._discover()
        except OidcFailure as exc:
            self._failed = (time.monotonic(), str(exc))
            raise

    async def _discover(self) -> _Provider:
        doc = await self._json(f"{self.issuer}/.well-known/openid-configuration", "discovery")
        if str(doc.get("issuer", "")).rstrip("/") != self.issuer:
            raise OidcFailure("the provider's discovery names another issuer")
        offered = doc.get("id_token_signing_alg_values_supported") or ["RS256"]
        algorithms = tuple(a for a in ID_TOKEN_ALGORITHMS if a in offered)
        urls = [doc.get(k) for k in ("authorization_endpoint", "token_endpoint", "jwks_uri")]
        if not all(isinstance(u, str) and u for u in urls) or not algorithms:
            raise OidcFailure("the provider's discovery lacks an endpoint or a usable algorithm")
        provider = _Provider(str(urls[0]), str(urls[1]), str(urls[2]), algorithms)
        self._provider = (time.monotonic(), provider)
        return provider

    async def keys(self, *, refresh: bool = False) -> KeySet:
        if not refresh and self._keys is not None and time.monotonic() - self._keys[0] < _CACHE_S:
            return self._keys[1]
        document = await self._json((await self.provider()).jwks_uri, "keys")
        try:
            keys = KeySet.import_key_set(document)  # type: ignore[arg-type]
        except (JoseError, ValueError, KeyError, TypeError):
            raise OidcFailure("the provider's keys do not read as a JWK set") from None
        self._keys = (time.monotonic(), keys)
        return keys

    def _client(self, redirect_uri: str) -> Any:
        from authlib.integrations.httpx_client import (  # type: ignore[import-untyped]
            AsyncOAuth2Client,
        )

        secret_file = self.settings.oidc_client_secret_file
        secret = secret_file.read_text().strip() if secret_file is not None else None
        return AsyncOAuth2Client(
            client_id=self.client_id,
            client_secret=secret,
            token_endpoint_auth_method="client_secret_basic" if secret else "none",
            scope=self.settings.oidc_scopes,
            redirect_uri=redirect_uri,
            code_challenge_method="S256",
            timeout=_TIMEOUT_S,  # a number: authlib's client may be httpx2's, not httpx's
        )

    async def begin(self, redirect_uri: str) -> tuple[str, dict[str, str]]:
        """The provider's authorization URL, and what the callback must find again."""
        provider = await self.provider()
        flow = {
            "state": secrets.token_urlsafe(32),
            "nonce": secrets.token_urlsafe(32),
            "verifier": secrets.token_urlsafe(48),  # 64 characters (RFC 7636 §4.1: 43-128)
        }
        async with self._client(redirect_uri) as client:
            url, _ = client.create_authorization_url(
                provider.authorization_endpoint,
                state=flow["state"],
                code_verifier=flow["verifier"],
                nonce=flow["nonce"],
            )
        return str(url), flow

    async def finish(self, code: str, flow: dict[str, str], redirect_uri: str) -> dict[str, Any]:
        """Trade the code for tokens; the checked ID token's claims."""
        provider = await self.provider()
        try:
            async with self._client(redirect_uri) as client:
                token = await client.fetch_token(
                    provider.token_endpoint,
                    grant_type="authorization_code",
                    code=code,
                    code_verifier=flow["verifier"],
                )
        except OSError as exc:
            raise OidcFailure(f"the token endpoint: {type(exc).__name__}") from None
        except Exception as exc:  # authlib's OAuthError and httpx's: the provider said no
            reason = getattr(exc, "error", None) or type(exc).__name__
            raise OidcFailure(f"the token endpoint refused the code ({reason})") from None
        id_token = token.get("id_token") if isinstance(token, dict) else None
        if not isinstance(id_token, str) or len(id_token) > 16 * 1024:
            raise OidcFailure("the provider sent no ID token")
        return await self._claims(id_token, flow["nonce"], provider)

    async def _claims(self, id_token: str, nonce: str, provider: _Provider) -> dict[str, Any]:
        try:
            try:
                decoded = jwt.decode(id_token, await self.keys(), algorithms=provider.algorithms)
            except InvalidKeyIdError:  # the provider rotated its keys: fetch them again, once
                keys = await self.keys(refresh=True)
                decoded = jwt.decode(id_token, keys, algorithms=provider.algorithms)
            registry = jwt.JWTClaimsRegistry(
                leeway=60,
                iss={"essential": True, "value": self.issuer},
                aud={"essential": True, "value": self.client_id},
                sub={"essential": True},
                exp={"essential": True},
                iat={"essential": True},
                nonce={"essential": True, "value": nonce},
            )
            registry.validate(decoded.claims)
        except JoseError as exc:
            raise OidcFailure(f"the ID token does not hold ({exc.error})") from None
        except ValueError:
            raise OidcFailure("the ID token does not read") from None
        claims = dict(decoded.claims)
        audience = claims.get("aud")
        if isinstance(audience, list) and len(audience) > 1 and claims.get("azp") != self.client_id:
            raise OidcFailure("the ID token is for several clients, and not authorized for us")
        return claims

    def username(self, claims: dict[str, Any]) -> str:
        for value in (claims.get(self.settings.oidc_username_claim), claims.get("sub")):
            if isinstance(value, str):
                try:
                    return normal_username(value)
                except UserProblem:
                    continue
        raise OidcFailure("the ID token names no user name the console takes")

    def roles(self, claims: dict[str, Any]) -> list[str]:
        value = claims.get(self.settings.oidc_roles_claim)
        given = (
            value.split() if isinstance(value, str) else value if isinstance(value, list) else []
        )
        names = {role.value for role in Role}
        role_map = self.settings.oidc_role_map
        if role_map:  # only what the map names counts: a provider's own "admin" grants nothing
            mapped = {role_map[str(v)] for v in given if str(v) in role_map}
        else:  # no map: the provider's values are engine role names
            mapped = {str(v) for v in given}
        return sorted(mapped & names)


def _oidc(request: Request) -> Oidc | None:
    settings = settings_of(request)
    if not settings.oidc_issuer or not settings.oidc_client_id:
        return None
    oidc = getattr(request.app.state, "oidc", None)
    if not isinstance(oidc, Oidc):
        oidc = Oidc(settings)
        request.app.state.oidc = oidc
    return oidc


def _flow_serializer(request: Request) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(console_secret(settings_of(request)), salt="engine-console-oidc")


def _callback_uri(request: Request) -> str:
    base = settings_of(request).public_base_url or str(request.base_url)
    return base.rstrip("/") + "/console/login/oidc/callback"


async def _oidc_refused(
    request: Request, actor: str, why: str, next_path: str, *, audited: bool = True
) -> HTMLResponse:
    """The login page with why; ``audited=False`` for a request that was no login attempt (a
    callback without this browser's flow cookie, a provider that does not answer): anyone can
    send those for free, and they must not grow the audit trail."""
    users = users_of(request)
    if users is not None and audited:
        await run_in_threadpool(users.login_refused, actor, peer_of(request), f"oidc: {why}")
    name = settings_of(request).oidc_name
    response = _login_page(
        request,
        next_path=next_path,
        error=f"Logging in with {name} did not work: {why}.",
        status_code=401,
    )
    response.delete_cookie(OIDC_COOKIE, path="/console/login/oidc")
    return response


@router.get("/login/oidc")
async def oidc_begin(request: Request, next: str | None = None) -> Response:
    """Off to the provider, with state, nonce and a PKCE challenge."""
    oidc = _oidc(request)
    next_path = safe_next(next)
    if oidc is None:
        return _login_page(request, next_path=next_path, error="No identity provider is set up.")
    try:
        url, flow = await oidc.begin(_callback_uri(request))
    except OidcFailure as exc:
        return await _oidc_refused(request, "oidc", str(exc), next_path, audited=False)
    response = RedirectResponse(url, status_code=303)
    response.set_cookie(
        OIDC_COOKIE,
        _flow_serializer(request).dumps({**flow, "next": next_path}),
        max_age=OIDC_FLOW_S,
        path="/console/login/oidc",
        httponly=True,
        samesite="lax",  # the provider's redirect back is a top-level GET: Lax sends it
        secure=cookie_secure(request),
    )
    return response


@router.get("/login/oidc/callback")
async def oidc_callback(request: Request) -> Response:
    """Back from the provider: check state, trade the code, check the ID token, log in."""
    oidc = _oidc(request)
    users = users_of(request)
    if oidc is None or users is None:
        return _login_page(request, next_path="/console/", error="No identity provider is set up.")
    try:
        flow = _flow_serializer(request).loads(
            request.cookies.get(OIDC_COOKIE, ""), max_age=OIDC_FLOW_S
        )
    except BadSignature:
        flow = None
    if not isinstance(flow, dict):
        return await _oidc_refused(
            request,
            "oidc",
            "the login took too long or began elsewhere",
            "/console/",
            audited=False,
        )
    next_path = safe_next(flow.get("next"))
    params = request.query_params
    if params.get("error"):
        error = "".join(c for c in params["error"][:64] if c.isalnum() or c in "_-")
        return await _oidc_refused(request, "oidc", f"the provider said {error}", next_path)
    state, code = params.get("state", ""), params.get("code", "")
    if not state or not hmac.compare_digest(state.encode(), str(flow.get("state", "")).encode()):
        return await _oidc_refused(
            request, "oidc", "the answer's state is not this login's", next_path
        )
    if not code or len(code) > 2048:
        return await _oidc_refused(request, "oidc", "the provider sent no code", next_path)
    try:
        claims = await oidc.finish(code, flow, _callback_uri(request))
        username = oidc.username(claims)
        roles = oidc.roles(claims)
        if not roles:
            raise OidcFailure(f"{username} has no engine role at the provider")
        who = Who(f"oidc:{username}", "console", peer_of(request))
        user = await run_in_threadpool(users.upsert_oidc_user, username, roles, who)
    except (OidcFailure, UserProblem) as exc:
        return await _oidc_refused(request, "oidc", str(exc), next_path)
    if user.disabled:
        return await _oidc_refused(
            request, user.username, f"{user.username} is disabled here", next_path
        )
    response = RedirectResponse(next_path, status_code=303)
    await start_session(request, response, user, method="oidc")
    response.delete_cookie(OIDC_COOKIE, path="/console/login/oidc")
    return response
