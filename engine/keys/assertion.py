"""SMART Backend Services client assertions: the JWT the engine signs to ask an EHR for a token.

SMART App Launch IG, Backend Services (client-confidential-asymmetric) and RFC 7523 §3: the header
names ``alg`` (RS384 or ES384), ``kid`` and, when the engine's public base URL is known, ``jku``
(where its JWKS is published); the claims are ``iss`` = ``sub`` = the client id, ``aud`` = the
token URL, a unique ``jti``, ``iat`` and ``exp``, at most five minutes after ``iat`` (Epic refuses
more). The default lifetime is four minutes, leaving a minute for the EHR's clock to differ from
ours. ``nbf`` is left out: a clock ahead of the EHR's would make the assertion not yet valid.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

from jose import jwt

from engine.keys.keyring import Keyring, SigningKeyError
from engine.settings import Settings

__all__ = [
    "CLIENT_ASSERTION_TYPE",
    "JWKS_PATH",
    "MAX_LIFETIME_S",
    "client_assertion",
    "client_assertion_for",
    "jwks_url",
    "keyring_for",
]

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
JWKS_PATH = "/.well-known/jwks.json"
MAX_LIFETIME_S = 300
DEFAULT_LIFETIME_S = 240


def keyring_for(settings: Settings) -> Keyring:
    """The engine's signing keys: ``VAR_DIR/keys`` under the engine home."""
    return Keyring(settings.var_dir / "keys")


def jwks_url(public_base_url: str | None) -> str | None:
    """Where the engine's JWKS is published (``ENGINE_PUBLIC_BASE_URL`` + the well-known path),
    or None when no public base URL is set."""
    if not public_base_url:
        return None
    parts = urlsplit(public_base_url)
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.query or parts.fragment:
        raise SigningKeyError(
            "ENGINE_PUBLIC_BASE_URL: not an http(s) base URL such as https://engine.example.org"
        )
    return public_base_url.rstrip("/") + JWKS_PATH


def client_assertion(
    keyring: Keyring,
    client_id: str,
    token_url: str,
    *,
    jku: str | None = None,
    lifetime_s: int = DEFAULT_LIFETIME_S,
    clock: Callable[[], float] = time.time,
) -> str:
    """A client assertion for ``client_id`` at ``token_url``, signed with the active key."""
    if not 0 < lifetime_s <= MAX_LIFETIME_S:
        raise SigningKeyError(f"assertion lifetime {lifetime_s} s; 1 to {MAX_LIFETIME_S} allowed")
    if not client_id or not token_url:
        raise SigningKeyError("a client assertion needs a client id and a token URL")
    key = keyring.active()
    now = int(clock())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "jti": str(uuid.uuid4()),
        "iat": now,
        "exp": now + lifetime_s,
    }
    headers = {"kid": key.kid, "typ": "JWT"}
    if jku is not None:
        headers["jku"] = jku
    return str(jwt.encode(claims, key.key, algorithm=key.alg, headers=headers))


def client_assertion_for(settings: Settings, client_id: str, token_url: str) -> str:
    """:func:`client_assertion` with the engine's keys and its published JWKS URL as ``jku``."""
    return client_assertion(
        keyring_for(settings), client_id, token_url, jku=jwks_url(settings.public_base_url)
    )
