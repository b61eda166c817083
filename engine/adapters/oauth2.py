"""OAuth 2.0 client credentials (RFC 6749 section 4.4), shared by the adapters that need it
(FHIR REST destinations, the x12-http payer).

The token endpoint is asked with HTTP Basic client authentication (``client_auth: basic``,
section 2.3.1) or the credentials in the form (``post``); the token is kept until shortly before it
expires (30 s, or a tenth of its lifetime). Failures are a :class:`TokenError` that each adapter
translates into its own terms (a delivery result, a payer error). :func:`retry_after` reads the
delay a server asks for (at most an hour), for every adapter.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime

import httpx

from engine.adapters.auth import OAuth2Auth

__all__ = [
    "MAX_RETRY_AFTER_S",
    "ClientCredentials",
    "TokenError",
    "oauth_error",
    "request_token",
    "retry_after",
]

log = logging.getLogger(__name__)

_TOKEN_SKEW_S = 30.0

#: the longest Retry-After believed, seconds (an hour)
MAX_RETRY_AFTER_S = 3600.0


def retry_after(resp: httpx.Response) -> float | None:
    """Retry-After (RFC 9110 section 10.2.3): delay-seconds or an HTTP date, as seconds from now,
    at most :data:`MAX_RETRY_AFTER_S`; ``None`` when absent or unreadable.

    The cap: a peer that asks for ``1000000000000`` seconds or a date in year 9999 (a bug, a
    proxy's placeholder) would otherwise park a delivery or a token for decades; an hour later
    it is simply asked again. Only ASCII digits are delay-seconds (``str.isdigit`` takes ``²``).
    """
    value = resp.headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isascii() and value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(0.0, when - time.time()), MAX_RETRY_AFTER_S)


class TokenError(Exception):
    """The token endpoint did not give a token: ``response`` when it answered, else the network
    failure (``timeout`` tells a timeout apart)."""

    def __init__(
        self,
        detail: str,
        *,
        response: httpx.Response | None = None,
        timeout: bool = False,
        retryable: bool = False,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.response = response
        self.timeout = timeout
        #: worth trying again later (the network), unlike a malformed answer
        self.retryable = retryable or timeout


def oauth_error(resp: httpx.Response) -> str:
    """The OAuth ``error`` code of a refusal (a short ASCII code), or ``""``."""
    try:
        error = resp.json().get("error")
    except (ValueError, AttributeError):
        return ""
    ok = isinstance(error, str) and error.isascii() and len(error) < 40
    return error.replace(" ", "_") if ok else ""


async def request_token(
    client: httpx.AsyncClient,
    url: str,
    form: Mapping[str, str],
    *,
    label: str,
    client_id: str,
    default_expires_in: float,
    refused: Callable[[httpx.Response, str, str], TokenError],
    auth: httpx.Auth | None = None,
) -> tuple[str, float]:
    """POST a token request and read ``(access_token, expires_in)`` from the answer, for the
    adapters that share a token through a file (athena, SMART Backend Services): one place for
    the network failures and the malformed answers. ``label`` names the endpoint in errors; a
    refusal (not 200) is what ``refused(response, oauth error code, detail)`` makes of it, since
    each vendor says "try later" in its own way. Never logs or raises the token itself."""
    headers = {"Accept": "application/json"}
    try:
        if auth is None:
            resp = await client.post(url, data=dict(form), headers=headers)
        else:
            resp = await client.post(url, data=dict(form), auth=auth, headers=headers)
    except httpx.TimeoutException as exc:
        raise TokenError(f"{label} timeout", timeout=True) from exc
    except httpx.RequestError as exc:
        raise TokenError(f"{label} {type(exc).__name__}", retryable=True) from exc
    if resp.status_code != 200:
        error = oauth_error(resp)
        detail = f"{label} -> {resp.status_code}"
        detail += f" {error}" if error else ""
        detail += f" (client_id {client_id!r})"
        raise refused(resp, error, detail)
    missing = f"{label.removesuffix(' endpoint')} response without access_token"
    try:
        body = resp.json()
        token, expires_in = body["access_token"], body.get("expires_in", default_expires_in)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TokenError(missing) from exc
    if not isinstance(token, str) or not token:
        raise TokenError(missing)
    if not isinstance(expires_in, int | float) or expires_in <= 0:
        expires_in = default_expires_in
    return token, float(expires_in)


class CachedBearer:
    """A bearer token fetched when there is none or it is about to expire (``_use_until`` on
    ``clock``), one fetch at a time per instance; subclasses say how in ``_renew``."""

    clock: Callable[[], float]
    _token: str | None = None
    _use_until: float = 0.0
    _lock: asyncio.Lock | None = None

    async def authorization(self, client: httpx.AsyncClient) -> str:
        """``Bearer <token>``; raises :class:`TokenError`."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._token is None or self.clock() >= self._use_until:
                await self._renew(client)
            return f"Bearer {self._token}"

    async def _renew(self, client: httpx.AsyncClient) -> None:
        raise NotImplementedError


class ClientCredentials(CachedBearer):
    """A client-credentials token, fetched when needed and cached until it is about to expire."""

    def __init__(
        self, config: OAuth2Auth, secret: str, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self._secret = secret
        self.clock = clock
        #: how many tokens were fetched (for tests and metrics)
        self.fetches = 0

    def invalidate(self, refused: str | None = None) -> bool:
        """Forget the token (the server answered 401 to ``refused``, default the one held);
        True: a new one may help. An older token than the one held refuses nothing."""
        if refused is None or refused == self._token:
            self._token = None
        return True

    async def _renew(self, client: httpx.AsyncClient) -> None:
        cfg = self.config
        form = {"grant_type": "client_credentials"}
        if cfg.scope:
            form["scope"] = cfg.scope
        headers = {"Accept": "application/json"}
        if cfg.client_auth == "basic":
            basic = httpx.BasicAuth(cfg.client_id, self._secret)
            sending = client.post(cfg.token_url, data=form, auth=basic, headers=headers)
        else:
            form |= {"client_id": cfg.client_id, "client_secret": self._secret}
            sending = client.post(cfg.token_url, data=form, headers=headers)
        try:
            resp = await sending
        except httpx.TimeoutException as exc:
            raise TokenError("oauth2 token endpoint timeout", timeout=True) from exc
        except httpx.RequestError as exc:
            raise TokenError(f"oauth2 token endpoint {type(exc).__name__}", retryable=True) from exc
        if resp.status_code != 200:
            raise TokenError("oauth2 token endpoint refused", response=resp)
        try:
            body = resp.json()
            token, expires_in = body["access_token"], body.get("expires_in")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TokenError("oauth2 token response without access_token") from exc
        if not isinstance(token, str) or not token:
            raise TokenError("oauth2 token response without access_token")
        self.fetches += 1
        self._token = token
        if isinstance(expires_in, int | float) and expires_in > 0:
            self._use_until = self.clock() + expires_in - min(_TOKEN_SKEW_S, expires_in / 10)
        else:  # expires_in is only RECOMMENDED: keep the token until a 401
            self._use_until = float("inf")
        log.info("oauth2 token fetched", extra={"token_url": cfg.token_url})
