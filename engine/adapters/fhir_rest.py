"""The FHIR REST destination: delivers a transaction Bundle to a FHIR R4 server over HTTP.

Two modes (:class:`FhirDestination`, the config model of a route file's ``type: fhir``):

``transaction``
    POST the Bundle to the base URL (https://hl7.org/fhir/R4/http.html#transaction): the server
    applies every entry or none. The engine's bundles use conditional updates
    (``PUT Patient?identifier=system|value``) and updates by id (``PUT RelatedPerson/<id>``), so
    posting the same Bundle twice leaves the server as posting it once.
``conditional``
    for servers without transactions: each entry is sent as its own request, ``entry.request``'s
    method and URL (http.html#cond-update), in an order where a resource comes before those that
    refer to it, and references to an earlier entry's ``fullUrl`` (``urn:uuid:...``), in its
    resource and in its conditional URL (``Coverage?identifier=M1&beneficiary=urn:uuid:..``),
    rewritten to the ``Type/id`` the server answered with (its Location header, else the
    returned resource).
    Not atomic: entries written before a failure stay written; a retry sends them again.

Classification (``DeliveryResult``): 2xx is delivered; 408, 429, 5xx, timeouts and connection
errors are retryable (with the server's Retry-After when it sends one); any other status is
permanent, its detail the status and the OperationOutcome's first ``issue.code`` (never its
diagnostics, which may quote the data). A 401 fetches a new token (oauth2 or smart-backend)
and tries once more.

Documents (payload kind ``document``) go through :mod:`engine.adapters.fhir_documents`: the
patient matched by MRN, then a DocumentReference created inline or after a Binary, as the
server's CapabilityStatement (or the route's ``document_mode``) says.

Authentication: none; a bearer token read from the environment variable ``token_env`` names;
the OAuth 2.0 client credentials grant (RFC 6749 section 4.4) with the secret from
``client_secret_env``, the token cached until shortly before ``expires_in`` runs out; or SMART
Backend Services (``smart-backend``: a JWT client assertion signed with the engine's key, the
token shared by the worker processes through a file; engine/adapters/smart.py).
Each request carries the payload's idempotency key as ``X-Correlation-Id`` (http.html#custom) and
``Idempotency-Key`` (IETF draft-ietf-httpapi-idempotency-key-header), for servers that use them;
in conditional mode each entry's request gets the key plus ``/<entry number>``.

Incomplete: no batch Bundles; the conditional mode does not send ``If-Match`` versions of its
own.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
import time
from collections.abc import Callable, Mapping, Set
from typing import Annotated, Any, Literal, Protocol
from urllib.parse import quote, unquote

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Field

from engine.adapters.auth import BearerAuth, OAuth2Auth, SmartBackendAuth
from engine.adapters.auth import NoAuth as NoAuthConfig
from engine.adapters.destination import DeliveryResult, Payload
from engine.adapters.fhir_documents import Body, DocumentMode, DocumentWriter, PatientCache
from engine.adapters.fhir_http import (
    FHIR_JSON,
    BaseUrl,
    classify,
    fhir_client,
    lean_transport,
)
from engine.adapters.http_pool import DirectClient
from engine.adapters.oauth2 import ClientCredentials, TokenError
from engine.adapters.smart import SmartBackend
from engine.errors import ConfigError
from engine.settings import Settings

__all__ = [
    "AuthProvider",
    "BearerToken",
    "FhirDestination",
    "FhirRestDestination",
    "NoAuth",
    "OAuth2ClientCredentials",
    "SmartBackendServices",
]

log = logging.getLogger(__name__)


# -- configuration -------------------------------------------------------------------------------

FhirAuth = Annotated[
    NoAuthConfig | BearerAuth | OAuth2Auth | SmartBackendAuth, Field(discriminator="type")
]


class FhirDestination(BaseModel):
    """A route file's ``type: fhir`` destination: a FHIR R4 REST server
    (https://hl7.org/fhir/R4/http.html).

    ``transaction`` POSTs the Bundle to ``base_url`` (http.html#transaction: all or nothing);
    ``conditional`` sends each entry as its own request (``entry.request``: conditional updates
    ``PUT Patient?identifier=system|value``, http.html#cond-update), for servers without
    transactions. That is not atomic: entries sent before a failure stay written, and a retry
    sends them again (harmless: each is an update).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: BaseUrl
    mode: Literal["transaction", "conditional"] = "transaction"
    auth: FhirAuth = Field(default_factory=NoAuthConfig)
    timeout_s: float = Field(default=30.0, gt=0)
    verify_tls: bool = True
    #: documents: ``auto`` (Binary first when the CapabilityStatement lists Binary create, else
    #: inline), ``inline`` (attachment.data) or ``binary``
    document_mode: DocumentMode = "auto"
    #: documents: the identifier system of the server's MRNs (``Patient?identifier=system|mrn``);
    #: unset, the mapped DocumentReference's subject.identifier.system, else the MRN alone
    mrn_system: str | None = Field(default=None, min_length=1, max_length=300)
    #: documents: how long a patient found by MRN is remembered (0: searched every time)
    patient_cache_ttl_s: float = Field(default=300.0, ge=0, le=86_400)


class _Refused(Exception):
    """Private: stops a delivery early with its result (never leaves this module)."""

    def __init__(self, result: DeliveryResult) -> None:
        super().__init__(result.detail)
        self.result = result


# -- authentication ------------------------------------------------------------------------------


class AuthProvider(Protocol):
    """Gives the Authorization header value; ``invalidate`` after a 401 asks for a new one."""

    async def authorization(self, client: httpx.AsyncClient) -> str | None: ...

    def invalidate(self, refused: str | None = None) -> bool:
        """Forget the credential ``refused`` (the token a request carried and got 401 for; None:
        the one held); True when a new one may differ (worth one more try). A request that
        carried an older token than the one held now refuses nothing: another request renewed
        it meanwhile, and forgetting that one would make a token request per request in flight."""
        ...


class NoAuth:
    """No Authorization header."""

    async def authorization(self, client: httpx.AsyncClient) -> str | None:
        return None

    def invalidate(self, refused: str | None = None) -> bool:
        return False


class BearerToken:
    """A fixed bearer token (RFC 6750), read once from the environment."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def authorization(self, client: httpx.AsyncClient) -> str | None:
        return f"Bearer {self._token}"

    def invalidate(self, refused: str | None = None) -> bool:
        return False  # the same token again would get the same 401


class OAuth2ClientCredentials:
    """OAuth 2.0 client credentials (engine/adapters/oauth2.py), its failures as delivery
    results: the token endpoint's 5xx, 408, 429 and network errors are retryable; any other error
    (``invalid_client``: a wrong secret) is permanent."""

    def __init__(
        self, config: OAuth2Auth, secret: str, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        #: the shared token cache (its ``fetches`` count and ``clock`` are what tests look at)
        self.credentials = ClientCredentials(config, secret, clock=clock)

    async def authorization(self, client: httpx.AsyncClient) -> str | None:
        try:
            return await self.credentials.authorization(client)
        except TokenError as exc:
            if exc.response is not None:
                result = _classify(exc.response, "oauth2 token endpoint")
                raise _Refused(
                    result if not result.ok else DeliveryResult.fail(result.detail)
                ) from exc
            kind = DeliveryResult.retry if exc.retryable else DeliveryResult.fail
            raise _Refused(kind(f"fhir: {exc.detail}")) from exc

    def invalidate(self, refused: str | None = None) -> bool:
        return self.credentials.invalidate(refused)


class SmartBackendServices:
    """SMART Backend Services (engine/adapters/smart.py), its failures as delivery results that
    name the OAuth error: retryable or not as :class:`~engine.adapters.smart.SmartBackend` says."""

    def __init__(self, smart: SmartBackend) -> None:
        #: the token, shared with the other processes through its file
        self.smart = smart

    async def authorization(self, client: httpx.AsyncClient) -> str | None:
        try:
            return await self.smart.authorization(client)
        except TokenError as exc:
            kind = DeliveryResult.retry if exc.retryable else DeliveryResult.fail
            raise _Refused(kind(f"fhir: {exc.detail}")) from exc

    def invalidate(self, refused: str | None = None) -> bool:
        return self.smart.invalidate(refused)


def _env(environ: Mapping[str, str], var: str, destination: str) -> str:
    value = environ.get(var, "")
    if not value:
        raise ConfigError(
            f"destination {destination!r}: environment variable {var} is not set (it holds the "
            "credential; route files never do)"
        )
    return value


def auth_provider(
    config: FhirDestination,
    destination: str,
    environ: Mapping[str, str],
    settings: Settings | None = None,
) -> AuthProvider:
    """The provider for a destination's ``auth``; ConfigError when its secret is not set."""
    auth = config.auth
    if isinstance(auth, BearerAuth):
        return BearerToken(_env(environ, auth.token_env, destination))
    if isinstance(auth, OAuth2Auth):
        return OAuth2ClientCredentials(auth, _env(environ, auth.client_secret_env, destination))
    if isinstance(auth, SmartBackendAuth):  # the settings (keys, var dir) read at first use
        return SmartBackendServices(SmartBackend(auth, config.base_url, settings=settings))
    return NoAuth()


# -- classifying answers -------------------------------------------------------------------------


_classify = classify  # the shared rules (engine/adapters/fhir_http.py)


# -- conditional mode helpers --------------------------------------------------------------------


def _references(node: Any, into: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str):
            into.add(ref)
        for v in node.values():
            _references(v, into)
    elif isinstance(node, list):
        for v in node:
            _references(v, into)


def _rewrite(node: Any, resolved: Mapping[str, str]) -> Any:
    """A copy of ``node`` with every ``reference`` to a resolved fullUrl replaced."""
    if isinstance(node, dict):
        out = {k: _rewrite(v, resolved) for k, v in node.items()}
        ref = node.get("reference")
        if isinstance(ref, str) and ref in resolved:
            out["reference"] = resolved[ref]
        return out
    if isinstance(node, list):
        return [_rewrite(v, resolved) for v in node]
    return node


def _url_placeholders(url: str, fulls: Set[str]) -> list[str]:
    """The entries' fullUrls a conditional URL names as search values (``beneficiary=urn:uuid:..``,
    engine/mappings/entries.py); never ``identifier``, whose value is data."""
    _path, _, query = url.partition("?")
    out = []
    for pair in query.split("&") if query else ():
        name, _, value = pair.partition("=")
        if name != "identifier" and unquote(value) in fulls:
            out.append(unquote(value))
    return out


def _url_with(url: str, resolved: Mapping[str, str], fulls: Set[str]) -> str | None:
    """A conditional URL with each entry it names (:func:`_url_placeholders`) replaced by the
    ``Type/id`` the server gave that entry; None when one has none yet."""
    path, _, query = url.partition("?")
    if not query:
        return url
    pairs = []
    for pair in query.split("&"):
        name, eq, value = pair.partition("=")
        if name != "identifier" and unquote(value) in fulls:
            target = resolved.get(unquote(value))
            if target is None:
                return None
            value = quote(target, safe="/")
        pairs.append(f"{name}{eq}{value}")
    return f"{path}?{'&'.join(pairs)}"


def dependency_order(entries: list[dict[str, Any]]) -> list[int]:
    """Entry indexes, each after the entries whose fullUrl it refers to, in its resource or its
    conditional URL (stable; a cycle keeps the Bundle's order for what remains)."""
    full = {str(e["fullUrl"]): i for i, e in enumerate(entries) if e.get("fullUrl")}
    deps: list[set[int]] = []
    for i, e in enumerate(entries):
        refs: set[str] = set()
        _references(e.get("resource"), refs)
        request = e.get("request")
        if isinstance(request, dict) and isinstance(request.get("url"), str):
            refs.update(_url_placeholders(request["url"], full.keys()))
        deps.append({full[r] for r in refs if r in full and full[r] != i})
    done: set[int] = set()
    order: list[int] = []
    while len(order) < len(entries):
        ready = [i for i in range(len(entries)) if i not in done and deps[i] <= done]
        if not ready:  # a cycle: fall back to the Bundle's order
            ready = [i for i in range(len(entries)) if i not in done]
        order.append(ready[0])
        done.add(ready[0])
    return order


def _resolved_id(resp: httpx.Response, rtype: str, url: str) -> str | None:
    """``Type/id`` of the resource a write answered with (Location, body, or a ``Type/id`` URL)."""
    location = resp.headers.get("location") or resp.headers.get("content-location") or ""
    parts = location.split("/")
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == rtype and parts[i + 1]:
            return f"{rtype}/{parts[i + 1]}"
    try:
        body = orjson.loads(resp.content) if resp.content else None
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict) and body.get("resourceType") == rtype and body.get("id"):
        return f"{rtype}/{body['id']}"
    if "?" not in url and url.count("/") == 1:
        return url
    return None


#: what a conditional-mode entry may ask (http-verb, https://hl7.org/fhir/R4/valueset-http-verb.html,
#: without HEAD); its request line carries it, the server's token with it
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})

