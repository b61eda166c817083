"""athenahealth (athenaOne REST API): the ``athenahealth`` destination, for documents.

What athena's developer documentation says (docs.athenahealth.com/api; the notes for
docs/EHRS.md list the pages), as applied here:

* **Token**: OAuth 2.0 client credentials at ``{base_url}/oauth2/v1/token`` with the client
  authenticated by HTTP Basic, scope ``athena/service/Athenanet.MDP.*``; a token lives about an
  hour (``expires_in`` 3600). The token endpoint is rate limited per minute per app, so one
  token per client id is shared by every worker process through a file
  (:mod:`engine.adapters.token_cache`): fetched once, used until a minute before it expires,
  refreshed once after a 401; a 429 from the token endpoint is waited out (its Retry-After,
  recorded in the file so no other process asks meanwhile).
* **Hosts**: preview ``https://api.preview.platform.athenahealth.com``, production
  ``https://api.platform.athenahealth.com``; every API path is practice-scoped,
  ``/v1/{practiceid}/...``.
* **Documents**: one document per call, ``POST /v1/{practiceid}/patients/{patientid}/documents``
  as multipart/form-data: the file in ``attachmentcontents``, ``departmentid`` (required for
  every document class), ``documentsubclass`` (our document type mapped through
  the document type table's ``athena`` column, engine/mappings/specs/tables/document_types.yaml
  layered with the site's, overridable per destination), ``internalnote``. athena
  recommends PDF ("the APIs are not able to accept other formats"): a TIFF, JPEG or PNG is
  refused here, permanently, naming its type.
* **Patient**: found by MRN with ``GET /v1/{practiceid}/patients/search?searchterm=<mrn>``
  (the result whose ``mrn`` or ``patientid`` is exactly it), cached ``patient_cache_ttl_s``; no
  match is :meth:`DeliveryResult.unknown_patient` (the delivery waits in *needs patient*).
* **Pacing**: ``requests_per_second`` per practice, a token bucket shared by the deliveries of
  the destinations in one process (athena throttles per app and tablespace); a 429 is retried
  after its Retry-After.

Idempotency: each upload carries ``internalnote`` = ``engine-document <id> sha256:<12 hex>``;
before uploading, the patient's documents are listed (``GET .../patients/{id}/documents``) and
an upload whose marker is already there is not sent again, so a retried delivery whose first
answer was lost does not make a second copy. (Between that check and the upload, at least once.)

Classification: 2xx is delivered; 401 once more with a new token; 408, 429, 5xx and network
errors are retryable (429 and 503 with their Retry-After); any other 4xx is permanent, its detail
the status and athena's ``missingfields`` or its short ``error`` text (never a name, an MRN or
the document). Secrets and tokens are never logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.adapters.destination import DeliveryResult, Payload
from engine.adapters.oauth2 import CachedBearer, TokenError, retry_after
from engine.adapters.token_cache import TokenCooldown, shared_token
from engine.documents.model import DocumentEnvelope, DocumentInfo
from engine.errors import ConfigError, EngineError
from engine.mappings.document_types import DocumentTypes, load_document_types
from engine.settings import Settings, load_settings

__all__ = [
    "AthenaConnection",
    "AthenaDestination",
    "AthenaDestinationConfig",
    "AthenaPractice",
    "AthenaToken",
    "PracticePacer",
    "athena_secret",
]

log = logging.getLogger(__name__)

TOKEN_PATH = "/oauth2/v1/token"
DEFAULT_SCOPE = "athena/service/Athenanet.MDP.*"

_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ID_RE = re.compile(r"^[0-9]{1,12}$")
_MAX_ANSWER_BYTES = 4 * 1024 * 1024


# -- configuration -------------------------------------------------------------------------------


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
        elif code and _ID_RE.match(code) and (self.practice_id is None or code == self.practice_id):
            practice, default_department = code, self.department_id
        else:
            practice, default_department = self.practice_id, self.department_id
        dept = department if department and _ID_RE.match(department) else default_department
        return (practice, dept) if practice and dept else None


class AthenaDestinationConfig(AthenaConnection):
    """A route file's ``type: athenahealth`` destination (documents)."""

    #: our document type -> athena ``documentsubclass``, over the document type table's
    #: ``athena`` column (engine/mappings/specs/tables/document_types.yaml, site-layered)
    document_classes: dict[str, str] = Field(default_factory=dict)
    #: how long a patient found by MRN is remembered
    patient_cache_ttl_s: float = Field(default=300.0, ge=0, le=86_400)
    #: look for the engine's marker among the patient's documents before uploading
    check_existing: bool = True

    @field_validator("document_classes")
    @classmethod
    def _classes(cls, value: dict[str, str]) -> dict[str, str]:
        for ours, theirs in value.items():
            if not re.match(r"^[A-Z][A-Z0-9_]{1,60}$", theirs):
                raise ValueError(
                    f"document_classes[{ours!r}]: {theirs!r} is not an athena documentsubclass "
                    "(upper case, like ADMIN_CONSENT)"
                )
        return value

    def subclass_for(self, document_type: str, table: DocumentTypes | None) -> str | None:
        """athena's ``documentsubclass`` for our type: this destination's override, else the
        type table's subclass, else its class (a class without subclasses, such as ADMIN)."""
        if document_type in self.document_classes:
            return self.document_classes[document_type]
        if table is None or document_type not in table:
            return None
        row = table.get(document_type)
        return row.athena_subclass or row.athena_class


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


