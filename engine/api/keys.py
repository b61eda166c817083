"""Where token-verification keys come from: the dev secret, a PEM key file, or a JWKS URL.

A key source answers one question — "which key checks a token whose header says ``alg`` and
``kid``?" — and only for the algorithms it was built for. Each key is bound to its algorithm when it
is loaded (an RSA key verifies only RS*, an EC P-256 key only ES256, the dev secret only HS256), so
a token cannot choose how its own signature is checked (the HS256-with-the-public-key confusion
attack, RFC 8725 §2.1 and §3.1). URLs in a token's header (``jku``, ``x5u``) are never followed.

The JWKS (RFC 7517) is fetched with httpx, at most every ``ttl_s`` seconds; an unknown ``kid``
triggers one early refetch (key rotation) but no more than one per ``MIN_REFETCH_S``. When the
identity provider is unreachable the last good key set stays in use for ``STALE_GRACE_S``; with no
key set at all, :class:`KeysUnavailable` (the API answers 503).
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import httpx
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwk
from jose.exceptions import JOSEError

from engine.api.auth_settings import AuthSettings
from engine.errors import ConfigError

__all__ = [
    "JwksKeys",
    "KeySource",
    "KeysUnavailable",
    "StaticKeys",
    "TokenKeyError",
    "dev_secret",
    "public_key_file",
]

log = logging.getLogger(__name__)

MIN_REFETCH_S = 30.0
STALE_GRACE_S = 3600.0
MAX_JWKS_BYTES = 256 * 1024
MIN_SECRET_BYTES = 32
_PLACEHOLDERS = frozenset(
    {"changeme", "change-me", "changethis", "secret", "placeholder", "password", "dev", "test"}
)
_CURVE_ALG = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_JWK_CURVE_ALG = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}


class TokenKeyError(Exception):
    """No key checks this token (unknown ``kid``, algorithm not offered); the API answers 401."""


class KeysUnavailable(Exception):
    """The key set cannot be fetched and none is cached; the API answers 503."""


class KeySource(Protocol):
    #: the ``alg`` header values this source can check
    algorithms: frozenset[str]
    #: whether :meth:`key_for` may block (fetch a key set): then tokens are checked in a thread
    blocking: bool

    def key_for(self, alg: str, kid: str | None) -> Any:
        """A python-jose key bound to ``alg``; TokenKeyError or KeysUnavailable."""
        ...


class StaticKeys:
    """Keys loaded once: the dev secret (HS256) or a PEM public key (RS*/ES*); ``kid`` ignored."""

    blocking = False

    def __init__(self, keys: Mapping[str, Any]) -> None:
        self._keys = dict(keys)
        self.algorithms = frozenset(self._keys)

    def key_for(self, alg: str, kid: str | None) -> Any:
        try:
            return self._keys[alg]
        except KeyError:
            raise TokenKeyError(f"algorithm {alg} not accepted") from None


def dev_secret(auth: AuthSettings) -> bytes:
    """The HS256 secret of ``dev`` mode; created (random, 0600) on first use in development only.

    Outside development a missing, short or placeholder secret stops the engine: a guessable
    secret would let anyone mint an admin token.
    """
    path = auth.dev_secret_file
    if not path.exists():
        if not auth.is_development:
            raise ConfigError(
                f"{path}: no token secret; outside development set ENGINE_AUTH_MODE to keyfile or "
                "jwks, or provide a random secret of at least 32 bytes"
            )
        _create_secret(path)
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the token secret: {exc.strerror}") from exc
    weak = len(secret) < MIN_SECRET_BYTES or secret.lower().decode("latin-1") in _PLACEHOLDERS
    if weak or len(set(secret)) < 8:
        if not auth.is_development:
            raise ConfigError(f"{path}: the token secret is short or a placeholder; refused")
        log.warning("dev token secret is weak", extra={"path": str(path)})
    return secret


def _create_secret(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32) + "\n")
    log.info("dev token secret created", extra={"path": str(path)})


def public_key_file(path: Path, algorithms: list[str]) -> StaticKeys:
    """Keys for the algorithms of ``algorithms`` that fit the PEM public key in ``path``."""
    where = f"ENGINE_AUTH_KEY_FILE: {path}"  # the setting named: the admin knows where to look
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read the public key: {exc.strerror}") from exc
    try:
        public = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise ConfigError(f"{where}: not a PEM public key (a private key is refused)") from exc
    if isinstance(public, rsa.RSAPublicKey):
        if public.key_size < 2048:
            raise ConfigError(f"{where}: RSA key of {public.key_size} bits; 2048 or more needed")
        fits = {"RS256", "RS384", "RS512"}
    elif isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name in _CURVE_ALG:
        fits = {_CURVE_ALG[public.curve.name]}
    else:
        raise ConfigError(f"{where}: only RSA and EC P-256/P-384/P-521 public keys are supported")
    usable = sorted(fits & set(algorithms))
    if not usable:
        raise ConfigError(f"{where}: the key fits {sorted(fits)}, none of algorithms {algorithms}")
    text = pem.decode("ascii")
    return StaticKeys({alg: jwk.construct(text, alg) for alg in usable})


class JwksKeys:
    """The key set at an identity provider's JWKS URL, cached and refreshed."""

    blocking = True

    def __init__(
        self,
        url: str,
        *,
        algorithms: list[str],
        ttl_s: float = 300.0,
        timeout_s: float = 5.0,
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.algorithms = frozenset(algorithms)
        self.ttl_s = ttl_s
        self._client = client or httpx.Client(timeout=timeout_s, follow_redirects=False)
        self._clock = clock
        self._lock = threading.Lock()
        self._jwks: list[dict[str, Any]] = []
        self._built: dict[tuple[int, str], Any] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None

    def key_for(self, alg: str, kid: str | None) -> Any:
        if alg not in self.algorithms:
            raise TokenKeyError(f"algorithm {alg} not accepted")
        with self._lock:
            now = self._clock()
            if self._fetched_at is None or now - self._fetched_at >= self.ttl_s:
                self._refresh(now)
            index = self._find(alg, kid)
            if index is None and self._may_fetch(now):  # rotated: the provider has a new key
                self._refresh(now)
                index = self._find(alg, kid)
            if index is None:
                raise TokenKeyError("no key in the key set matches the token's kid and alg")
            built = self._built.get((index, alg))
            if built is None:
                try:
                    built = jwk.construct(self._jwks[index], alg)
                except JOSEError as exc:
                    log.warning("unusable key in key set", extra={"kid": kid, "alg": alg})
                    raise TokenKeyError("the matching key in the key set is unusable") from exc
                self._built[(index, alg)] = built
            return built

    def _may_fetch(self, now: float) -> bool:
        return self._attempted_at is None or now - self._attempted_at >= MIN_REFETCH_S

    def _refresh(self, now: float) -> None:
        if not self._may_fetch(now):  # tried moments ago: do not hammer the provider
            if self._fetched_at is None:
                raise KeysUnavailable("key set unavailable; the next fetch is due shortly")
            return
        self._attempted_at = now
        try:
            keys = self._fetch()
        except KeysUnavailable as exc:
            stale = self._fetched_at is not None and now - self._fetched_at < (
                self.ttl_s + STALE_GRACE_S
            )
            log.warning("jwks fetch failed", extra={"error": str(exc), "using_cached": stale})
            if not stale:
                self._jwks, self._built, self._fetched_at = [], {}, None
                raise
            return
        self._jwks, self._built, self._fetched_at = keys, {}, now
        log.info("jwks fetched", extra={"keys": len(keys)})

    def _fetch(self) -> list[dict[str, Any]]:
        try:
            with self._client.stream(
                "GET", self.url, headers={"Accept": "application/json"}
            ) as response:
                if response.status_code != 200:
                    raise KeysUnavailable(f"key set URL answered HTTP {response.status_code}")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise KeysUnavailable("key set larger than 256 KiB")
        except httpx.HTTPError as exc:
            raise KeysUnavailable(f"key set URL unreachable ({type(exc).__name__})") from exc
        try:
            document = orjson.loads(bytes(body))
        except orjson.JSONDecodeError as exc:
            raise KeysUnavailable("key set is not JSON") from exc
        raw = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(raw, list):
            raise KeysUnavailable("key set has no 'keys' list")
        keys = [k for k in raw if isinstance(k, dict) and _signing_key(k)]
        if not keys:
            raise KeysUnavailable("key set has no RSA or EC signing keys")
        return keys

    def _find(self, alg: str, kid: str | None) -> int | None:
        fits = [
            i
            for i, key in enumerate(self._jwks)
            if _fits(key, alg) and (kid is None or key.get("kid") == kid)
        ]
        # without a kid, only an unambiguous key set will do
        return fits[0] if len(fits) == 1 or (fits and kid is not None) else None


def _signing_key(key: Mapping[str, Any]) -> bool:
    return key.get("kty") in {"RSA", "EC"} and key.get("use", "sig") == "sig"


def _fits(key: Mapping[str, Any], alg: str) -> bool:
    """Whether a JWK may verify ``alg``: key type (and curve) match, and its own ``alg`` if any."""
    if "alg" in key and key["alg"] != alg:
        return False
    if alg.startswith("RS"):
        return bool(key.get("kty") == "RSA")
    return key.get("kty") == "EC" and _JWK_CURVE_ALG.get(str(key.get("crv"))) == alg