#: a URL with a scheme (``https://other.example/...``), not one relative to the base
_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")

_CONDITIONAL_HEADERS = {
    "ifNoneExist": "If-None-Exist",
    "ifMatch": "If-Match",
    "ifNoneMatch": "If-None-Match",
    "ifModifiedSince": "If-Modified-Since",
}


# -- the destination -----------------------------------------------------------------------------


class FhirRestDestination:
    """Delivers FHIR Bundles to one FHIR server; one HTTP connection pool per destination."""

    def __init__(
        self,
        name: str,
        config: FhirDestination,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        environ: Mapping[str, str] | None = None,
        settings: Settings | None = None,
        verify: ssl.SSLContext | None = None,
    ) -> None:
        self.name = name
        self.config = config
        env = os.environ if environ is None else environ
        self.auth = auth_provider(config, name, env, settings)
        self._transport = transport
        self._verify: ssl.SSLContext | bool = config.verify_tls if verify is None else verify
        self._client: httpx.AsyncClient | None = None
        self._direct: DirectClient | None = None
        #: documents: patient cache, the server's mode (engine/adapters/fhir_documents.py)
        self.documents = DocumentWriter(
            self._send,
            mrn_system=config.mrn_system,
            mode=config.document_mode,
            patients=PatientCache(ttl_s=config.patient_cache_ttl_s),
        )

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            lean = lean_transport(self._verify) if self._transport is None else None
            self._client = fhir_client(
                base_url=self.config.base_url + "/",
                timeout_s=self.config.timeout_s,
                verify=self._verify,
                transport=self._transport or lean,
            )
            # the engine's pool takes requests straight (a test's transport, or a proxy's
            # httpcore, goes through httpx's client): engine/adapters/http_pool.py says why
            self._direct = DirectClient(lean, self._client) if lean is not None else None
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = self._direct = None

    async def deliver(self, payload: Payload) -> DeliveryResult:
        if payload.kind not in ("fhir-bundle", "document"):
            return DeliveryResult.fail(f"fhir: cannot deliver a {payload.kind} payload")
        try:
            if payload.kind == "document":
                result = await self.documents.write(payload)
            elif self.config.mode == "transaction":
                result = await self._transaction(payload)
            else:
                result = await self._conditional(payload)
        except _Refused as exc:
            result = exc.result
        except (httpx.LocalProtocolError, httpx.InvalidURL, UnicodeEncodeError) as exc:
            # refused before a byte was sent (a line break in a header, a method that is no
            # HTTP token, a URL that cannot be one): the same payload would be refused again
            result = DeliveryResult.fail(f"fhir: request not sendable ({type(exc).__name__})")
        except httpx.TimeoutException as exc:
            result = DeliveryResult.retry(f"fhir: timeout ({type(exc).__name__})")
        except httpx.RequestError as exc:
            result = DeliveryResult.retry(f"fhir: {type(exc).__name__}")
        return result  # the dispatcher logs the outcome, for every kind of destination

    async def _send(
        self,
        method: str,
        url: str,
        payload: Payload,
        body: Body | None,
        headers: Mapping[str, str] | None = None,
        *,
        part: str = "",
    ) -> httpx.Response:
        """One request, with auth; after a 401 a new credential (if any) and one more try.

        ``part`` tells the requests of one payload apart (conditional mode: the entry number), so
        each has an idempotency key of its own that stays the same on every attempt.
        """
        client = self._http()
        key = payload.idempotency_key + (f"/{part}" if part else "")
        h = {"X-Correlation-Id": key, "Idempotency-Key": key, **(headers or {})}
        if body is not None and "Content-Type" not in h:
            h["Content-Type"] = payload.content_type or FHIR_JSON
        for attempt in (1, 2):
            authorization = await self.auth.authorization(client)
            if authorization:
                h["Authorization"] = authorization
            if callable(body):  # a stream, started again on a retry: only httpx's client
                resp = await client.request(method, url, content=body(), headers=h)
            elif self._direct is not None:
                resp = await self._direct.request(method, url, content=body, headers=h)
            else:
                resp = await client.request(method, url, content=body, headers=h)
            refused = authorization.removeprefix("Bearer ") if authorization else None
            if resp.status_code != 401 or attempt == 2 or not self.auth.invalidate(refused):
                return resp
            log.info("fhir 401: fetching a new token", extra={"destination": self.name})
        raise AssertionError("unreachable")

    async def _transaction(self, payload: Payload) -> DeliveryResult:
        resp = await self._send("POST", self.config.base_url, payload, payload.body)
        return _classify(resp, "transaction")

    async def _conditional(self, payload: Payload) -> DeliveryResult:
        try:
            bundle = orjson.loads(payload.body)
            entries = bundle.get("entry") or []
            if not isinstance(entries, list):
                raise TypeError("entry is not a list")
        except (orjson.JSONDecodeError, AttributeError, TypeError):
            return DeliveryResult.fail("fhir: payload is not a FHIR Bundle")
        resolved: dict[str, str] = {}
        fulls = {str(e["fullUrl"]) for e in entries if isinstance(e, dict) and e.get("fullUrl")}
        for done, i in enumerate(dependency_order(entries)):
            entry = entries[i]
            request = entry.get("request") or {}
            method = str(request.get("method") or "PUT").upper()
            url = str(request.get("url") or "").lstrip("/")
            resource = entry.get("resource")
            rtype = resource.get("resourceType", "?") if isinstance(resource, dict) else "?"
            if method not in _METHODS:  # Bundle.entry.request.method's codes (http-verb)
                return DeliveryResult.fail(f"fhir: entry {i + 1} has no FHIR request.method")
            what = f"entry {i + 1} ({method} {rtype})"
            if not url:
                return DeliveryResult.fail(f"fhir: {what} has no request.url")
            if _ABSOLUTE.match(url):  # relative to the base (entry.request.url); never elsewhere
                if not url.startswith(self.config.base_url + "/"):
                    return DeliveryResult.fail(
                        f"fhir: {what}: request.url is outside the destination's base URL"
                    )
                url = url.removeprefix(self.config.base_url + "/")
            searched = _url_with(url, resolved, fulls)
            if searched is None:
                return DeliveryResult.fail(
                    f"fhir: {what}: its URL names an entry whose id the server did not give"
                )
            url = searched
            body = None
            if resource is not None and method in ("PUT", "POST", "PATCH"):
                body = orjson.dumps(_rewrite(resource, resolved))
            headers = {
                h: str(request[k]) for k, h in _CONDITIONAL_HEADERS.items() if request.get(k)
            }
            resp = await self._send(method, url, payload, body, headers, part=str(i + 1))
            result = _classify(resp, what)
            if not result.ok:
                return DeliveryResult(
                    False,
                    result.retryable,
                    f"{result.detail}, after {done} of {len(entries)} entries",
                    result.retry_after_s,
                )
            full = entry.get("fullUrl")
            if isinstance(full, str) and full:
                target = _resolved_id(resp, rtype, url)
                if target is not None:
                    resolved[full] = target
        return DeliveryResult.success(f"fhir: {len(entries)} entries -> 2xx")
