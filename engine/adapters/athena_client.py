"""The athenahealth (athenaOne REST API) connection both athena adapters share: the route file
keys they have in common, the client-credentials token, per-practice pacing, and requests.

What athena's developer documentation says (docs.athenahealth.com/api), as applied here:

* **Token**: OAuth 2.0 client credentials at ``{base_url}/oauth2/v1/token`` with the client
  authenticated by HTTP Basic, scope ``athena/service/Athenanet.MDP.*``; a token lives about an
  hour (``expires_in`` 3600). The token endpoint is rate limited per minute per app (a handful
  in preview), so one token per client id is shared by every worker process through a file
  (:mod:`engine.adapters.token_cache`): fetched once, used until a minute before it expires,
  refreshed once after a 401; a 429 from the token endpoint is waited out (its Retry-After,
  recorded in the file so no other process asks meanwhile). No secret or token is logged.
* **Hosts**: preview ``https://api.preview.platform.athenahealth.com``, production
  ``https://api.platform.athenahealth.com``; every API path is practice-scoped,
  ``/v1/{practiceid}/...``.
* **Pacing**: ``requests_per_second`` per practice and process (athena throttles per app).

The destination (documents) is :mod:`engine.adapters.athena`, the pull source
:mod:`engine.adapters.athena_source`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.adapters.destination import DeliveryResult
from engine.adapters.fhir_http import tls_verify
from engine.adapters.oauth2 import CachedBearer, TokenError, request_token, retry_after
from engine.adapters.token_cache import TokenCooldown, shared_token
from engine.errors import ConfigError, EngineError
from engine.settings import Settings, load_settings

__all__ = [
    "DEFAULT_SCOPE",
    "TOKEN_PATH",
    "AnswerTooLarge",
    "AthenaClient",
    "AthenaConnection",
    "AthenaPractice",
    "AthenaToken",
    "PracticePacer",
    "athena_detail",
    "athena_secret",
    "classify",
    "is_athena_id",
    "set_process_share",
    "token_result",
]

log = logging.getLogger(__name__)

TOKEN_PATH = "/oauth2/v1/token"
DEFAULT_SCOPE = "athena/service/Athenanet.MDP.*"

_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ID_RE = re.compile(r"^[0-9]{1,12}$")


def is_athena_id(value: str | None) -> bool:
    """athena's ids (practice, department, patient, appointment) are digits."""
    return bool(value) and _ID_RE.match(value or "") is not None


class AthenaPractice(BaseModel):
    """One row of the site's practice table: our practice code -> athena's ids."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    practice_id: str = Field(pattern=r"^[0-9]{1,12}$")
    department_id: str | None = Field(default=None, pattern=r"^[0-9]{1,12}$")


class AthenaConnection(BaseModel):
    """The keys every athena adapter shares: where, who, and how fast."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: ``https://api.preview.platform.athenahealth.com`` (preview) or
    #: ``https://api.platform.athenahealth.com`` (production)
    base_url: str
    #: default ``{base_url}/oauth2/v1/token``
    token_url: str | None = None
    client_id: str = Field(min_length=1, max_length=200)
    #: the environment variable holding the client secret (never the secret itself)
    client_secret_env: str
    scope: str = Field(default=DEFAULT_SCOPE, min_length=1, max_length=2000)
    #: athena's practice id, when the route serves one practice
    practice_id: str | None = Field(default=None, pattern=r"^[0-9]{1,12}$")
    department_id: str | None = Field(default=None, pattern=r"^[0-9]{1,12}$")
    #: the site's practice table: our practice code (a document's ``practice``) -> athena ids
    practices: dict[str, AthenaPractice] = Field(default_factory=dict)
    #: API requests per second per practice (this process)
    requests_per_second: float = Field(default=5.0, gt=0, le=1000)
    timeout_s: float = Field(default=30.0, gt=0, le=300)
    verify_tls: bool = True

    @field_validator("base_url", "token_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} must start with http:// or https://")
        return value.rstrip("/") if value else value

    @field_validator("client_secret_env")
    @classmethod
    def _env(cls, value: str) -> str:
        if not _ENV_RE.match(value):
            raise ValueError(
                f"{value!r} is not an environment variable name (the file names the variable; "
                "the secret itself never goes in a route file)"
            )
        return value

    @property
    def token_endpoint(self) -> str:
        return self.token_url or self.base_url + TOKEN_PATH

    def practice_for(self, code: str | None, department: str | None) -> tuple[str, str] | None:
        """athena's (practice id, department id) for a document's practice code and department:
        the practice table's row, else the code itself when it is an athena id, else the
        destination's own ``practice_id``; the department given, else the row's, else the
        destination's. None when either is unknown."""
        row = self.practices.get(code) if code else None
        if row is not None:
            practice: str | None = row.practice_id
            default_department = row.department_id or self.department_id
        elif is_athena_id(code) and (self.practice_id is None or code == self.practice_id):
            practice, default_department = code, self.department_id
        else:
            practice, default_department = self.practice_id, self.department_id
        dept = department if is_athena_id(department) else default_department
        return (practice, dept) if practice and dept else None


