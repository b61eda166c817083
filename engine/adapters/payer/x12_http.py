"""The ``x12-http`` payer adapter: real-time 270/271 with a clearinghouse or payer over HTTPS.

Each exchange is one POST to the payer's ``url``: the CAQH CORE envelope as multipart/form-data
(:mod:`engine.adapters.payer.core`; ``envelope: core``) or the bare interchange as
``application/edi-x12`` (``envelope: plain``). The answer's Payload (or body) is returned as
text: a 271, or a TA1/999.

Classification: 2xx with X12 is an answer; timeouts, connection errors, 408, 429 and 5xx raise
:class:`PayerUnavailable` (with the payer's Retry-After); any other status, a CORE ErrorCode
other than ``Success``, or a token request the server refuses raises :class:`PayerRejected`.
``timeout_s`` bounds the whole exchange (token included) from when it is sent; a request
waiting for one of the ``max_concurrency`` slots has not been sent yet.

Authentication: none, or the OAuth 2.0 client credentials grant (RFC 6749 section 4.4) with the
secret from the environment variable ``client_secret_env`` names. The token is cached until
shortly before ``expires_in`` runs out (the FHIR REST destination's rule: 30 s, at most a tenth
of the lifetime); a 401 fetches a new one and sends once more.

TLS: certificates are verified unless the payer file says ``verify_tls: false``. Logs carry the
payer's name, the HTTP status, the PayloadID and the duration; never a payload.

Incomplete: no client certificates (mutual TLS) and no CORE username/password fields.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from uuid import uuid4

import httpx

from engine.adapters.auth import OAuth2Auth
from engine.adapters.fhir_http import tls_verify
from engine.adapters.oauth2 import ClientCredentials, TokenError, retry_after
from engine.adapters.payer.config import PayerConfig
from engine.adapters.payer.contract import PayerRejected, PayerUnavailable
from engine.adapters.payer.core import (
    CORE_RULE_VERSION,
    EDI_X12,
    PAYLOAD_270,
    REAL_TIME,
    CoreEnvelope,
    core_timestamp,
    decode_form,
    encode_form,
)
from engine.errors import ConfigError

__all__ = ["PayerCredentials", "X12HttpPayer"]

log = logging.getLogger(__name__)


def _status_error(
    resp: httpx.Response, what: str, detail: str = ""
) -> PayerUnavailable | PayerRejected:
    """The error for a status that is not an answer: 408, 429 and 5xx are retryable."""
    status = resp.status_code
    text = f"{what} -> HTTP {status}" + (f" ({detail})" if detail else "")
    if status in (408, 429) or status >= 500:
        return PayerUnavailable(text, retry_after_s=retry_after(resp))
    return PayerRejected(text)


class PayerCredentials:
    """OAuth 2.0 client credentials (engine/adapters/oauth2.py), its failures in payer terms:
    the token endpoint's 5xx, 408, 429 and network errors make the payer unavailable, anything
    else (a wrong secret) a rejected request."""

    def __init__(
        self, config: OAuth2Auth, secret: str, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        #: the shared token cache (its ``fetches`` count and ``clock`` are what tests look at)
        self.credentials = ClientCredentials(config, secret, clock=clock)

    async def authorization(self, client: httpx.AsyncClient, payer: str) -> str:
        """``Bearer <token>``, fetching a token when none is cached or it is about to expire."""
        what = f"{payer}: oauth2 token endpoint"
        try:
            return await self.credentials.authorization(client)
        except TokenError as exc:
            if exc.response is not None:
                raise _status_error(exc.response, what) from exc
            if exc.retryable:
                raise PayerUnavailable(f"{payer}: {exc.detail}") from exc
            raise PayerRejected(f"{payer}: {exc.detail}") from exc

    def invalidate(self) -> None:
        """Forget the token (the server answered 401 to it)."""
        self.credentials.invalidate()


class X12HttpPayer:
    """One payer's real-time endpoint; one HTTP connection pool, ``max_concurrency`` requests
    in flight. ``name`` is the payer ID (or a label); it is the CORE ReceiverID when the config
    has no ``receiver_id``."""

    def __init__(
        self,
        name: str,
        config: PayerConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        if config.url is None:
            raise ConfigError(f"payer {name!r}: an x12-http payer needs a url")
        self.name = name
        self.config = config
        self.url: str = config.url
        env = os.environ if environ is None else environ
        self.auth: PayerCredentials | None = None
        if isinstance(config.auth, OAuth2Auth):
            secret = env.get(config.auth.client_secret_env, "")
            if not secret:
                raise ConfigError(
                    f"payer {name!r}: environment variable {config.auth.client_secret_env} is "
                    "not set (it holds the client secret; payer files never do)"
                )
            self.auth = PayerCredentials(config.auth, secret)
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._limit: asyncio.Semaphore | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.config.timeout_s,
                verify=tls_verify(self.config.verify_tls),  # the system trust store
                transport=self._transport,
                headers={"User-Agent": "hl7-engine"},
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def exchange(self, x270: str, *, timeout_s: float = 20.0) -> str:
        if self._limit is None:
            self._limit = asyncio.Semaphore(self.config.max_concurrency)
        async with self._limit:
            payload_id = str(uuid4())
            started = time.monotonic()
            outcome = "error"
            try:
                async with asyncio.timeout(timeout_s):
                    answer = await self._exchange(x270, payload_id, timeout_s)
                outcome = "answered"
                return answer
            except TimeoutError as exc:
                outcome = "timeout"
                raise PayerUnavailable(f"{self.name}: no answer within {timeout_s:g} s") from exc
            except PayerUnavailable:
                outcome = "unavailable"
                raise
            except PayerRejected:
                outcome = "rejected"
                raise
            finally:
                log.log(
                    logging.INFO if outcome == "answered" else logging.WARNING,
                    "payer exchange %s",
                    outcome,
                    extra={
                        "payer": self.name,
                        "payload_id": payload_id,
                        "duration_ms": round((time.monotonic() - started) * 1000),
                    },
                )

    def _request(self, x270: str, payload_id: str) -> tuple[str, bytes]:
        if self.config.envelope == "plain":
            return EDI_X12, x270.encode("utf-8")
        envelope = CoreEnvelope(
            payload_type=PAYLOAD_270,
            processing_mode=REAL_TIME,
            payload_id=payload_id,
            timestamp=core_timestamp(),
            sender_id=self.config.sender_id,
            receiver_id=self.config.receiver_id or self.name,
            core_rule_version=CORE_RULE_VERSION,
            payload=x270,
        )
        return encode_form(envelope.fields())

    async def _exchange(self, x270: str, payload_id: str, timeout_s: float) -> str:
        client = self._http()
        content_type, body = self._request(x270, payload_id)
        headers = {"Content-Type": content_type}
        for attempt in (1, 2):
            if self.auth is not None:
                headers["Authorization"] = await self.auth.authorization(client, self.name)
            try:
                resp = await client.post(self.url, content=body, headers=headers, timeout=timeout_s)
            except httpx.TimeoutException as exc:
                raise PayerUnavailable(f"{self.name}: timeout ({type(exc).__name__})") from exc
            except httpx.RequestError as exc:
                raise PayerUnavailable(f"{self.name}: {type(exc).__name__}") from exc
            if resp.status_code == 401 and attempt == 1 and self.auth is not None:
                log.info("payer 401: fetching a new token", extra={"payer": self.name})
                self.auth.invalidate()
                continue
            return self._answer(resp, payload_id)
        raise AssertionError("unreachable")

    def _answer(self, resp: httpx.Response, payload_id: str) -> str:
        content_type = resp.headers.get("content-type", "")
        envelope: CoreEnvelope | None = None
        detail = ""
        if content_type.startswith("multipart/"):
            try:
                envelope = CoreEnvelope.from_fields(
                    decode_form(content_type, resp.content), response=True
                )
            except ValueError as exc:
                if resp.is_success:
                    raise PayerUnavailable(
                        f"{self.name}: unreadable CORE response ({exc})"
                    ) from exc
            else:
                detail = f"CORE ErrorCode {envelope.error_code[:60]}" if envelope.error_code else ""
        if not resp.is_success:
            raise _status_error(resp, self.name, detail)
        if envelope is None:
            text = resp.text
        else:
            if envelope.error_code not in ("", "Success"):
                raise PayerRejected(f"{self.name}: {detail}")
            if envelope.payload_id != payload_id:
                log.warning(
                    "payer answered with another PayloadID",
                    extra={"payer": self.name, "payload_id": payload_id},
                )
            text = envelope.payload
        if not text.strip():
            raise PayerUnavailable(f"{self.name}: HTTP {resp.status_code} without an answer")
        return text