def _oauth_error(resp: httpx.Response) -> str:
    try:
        error = resp.json().get("error")
    except (ValueError, AttributeError):
        return ""
    ok = isinstance(error, str) and error.isascii() and len(error) < 40
    return error.replace(" ", "_") if ok else ""


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

    def invalidate(self) -> bool:
        """athena answered 401 to the token: the next call takes a new one (or the one another
        process already fetched)."""
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
        form = {"grant_type": "client_credentials", "scope": cfg.scope}
        try:
            resp = await client.post(
                cfg.token_endpoint,
                data=form,
                auth=httpx.BasicAuth(cfg.client_id, self._secret),
                headers={"Accept": "application/json"},
            )
        except httpx.TimeoutException as exc:
            raise TokenError("athena token endpoint timeout", timeout=True) from exc
        except httpx.RequestError as exc:
            detail = f"athena token endpoint {type(exc).__name__}"
            raise TokenError(detail, retryable=True) from exc
        if resp.status_code != 200:
            error = _oauth_error(resp)
            detail = f"athena token endpoint -> {resp.status_code}"
            detail += f" {error}" if error else ""
            detail += f" (client_id {cfg.client_id!r})"
            if resp.status_code in (429, 503):
                wait = retry_after(resp)
                raise TokenCooldown(detail, retry_after_s=60.0 if wait is None else wait)
            retry = resp.status_code in (408,) or resp.status_code >= 500
            raise TokenError(detail, retryable=retry)
        try:
            body = resp.json()
            token, expires_in = body["access_token"], body.get("expires_in", 3600)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TokenError("athena token response without access_token") from exc
        if not isinstance(token, str) or not token:
            raise TokenError("athena token response without access_token")
        if not isinstance(expires_in, int | float) or expires_in <= 0:
            expires_in = 3600
        self.fetches += 1
        log.info(
            "athena token fetched",
            extra={"client_id": cfg.client_id, "expires_in": expires_in},
        )
        return token, float(expires_in)


# -- pacing --------------------------------------------------------------------------------------


