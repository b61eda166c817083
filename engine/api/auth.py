"""Bearer tokens (RFC 6750) for the HTTP API: who is calling, and may they?

A request carries ``Authorization: Bearer <JWT>``. :class:`TokenVerifier` checks, in this order,
each step refusing with 401 before the next runs:

1. size (``MAX_TOKEN_BYTES``) and shape (three base64url parts), before anything is decoded;
2. the header's ``alg`` is one the key source was built for (never ``none``, never chosen by the
   token), and a key for it (``kid``) exists;
3. signature, ``exp`` (required), ``nbf``, ``aud`` (required) and ``iss`` (when configured), with
   python-jose given an explicit one-algorithm list;
4. roles, from ``roles_claim`` (a list or a space-separated string) and ``scope``.

Three roles: ``admin`` may do everything; ``integration`` may post messages; ``viewer`` may read
message metadata. ``integration`` does not imply ``viewer``: a sending system has no need to list
what others sent. ``require(role)`` gives a FastAPI dependency; ``AdminDep``, ``IntegrationDep`` and
``ViewerDep`` are the typed aliases handlers use.

The token itself is never logged or echoed; refusals log a short reason and the path.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

import httpx
from fastapi import Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from jose import jwt
from jose.exceptions import ExpiredSignatureError, JWTClaimsError, JWTError

from engine.api.auth_settings import AuthMode, AuthSettings
from engine.api.keys import (
    JwksKeys,
    KeySource,
    KeysUnavailable,
    StaticKeys,
    TokenKeyError,
    dev_secret,
    public_key_file,
)

__all__ = [
    "MAX_TOKEN_BYTES",
    "AdminDep",
    "AuthError",
    "IntegrationDep",
    "Principal",
    "Role",
    "TokenVerifier",
    "ViewerDep",
    "build_verifier",
    "current_principal",
    "require",
]

log = logging.getLogger(__name__)

MAX_TOKEN_BYTES = 8 * 1024
_COMPACT_JWS = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")


class Role(StrEnum):
    ADMIN = "admin"
    INTEGRATION = "integration"
    VIEWER = "viewer"
    #: the console's front desk: the eligibility worklist, document upload and patient match
    FRONT_DESK = "front-desk"


@dataclass(frozen=True)
class Principal:
    """The caller a valid token names: its subject and engine roles."""

    subject: str
    roles: frozenset[Role]

    def may(self, role: Role) -> bool:
        return role in self.roles or Role.ADMIN in self.roles


class AuthError(Exception):
    """The token is refused (401); ``reason`` is short and safe to show and log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TokenVerifier:
    """Checks bearer tokens against one key source and the configured claims."""

    def __init__(
        self,
        keys: KeySource,
        *,
        audience: str,
        issuer: str | None = None,
        roles_claim: str = "roles",
        role_aliases: Mapping[str, str] | None = None,
        leeway_s: int = 30,
    ) -> None:
        self.keys = keys
        self.audience = audience
        self.issuer = issuer
        self.roles_claim = roles_claim
        self.role_aliases = dict(role_aliases or {})
        self.leeway_s = leeway_s

    def verify(self, token: str) -> Principal:
        """The token's principal; AuthError (401) or KeysUnavailable (503)."""
        if len(token.encode("utf-8", "replace")) > MAX_TOKEN_BYTES:
            raise AuthError("token too large")
        if not _COMPACT_JWS.match(token):
            raise AuthError("malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except JWTError:
            raise AuthError("malformed token") from None
        if not isinstance(header, dict):
            raise AuthError("malformed token")
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in self.keys.algorithms:
            raise AuthError("token algorithm not accepted")
        if kid is not None and not isinstance(kid, str):
            raise AuthError("malformed token")
        try:
            key = self.keys.key_for(alg, kid)
        except TokenKeyError as exc:
            raise AuthError(str(exc)) from None
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                options={
                    "require_exp": True,
                    "require_aud": True,
                    "require_iss": self.issuer is not None,
                    "leeway": self.leeway_s,
                },
            )
        except ExpiredSignatureError:
            raise AuthError("token expired") from None
        except JWTClaimsError:
            raise AuthError("token audience, issuer or validity time not accepted") from None
        except JWTError:
            raise AuthError("token signature not valid") from None
        return Principal(subject=str(claims.get("sub", "")), roles=self._roles(claims))

    def _roles(self, claims: Mapping[str, Any]) -> frozenset[Role]:
        names: list[str] = []
        for source in (_walk(claims, self.roles_claim), claims.get("scope")):
            if isinstance(source, str):
                names.extend(source.split())
            elif isinstance(source, list):
                names.extend(item for item in source if isinstance(item, str))
        known = {role.value for role in Role}
        mapped = (self.role_aliases.get(name, name) for name in names)
        return frozenset(Role(name) for name in mapped if name in known)


