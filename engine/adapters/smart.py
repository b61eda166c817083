"""SMART Backend Services tokens (Epic): client credentials with a JWT client assertion.

SMART App Launch IG, Backend Services, and RFC 7523: the token URL is read from
``{base_url}/.well-known/smart-configuration`` (unless the route file gives it); the form carries
``grant_type=client_credentials``, the jwt-bearer ``client_assertion_type``, an assertion signed
by the engine's active key (:func:`engine.keys.client_assertion_for`) and the ``scope``.

One token per (token URL, client id, scope) for **every worker process**: it is kept in
``VAR_DIR/tokens/smart-<hash>.json`` through :mod:`engine.adapters.token_cache` (0600, an
exclusive ``fcntl`` lock held while a process reads it and, when it is missing, expired or the one
a server just refused, fetches a new one), so two processes never both ask. A token is used until
60 s before ``expires_in`` runs out (half its lifetime when that is shorter). After a 401,
:meth:`SmartBackend.invalidate` marks the token refused; the next call takes the file's token if
another process already replaced it, else fetches one. No token value is logged.

Failures are :class:`~engine.adapters.oauth2.TokenError`, naming the OAuth error code (RFC 6749
section 5.2) and never the assertion or a token: the token endpoint's 5xx, 408, 429,
``temporarily_unavailable`` and network errors are retryable; any other refusal is not.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from engine.adapters.auth import SmartBackendAuth
from engine.adapters.oauth2 import CachedBearer, TokenError, request_token
from engine.adapters.token_cache import lock_file, shared_token
from engine.errors import EngineError
from engine.keys import CLIENT_ASSERTION_TYPE, client_assertion_for
from engine.settings import Settings, load_settings

__all__ = ["SmartBackend"]

log = logging.getLogger(__name__)

_WELL_KNOWN = "/.well-known/smart-configuration"


#: the token file's blocking lock (tests hold it as another process would)
_lock = lock_file


def _retryable(status: int) -> bool:
    return status in (408, 429) or status >= 500


class SmartBackend(CachedBearer):
    """The token of one FHIR destination's ``smart-backend`` auth, shared through the file."""

    def __init__(
        self,
        config: SmartBackendAuth,
        base_url: str,
        *,
        settings: Settings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.base_url = base_url.rstrip("/")
        self.clock = clock
        self._settings = settings
        self._token_url = config.token_url
        self._refused: str | None = None
        #: how many tokens this instance fetched (for tests and metrics)
        self.fetches = 0

    def invalidate(self, refused: str | None = None) -> bool:
        """The server answered 401 to ``refused`` (default: the token held): the next call takes
        a new one. A request sent with an older token than the one held now refuses nothing:
        the token held came after it (else each delivery in flight would fetch one more)."""
        if refused is not None and refused != self._token:
            return True
        self._refused, self._token = self._token, None
        return True

    def _settings_now(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = load_settings()
            except EngineError as exc:
                raise TokenError(f"smart-backend: {exc}") from exc
        return self._settings

    def cache_file(self, settings: Settings, token_url: str) -> Path:
        cfg = self.config
        key = hashlib.sha256(f"{token_url}\n{cfg.client_id}\n{cfg.scope}".encode()).hexdigest()
        return settings.var_dir / "tokens" / f"smart-{key[:32]}.json"

    async def _renew(self, client: httpx.AsyncClient) -> None:
        settings = self._settings_now()
        token_url = await self._discover(client)
        path = self.cache_file(settings, token_url)

        async def fetch() -> tuple[str, float]:
            return await self._fetch(client, settings, token_url)

        got = await shared_token(path, fetch, clock=self.clock, refused=self._refused)
        self._token, self._use_until = got.token, got.use_until
        if got.fetched:
            self._refused = None

    async def _discover(self, client: httpx.AsyncClient) -> str:
        if self._token_url is not None:
            return self._token_url
        url = self.base_url + _WELL_KNOWN
        try:
            resp = await client.get(url, headers={"Accept": "application/json"})
        except httpx.RequestError as exc:
            raise TokenError(f"smart-configuration {type(exc).__name__}", retryable=True) from exc
        if resp.status_code != 200:
            raise TokenError(
                f"smart-configuration -> {resp.status_code}", retryable=_retryable(resp.status_code)
            )
        try:
            conf = resp.json()
            endpoint = conf["token_endpoint"]
            methods = conf.get("token_endpoint_auth_methods_supported", ["private_key_jwt"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TokenError("smart-configuration without token_endpoint") from exc
        if not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://")):
            raise TokenError("smart-configuration: token_endpoint is not an http(s) URL")
        if "private_key_jwt" not in methods:
            raise TokenError("smart-configuration: the server does not take private_key_jwt")
        self._token_url = endpoint
        return endpoint

    async def _fetch(
        self, client: httpx.AsyncClient, settings: Settings, token_url: str
    ) -> tuple[str, float]:
        cfg = self.config
        try:
            assertion = client_assertion_for(settings, cfg.client_id, token_url)
        except EngineError as exc:
            raise TokenError(f"smart-backend: {exc}") from exc
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": assertion,
            "scope": cfg.scope,
        }

        def refused(resp: httpx.Response, error: str, detail: str) -> TokenError:
            retry = _retryable(resp.status_code) or error == "temporarily_unavailable"
            return TokenError(detail, retryable=retry)

        token, expires_in = await request_token(
            client,
            token_url,
            form,
            label="smart-backend token endpoint",
            client_id=cfg.client_id,
            default_expires_in=300,
            refused=refused,
        )
        self.fetches += 1
        log.info(
            "smart-backend token fetched",
            extra={"token_url": token_url, "client_id": cfg.client_id, "expires_in": expires_in},
        )
        return token, float(expires_in)