class PracticePacer:
    """Requests to one (API host, practice) spaced ``1/rate`` seconds apart, so no second ever
    sees more than ``rate + 1`` of them (a burst allowance would double that in a sliding
    window, and athena counts per second). One event loop's tasks take turns without a lock (no
    await between reading and booking a slot). Per process: with several worker processes,
    give each its share of athena's limit."""

    _shared: dict[tuple[str, str], PracticePacer] = {}

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._next = 0.0

    @classmethod
    def for_practice(cls, base_url: str, practice: str, rate: float) -> PracticePacer:
        """The process's pacer for one practice (shared by every athena adapter here)."""
        key = (base_url, practice)
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


class _Refused(Exception):
    """Private: stops a delivery early with its result."""

    def __init__(self, result: DeliveryResult) -> None:
        super().__init__(result.detail)
        self.result = result


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
                verify=self.config.verify_tls,
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
        **kwargs: Any,
    ) -> httpx.Response:
        """``method /v1/{practice}{path}`` (or ``path`` as is when it starts with ``/v1/``).
        Raises :class:`TokenError` when no token can be had."""
        client = self.http()
        url = path if path.startswith("/v1/") else f"/v1/{practice}{path}"
        pacer = PracticePacer.for_practice(
            self.config.base_url, practice, self.config.requests_per_second
        )
        for attempt in (1, 2):
            authorization = await self.token.authorization(client)
            await pacer.wait()
            resp = await client.request(
                method, url, headers={"Authorization": authorization}, **kwargs
            )
            if resp.status_code != 401 or attempt == 2:
                return resp
            log.info("athena 401: fetching a new token", extra={"practice": practice})
            self.token.invalidate()
        raise AssertionError("unreachable")


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


# -- the destination -----------------------------------------------------------------------------


@dataclass
class _Cached:
    patient_id: str | None
    until: float


def _marker(doc: DocumentInfo) -> str:
    return f"engine-document {doc.document_id} sha256:{doc.sha256[:12]}"