def _walk(claims: Mapping[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def build_verifier(auth: AuthSettings, *, http_client: httpx.Client | None = None) -> TokenVerifier:
    """The verifier the settings describe; reads the key file or dev secret now (ConfigError)."""
    keys: KeySource
    if auth.mode is AuthMode.DEV:
        keys = StaticKeys({"HS256": dev_secret(auth)})
        log.info("api accepts dev tokens (HS256)", extra={"environment": auth.environment})
    elif auth.mode is AuthMode.KEYFILE:
        assert auth.key_file is not None  # the settings validator guarantees it
        keys = public_key_file(auth.key_file, auth.algorithms)
    else:
        assert auth.jwks_url is not None
        keys = JwksKeys(
            auth.jwks_url,
            algorithms=auth.algorithms,
            ttl_s=auth.jwks_ttl_s,
            timeout_s=auth.jwks_timeout_s,
            client=http_client,
        )
    return TokenVerifier(
        keys,
        audience=auth.audience,
        issuer=auth.issuer,
        roles_claim=auth.roles_claim,
        role_aliases=auth.role_aliases,
        leeway_s=auth.leeway_s,
    )


def _unauthorized(detail: str, error: str | None = "invalid_token") -> HTTPException:
    challenge = f'Bearer realm="engine", error="{error}"' if error else 'Bearer realm="engine"'
    return HTTPException(401, detail=detail, headers={"WWW-Authenticate": challenge})


async def current_principal(request: Request) -> Principal:
    """The caller, from the bearer token. Checked on the event loop when the keys are at hand
    (the dev secret, a key file: a signature check of a fraction of a millisecond), in a thread
    when checking may fetch an identity provider's key set (JWKS), which blocks: a hand-off to a
    thread costs two context switches and anyio's queue, a fifth of an upload's time on the loop
    before (the ``documents`` bench)."""
    verifier = request.app.state.token_verifier
    assert isinstance(verifier, TokenVerifier)
    if getattr(verifier.keys, "blocking", True):
        return await run_in_threadpool(_principal, request, verifier)
    return _principal(request, verifier)


def _principal(request: Request, verifier: TokenVerifier) -> Principal:
    header = request.headers.get("authorization")
    if not header:
        raise _unauthorized("bearer token required", error=None)
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("bearer token required", error="invalid_request")
    try:
        return verifier.verify(token)
    except AuthError as exc:
        log.info("token refused", extra={"reason": exc.reason, "path": request.url.path})
        raise _unauthorized(exc.reason) from None
    except KeysUnavailable as exc:
        log.warning("token keys unavailable", extra={"error": str(exc)})
        raise HTTPException(
            503,
            detail="cannot check tokens: the identity provider's key set is unavailable",
            headers={"Retry-After": "30"},
        ) from None


def require(role: Role) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that lets through callers holding ``role`` (or admin); 403 otherwise."""

    async def dependency(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        if not principal.may(role):
            raise HTTPException(
                403,
                detail=f"requires the {role.value} role",
                headers={"WWW-Authenticate": 'Bearer realm="engine", error="insufficient_scope"'},
            )
        return principal

    return dependency


AdminDep = Annotated[Principal, Depends(require(Role.ADMIN))]
IntegrationDep = Annotated[Principal, Depends(require(Role.INTEGRATION))]
ViewerDep = Annotated[Principal, Depends(require(Role.VIEWER))]