def athena_secret(config: AthenaConnection, name: str, environ: Mapping[str, str]) -> str:
    """The client secret from its environment variable; ConfigError when it is not set."""
    value = environ.get(config.client_secret_env, "")
    if not value:
        raise ConfigError(
            f"{name!r}: environment variable {config.client_secret_env} is not set (it holds "
            "the athena client secret; route files never do)"
        )
    return value


# -- the token -----------------------------------------------------------------------------------


class AthenaToken(CachedBearer):
    """athena's client-credentials token, one per (token URL, client id, scope) for every
    worker process, through ``VAR_DIR/tokens/athena-<hash>.json``."""

    def __init__(
        self,
        config: AthenaConnection,
        secret: str,
        *,
        settings: Settings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._secret = secret
        self._settings = settings
        self.clock = clock
        self._refused: str | None = None
        #: how many tokens this instance fetched (for tests and metrics)
        self.fetches = 0

    def invalidate(self, refused: str | None = None) -> bool:
        """athena answered 401 to ``refused`` (the token a request carried; default: the one
        held): the next call takes a new one (or the one another process already fetched). A
        request sent with an older token than the one held now refuses nothing: the token held
        came after it."""
        if refused is not None and refused != self._token:
            return True
        self._refused, self._token = self._token, None
        return True

    def cache_file(self, settings: Settings) -> Path:
        cfg = self.config
        raw = f"{cfg.token_endpoint}\n{cfg.client_id}\n{cfg.scope}".encode()
        return settings.var_dir / "tokens" / f"athena-{hashlib.sha256(raw).hexdigest()[:32]}.json"

    async def _renew(self, client: httpx.AsyncClient) -> None:
        if self._settings is None:
            try:
                self._settings = load_settings()
            except EngineError as exc:
                raise TokenError(f"athena: {exc}") from exc

        async def fetch() -> tuple[str, float]:
            return await self._fetch(client)

        got = await shared_token(
            self.cache_file(self._settings), fetch, clock=self.clock, refused=self._refused
        )
        self._token, self._use_until = got.token, got.use_until
        if got.fetched:
            self._refused = None

    async def _fetch(self, client: httpx.AsyncClient) -> tuple[str, float]:
        cfg = self.config

        def refused(resp: httpx.Response, error: str, detail: str) -> TokenError:
            if resp.status_code in (429, 503):
                wait = retry_after(resp)
                return TokenCooldown(detail, retry_after_s=60.0 if wait is None else wait)
            retry = resp.status_code in (408,) or resp.status_code >= 500
            return TokenError(detail, retryable=retry)

        token, expires_in = await request_token(
            client,
            cfg.token_endpoint,
            {"grant_type": "client_credentials", "scope": cfg.scope},
            label="athena token endpoint",
            client_id=cfg.client_id,
            default_expires_in=3600,
            refused=refused,
            auth=httpx.BasicAuth(cfg.client_id, self._secret),
        )
        self.fetches += 1
        log.info(
            "athena token fetched",
            extra={"client_id": cfg.client_id, "expires_in": expires_in},
        )
        return token, float(expires_in)


# -- pacing --------------------------------------------------------------------------------------


def set_process_share(processes: int) -> None:
    """This process is one of ``processes`` worker processes of one ``engine serve``: each paces
    every practice at its share of ``requests_per_second``, so that together they keep it."""
    PracticePacer.processes = max(1, processes)


class PracticePacer:
    """Requests to one (API host, practice) spaced ``1/rate`` seconds apart, so no second ever
    sees more than ``rate + 1`` of them (a burst allowance would double that in a sliding
    window, and athena counts per second). One event loop's tasks take turns without a lock (no
    await between reading and booking a slot). Per process, at its share of the rate
    (:func:`set_process_share`: ``engine serve``'s worker processes); with several nodes, give
    each node its share of athena's limit."""

    _shared: dict[tuple[str, str], PracticePacer] = {}
    #: how many processes share each practice's rate (engine serve's worker processes)
    processes = 1

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._next = 0.0

    @classmethod
    def for_practice(cls, base_url: str, practice: str, rate: float) -> PracticePacer:
        """The process's pacer for one practice (shared by every athena adapter here)."""
        key = (base_url, practice)
        rate = rate / cls.processes
        pacer = cls._shared.get(key)
        if pacer is None or pacer.rate != rate:
            pacer = cls._shared[key] = cls(rate)
        return pacer

    async def wait(self) -> None:
        now = time.monotonic()
        slot = max(now, self._next)
        self._next = slot + 1 / self.rate
        if slot > now:
            await asyncio.sleep(slot - now)


# -- the HTTP client shared by the destination and the source ------------------------------------


def token_result(exc: TokenError) -> DeliveryResult:
    """A token failure as a delivery result (a cooldown with its wait)."""
    if isinstance(exc, TokenCooldown):
        return DeliveryResult.retry(f"athena: {exc.detail}", after_s=exc.retry_after_s)
    kind = DeliveryResult.retry if exc.retryable else DeliveryResult.fail
    return kind(f"athena: {exc.detail}")


class AthenaClient:
    """Practice-scoped requests with the shared token, pacing, and one retry after a 401."""

    def __init__(
        self,
        config: AthenaConnection,
        secret: str,
        *,
        settings: Settings | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        #: the token, shared with the other processes through its file
        self.token = AthenaToken(config, secret, settings=settings)
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    def http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.config.base_url,
                timeout=self.config.timeout_s,
                verify=tls_verify(self.config.verify_tls),  # the system trust store
                transport=self._transport,
                headers={"Accept": "application/json", "User-Agent": "hl7-engine"},
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def request(
        self,
        method: str,
        practice: str,
        path: str,
        *,
        max_bytes: int | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """``method /v1/{practice}{path}`` (or ``path`` as is when it starts with ``/v1/``).
        Raises :class:`TokenError` when no token can be had; with ``max_bytes``, the answer is
        streamed and :class:`AnswerTooLarge` raised once it passes that (read no further)."""
        client = self.http()
        url = path if path.startswith("/v1/") else f"/v1/{practice}{path}"
        pacer = PracticePacer.for_practice(
            self.config.base_url, practice, self.config.requests_per_second
        )
        for attempt in (1, 2):
            await pacer.wait()
            authorization = await self.token.authorization(client)
            headers = {"Authorization": authorization}
            if max_bytes is None:
                resp = await client.request(method, url, headers=headers, **kwargs)
            else:
                resp = await _capped(client, method, url, headers, max_bytes, **kwargs)
            if resp.status_code != 401 or attempt == 2:
                return resp
            log.info("athena 401: fetching a new token", extra={"practice": practice})
            self.token.invalidate(authorization.removeprefix("Bearer "))
        raise AssertionError("unreachable")


class AnswerTooLarge(Exception):
    """An answer longer than the caller's ``max_bytes`` (decoded): not read further."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"answer larger than {limit} bytes")
        self.limit = limit


#: headers that describe the body on the wire, not the decoded copy kept
_WIRE_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})


async def _capped(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    headers: dict[str, str],
    limit: int,
    **kwargs: Any,
) -> httpx.Response:
    """The answer with its body read in full only when it is at most ``limit`` bytes decoded
    (a declared Content-Length past it is refused unread): a huge or endless page must not take
    the process's memory (a 200 MB page once took 701 MB)."""
    async with client.stream(method, url, headers=headers, **kwargs) as streamed:
        declared = streamed.headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > limit:
            raise AnswerTooLarge(limit)
        body = bytearray()
        async for chunk in streamed.aiter_bytes():
            body += chunk
            if len(body) > limit:
                raise AnswerTooLarge(limit)
    kept = [(k, v) for k, v in streamed.headers.multi_items() if k.lower() not in _WIRE_HEADERS]
    return httpx.Response(
        streamed.status_code, headers=kept, content=bytes(body), request=streamed.request
    )


def athena_detail(resp: httpx.Response) -> str:
    """athena's reason for a refusal, PHI-free: ``missingfields`` names, or a short ``error``
    text without digits (an id or a date could be a patient's)."""
    try:
        body = resp.json()
    except ValueError:
        return ""
    if not isinstance(body, dict):
        return ""
    missing = body.get("missingfields")
    if isinstance(missing, list) and missing:
        names = [m for m in missing if isinstance(m, str) and re.match(r"^[a-z_]{1,40}$", m)]
        if names:
            return "missing " + ", ".join(names)
    error = body.get("error") or body.get("detailedmessage")
    if isinstance(error, str) and error.isascii() and len(error) <= 80:
        if not re.search(r"[0-9@]", error):
            return error.strip()
    return ""


def classify(resp: httpx.Response, what: str) -> DeliveryResult:
    status = resp.status_code
    detail = f"athena: {what} -> {status}"
    if 200 <= status < 300:
        return DeliveryResult.success(detail)
    reason = athena_detail(resp)
    if reason:
        detail += f" ({reason})"
    if status in (408, 429) or status >= 500:
        return DeliveryResult.retry(detail, after_s=retry_after(resp))
    return DeliveryResult.fail(detail)