class AthenaDestination:
    """Uploads documents (kind ``document`` payloads) to athena, one per call."""

    def __init__(
        self,
        name: str,
        config: AthenaDestinationConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        environ: Mapping[str, str] | None = None,
        settings: Settings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.config = config
        env = os.environ if environ is None else environ
        secret = athena_secret(config, f"destination {name}", env)
        self.api = AthenaClient(config, secret, settings=settings, transport=transport)
        self._clock = clock
        self._settings = settings
        self._types: DocumentTypes | None = None
        self._patients: dict[tuple[str, str], _Cached] = {}

    def _type_table(self) -> DocumentTypes:
        """The document type table (built-in and the site's), read at the first delivery."""
        if self._types is None:
            settings = self._settings or load_settings()
            self._types = load_document_types(settings.mappings_dir)
        return self._types

    async def close(self) -> None:
        await self.api.close()

    async def deliver(self, payload: Payload) -> DeliveryResult:
        if payload.kind != "document" or payload.content is None:
            return DeliveryResult.fail(f"athena: cannot deliver a {payload.kind} payload")
        try:
            envelope = DocumentEnvelope.from_bytes(payload.body)
        except (ValueError, KeyError, TypeError):
            return DeliveryResult.fail("athena: payload is not a document envelope")
        try:
            return await self._deliver(envelope.document, payload)
        except _Refused as exc:
            return exc.result
        except TokenError as exc:
            return token_result(exc)
        except httpx.TimeoutException as exc:
            return DeliveryResult.retry(f"athena: timeout ({type(exc).__name__})")
        except httpx.RequestError as exc:
            return DeliveryResult.retry(f"athena: {type(exc).__name__}")

    async def _deliver(self, doc: DocumentInfo, payload: Payload) -> DeliveryResult:
        cfg = self.config
        where = cfg.practice_for(doc.practice, doc.department)
        if where is None:
            return DeliveryResult.fail(
                "athena: no practice and department for the document (set practice_id and "
                "department_id, or the practices table)"
            )
        practice, department = where
        try:
            table = None if doc.document_type in cfg.document_classes else self._type_table()
        except EngineError as exc:
            return DeliveryResult.fail(f"athena: the document type table: {exc}")
        subclass = cfg.subclass_for(doc.document_type, table)
        if subclass is None:
            return DeliveryResult.fail(
                f"athena: no athena class for document type {doc.document_type!r} (the document "
                "type table, or the destination's document_classes)"
            )
        if doc.media_type != "application/pdf":
            return DeliveryResult.fail(
                f"athena: takes PDF documents only, not {doc.media_type} (athena's document "
                "APIs do not accept other formats)"
            )
        patient = await self._patient(practice, doc.patient_mrn)
        if patient is None:
            return DeliveryResult.unknown_patient(
                f"athena: no patient with this MRN in practice {practice}"
            )
        marker = _marker(doc)
        if cfg.check_existing:
            existing = await self._existing(practice, patient, department, marker)
            if existing is not None:
                return DeliveryResult.success(f"athena: document {existing} already there")
        assert payload.content is not None
        content = await payload.content.read()
        form = {
            "departmentid": department,
            "documentsubclass": subclass,
            "internalnote": marker,
        }
        if doc.appointment and _ID_RE.match(doc.appointment):
            form["appointmentid"] = doc.appointment
        name = f"document-{doc.document_id}.pdf"
        resp = await self.api.request(
            "POST",
            practice,
            f"/patients/{patient}/documents",
            data=form,
            files={"attachmentcontents": (name, content, "application/pdf")},
        )
        if resp.status_code == 404:  # the patient went away (merged) since it was cached
            self._patients.pop((practice, doc.patient_mrn), None)
            return DeliveryResult.unknown_patient(
                f"athena: upload -> 404 (patient {patient} not found in practice {practice})"
            )
        result = classify(resp, "upload")
        if result.ok:
            documentid = _field(resp, "documentid")
            detail = f"athena: document {documentid} created" if documentid else result.detail
            return DeliveryResult.success(detail)
        return result

    async def _patient(self, practice: str, mrn: str) -> str | None:
        key = (practice, mrn)
        now = self._clock()
        cached = self._patients.get(key)
        if cached is not None and now < cached.until:
            return cached.patient_id
        resp = await self.api.request(
            "GET", practice, "/patients/search", params={"searchterm": mrn}
        )
        if resp.status_code != 200:
            raise _Refused(classify(resp, "patient search"))
        try:
            rows = resp.json().get("patients") or []
        except (ValueError, AttributeError) as exc:
            raise _Refused(
                DeliveryResult.retry("athena: patient search answer unreadable")
            ) from exc
        ids = {
            str(r.get("patientid"))
            for r in rows
            if isinstance(r, dict) and mrn in (str(r.get("mrn", "")), str(r.get("patientid", "")))
        }
        if len(ids) > 1:
            raise _Refused(
                DeliveryResult.unknown_patient(
                    f"athena: {len(ids)} patients match the MRN in practice {practice}"
                )
            )
        found = next(iter(ids)) if ids else None
        if found is not None:  # a miss is asked again next time: the patient may be added
            self._patients[key] = _Cached(found, now + self.config.patient_cache_ttl_s)
        return found

    async def _existing(
        self, practice: str, patient: str, department: str, marker: str
    ) -> str | None:
        resp = await self.api.request(
            "GET", practice, f"/patients/{patient}/documents", params={"departmentid": department}
        )
        if resp.status_code != 200:
            raise _Refused(classify(resp, "document list"))
        if len(resp.content) > _MAX_ANSWER_BYTES:
            return None
        try:
            docs = resp.json().get("documents") or []
        except (ValueError, AttributeError):
            return None
        for d in docs:
            if isinstance(d, dict) and d.get("internalnote") == marker:
                return str(d.get("documentid", "?"))
        return None


def _field(resp: httpx.Response, name: str) -> str | None:
    try:
        value = resp.json().get(name)
    except (ValueError, AttributeError):
        return None
    return str(value) if isinstance(value, str | int) else None
