"""A stub FHIR R4 server that speaks real HTTP, for tests and ``make run`` (in memory only).

Enough of the RESTful API (https://hl7.org/fhir/R4/http.html) for the bundles the engine writes:

* ``POST {base}`` with a transaction Bundle (http.html#transaction): every entry is applied or
  none; references to an entry's ``fullUrl`` are rewritten to the ``Type/id`` it got; the answer
  is a transaction-response Bundle with each ``entry.response.status``, ``location`` and ``etag``;
* ``PUT {base}/{type}?identifier=system|value``: conditional update (http.html#cond-update):
  no match creates (201), one match updates (200), several answer 412; the URL may add the
  search parameters below (engine/sim/fhir_search.py), in a transaction naming another entry
  by its ``fullUrl``;
* ``PUT {base}/{type}/{id}`` update or create; ``POST {base}/{type}`` create;
* ``GET {base}/{type}/{id}`` read; ``GET {base}/{type}?identifier=...`` search (a searchset),
  also by ``date`` (an Appointment's start, by day), ``patient``/``beneficiary``/``payor`` and
  ``status``,
  paged by ``_count`` with a ``next`` link (http.html#search, search.html#prefix);

Test switches (not FHIR): ``POST {base}/$fail`` with ``{"status": 503, "count": N}`` makes the
next N requests answer that status (optionally after ``"delay_s"``, with a ``"retry_after"``);
``{"drop": N}`` makes the next N writes be applied and their connection then cut mid-answer (the
client cannot tell it was applied); ``{"latency_s": S}`` makes every request wait S seconds
once its body is read (a slow server: a write whose client timed out meanwhile is applied all
the same; 0 ends it); ``{"clear": true}`` drops the failures, drops and latency still to come;
``GET {base}/$log`` lists the write requests received, in order, with ids, identifiers and
idempotency keys only; ``POST {base}/$reset`` forgets everything.
:attr:`StubFhirState.accepted_tokens`, when set, makes every request need
``Authorization: Bearer <one of them>`` (else 401).

A write carrying an ``Idempotency-Key`` header (IETF draft-ietf-httpapi-idempotency-key-header)
is applied once: the same key again gets the first 2xx answer replayed, logged with ``replayed``.

Incomplete: no search parameters but those above, no ``_include``; no history, versioned reads,
If-Match, PATCH or batch Bundles; no validation beyond ``resourceType``.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import threading
from collections.abc import Callable, Iterator, Mapping, Set
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlencode

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine.sim.cut_response import CutResponse
from engine.sim.fhir_index import IdentifierIndex
from engine.sim.fhir_search import Problem as _Problem
from engine.sim.fhir_search import matches, resolve_placeholders
from engine.sim.server_thread import ServerThread

__all__ = [
    "Failure",
    "StubFhirServer",
    "StubFhirState",
    "create_stub_fhir_app",
    "run_stub_fhir",
    "running_stub_fhir",
    "take_failure",
]

_FHIR_JSON = "application/fhir+json"
_STATUS_TEXT = {200: "200 OK", 201: "201 Created", 204: "204 No Content"}


@dataclass
class Failure:
    """An injected failure: the next ``count`` requests answer ``status`` after ``delay_s`` (200:
    only slow), with Retry-After when ``retry_after`` is given (this stub's and Epic's)."""

    status: int
    count: int
    delay_s: float
    retry_after: int | None


def take_failure(failures: list[Failure]) -> Failure | None:
    """The failure the next request gets, if any (used up after ``count`` requests); the caller
    holds its stub's lock."""
    if not failures:
        return None
    failure = failures[0]
    failure.count -= 1
    if failure.count <= 0:
        failures.pop(0)
    return failure


@dataclass
class _Write:
    """One planned write of a transaction or a single request."""

    method: str
    rtype: str
    rid: str
    resource: dict[str, Any] | None
    identifier: str | None
    created: bool


@dataclass
class StubFhirState:
    """The server's memory; safe to read from another thread (under ``lock``)."""

    #: resource type -> id -> resource (with ``id`` and ``meta.versionId``)
    resources: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    #: the write requests received, in order (ids, identifiers and statuses only)
    log: list[dict[str, Any]] = field(default_factory=list)
    #: when set, the bearer tokens the server accepts
    accepted_tokens: set[str] | None = None
    #: the Authorization header of every request received (tests check what was sent)
    authorizations: list[str | None] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    #: Idempotency-Key -> (request fingerprint, status, body, headers) of its 2xx answer
    responses: dict[str, tuple[str, int, bytes, dict[str, str]]] = field(default_factory=dict)
    #: how many of the next writes are applied and then have their connection cut mid-answer
    drops: int = 0
    #: seconds every request waits before it is handled (a slow server)
    latency_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    #: resource type -> its identifiers' index (:meth:`_find`)
    _index: dict[str, IdentifierIndex] = field(default_factory=dict)

    def reset(self) -> None:
        """Forget everything: resources, log, injected failures, idempotency keys."""
        with self.lock:
            self.resources.clear()
            self._index.clear()
            self.log.clear()
            self.failures.clear()
            self.authorizations.clear()
            self.responses.clear()
            self.drops, self.latency_s = 0, 0.0

    def reset_failures(self) -> None:
        """Drop the injected failures, drops and latency not yet used (the destination is
        back)."""
        with self.lock:
            self.failures.clear()
            self.drops, self.latency_s = 0, 0.0

    def drop_next(self, count: int = 1) -> None:
        """Apply the next ``count`` writes, then cut their connection before the answer is
        whole: the client cannot tell that the write was applied."""
        with self.lock:
            self.drops += count

    def fail_next(
        self, status: int, count: int = 1, delay_s: float = 0.0, retry_after: int | None = None
    ) -> None:
        """Answer the next ``count`` requests with ``status`` (after ``delay_s``; with a
        Retry-After header when ``retry_after`` is given)."""
        with self.lock:
            self.failures.append(Failure(status, count, delay_s, retry_after))

    def get(self, rtype: str, rid: str) -> dict[str, Any] | None:
        with self.lock:
            return self.resources.get(rtype, {}).get(rid)

    def count(self, rtype: str) -> int:
        with self.lock:
            return len(self.resources.get(rtype, {}))

    # -- called with the lock held -----------------------------------------------------------

    def _take_failure(self) -> Failure | None:
        return take_failure(self.failures)

    def _find(self, rtype: str, token: str) -> list[str]:
        """The ids of the ``rtype`` resources with the identifier ``token`` (``system|value`` or
        a bare value), from the type's index (engine/sim/fhir_index.py); lock held."""
        bucket = self.resources.get(rtype, {})
        index = self._index.get(rtype)
        if index is None or not index.covers(bucket):
            index = self._index[rtype] = IdentifierIndex.of(bucket)
        return index.find(bucket, token)

    def _stored(self, rtype: str, rid: str, old: dict[str, Any] | None, new: Any) -> None:
        """Keep the type's index in step with a write (``new`` None: a delete); lock held."""
        if (index := self._index.get(rtype)) is not None:
            index.update(self.resources.get(rtype, {}), rid, old, new)

    def _new_id(self) -> str:
        return str(next(self._ids))


def _outcome(status: int, code: str, text: str, headers: dict[str, str] | None = None) -> Response:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}],
    }
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    return Response(orjson.dumps(body), status, headers=headers, media_type=_FHIR_JSON)


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers=headers, media_type=_FHIR_JSON)


def _relink(node: Any, resolved: dict[str, str]) -> None:
    """Point every ``reference`` to an entry of the transaction at what it became, in place (the
    resources are this request's own, parsed from its body: nothing else holds them, so no copy)."""
    if type(node) is dict:
        ref = node.get("reference")
        if type(ref) is str and ref in resolved:
            node["reference"] = resolved[ref]
        for value in node.values():
            if type(value) is dict or type(value) is list:
                _relink(value, resolved)
    elif type(node) is list:
        for value in node:
            if type(value) is dict or type(value) is list:
                _relink(value, resolved)


class _Stub:
    """The request handlers over one :class:`StubFhirState`."""

    def __init__(self, state: StubFhirState, base: str) -> None:
        self.state = state
        self.base = base

    # -- planning and applying writes ----------------------------------------------------------

    def _plan(
        self,
        method: str,
        url: str,
        resource: Any,
        taken: set[tuple[str, str]],
        resolved: Mapping[str, str],
        fulls: Set[str] = frozenset(),
    ) -> _Write:
        """Work out one write from its method and URL (relative to the base; a transaction's
        placeholders ``resolved`` so far); lock held."""
        path, _, query = url.partition("?")
        parts = [p for p in path.strip("/").split("/") if p]
        if not parts:
            raise _Problem(400, "invalid", "request URL names no resource type")
        rtype = parts[0]
        if method in ("PUT", "POST"):
            if not isinstance(resource, dict) or resource.get("resourceType") != rtype:
                raise _Problem(400, "invalid", f"the resource is not a {rtype}")
        identifier = None
        if method == "PUT" and len(parts) == 2:
            rid = parts[1]
            if resource.get("id") not in (None, rid):
                raise _Problem(400, "invalid", "resource id does not match the URL")
        elif method == "PUT" and len(parts) == 1:
            params = resolve_placeholders(parse_qs(query, keep_blank_values=True), resolved, fulls)
            identifier = (params.get("identifier") or [""])[0]
            if not identifier:
                raise _Problem(400, "not-supported", "conditional update needs ?identifier=")
            bucket = self.state.resources.get(rtype, {})
            found = [r for r in self.state._find(rtype, identifier) if matches(bucket[r], params)]
            if len(found) > 1:
                raise _Problem(412, "multiple-matches", "the identifier matches several resources")
            rid = found[0] if found else self.state._new_id()
        elif method == "POST" and len(parts) == 1:
            rid = self.state._new_id()
        elif method == "DELETE" and len(parts) == 2:
            rid = parts[1]
        else:
            raise _Problem(400, "not-supported", f"{method} of this URL is not supported")
        if (rtype, rid) in taken:
            raise _Problem(400, "duplicate", "two entries write the same resource")
        taken.add((rtype, rid))
        created = rid not in self.state.resources.get(rtype, {})
        res = dict(resource) if isinstance(resource, dict) else None
        return _Write(method, rtype, rid, res, identifier, created)

    def _apply(self, w: _Write) -> tuple[int, dict[str, Any] | None]:
        """Store one planned write; lock held. Returns (status, stored resource)."""
        bucket = self.state.resources.setdefault(w.rtype, {})
        if w.method == "DELETE":
            self.state._stored(w.rtype, w.rid, bucket.pop(w.rid, None), None)
            return 204, None
        assert w.resource is not None
        old = bucket.get(w.rid)
        version = int(old["meta"]["versionId"]) + 1 if old else 1
        stored = {
            **w.resource,
            "id": w.rid,
            "meta": {
                **(w.resource.get("meta") or {}),
                "versionId": str(version),
                "lastUpdated": datetime.now(UTC).isoformat(timespec="milliseconds"),
            },
        }
        bucket[w.rid] = stored
        self.state._stored(w.rtype, w.rid, old, stored)
        return (201 if w.created else 200), stored

    @staticmethod
    def _log_entry(w: _Write, status: int) -> dict[str, Any]:
        return {
            "method": w.method,
            "resourceType": w.rtype,
            "id": w.rid,
            "identifier": w.identifier,
            "status": status,
        }

    # -- the gate every FHIR request passes ----------------------------------------------------

    async def _gate(self, request: Request, interaction: str) -> Response | None:
        """The injected latency, injected failures, then the bearer token check."""
        if self.state.latency_s > 0:
            await request.body()  # read first: a write its client gave up on is still applied
            await asyncio.sleep(self.state.latency_s)
        auth = request.headers.get("authorization")
        with self.state.lock:
            self.state.authorizations.append(auth)
            failure = self.state._take_failure()
            if failure is None:
                tokens = self.state.accepted_tokens
                if tokens is None:
                    return None
                scheme, _, token = (auth or "").partition(" ")
                if scheme.lower() == "bearer" and token in tokens:
                    return None
                status, code, text = 401, "login", "a valid bearer token is required"
            else:
                status, code, text = failure.status, "transient", "injected failure"
            if request.method != "GET":
                key = request.headers.get("idempotency-key")
                self.state.log.append(
                    {"interaction": interaction, "status": status, "idempotency_key": key}
                )
        headers = None
        if failure is not None:
            if failure.delay_s:
                await asyncio.sleep(failure.delay_s)
            if failure.retry_after is not None:
                headers = {"Retry-After": str(failure.retry_after)}
        return _outcome(status, code, text, headers)

    # -- endpoints -----------------------------------------------------------------------------

    def _once(
        self,
        request: Request,
        body: bytes,
        interaction: str,
        apply: Callable[[str | None], Response],
    ) -> Response:
        """Run ``apply`` under the lock, at most once per ``Idempotency-Key``.

        A key seen before with a 2xx answer gets that answer again without applying anything
        (logged with ``replayed``); the same key on a different request gets 422 (IETF
        draft-ietf-httpapi-idempotency-key-header). Error answers are not kept: a retry applies.
        """
        key = request.headers.get("idempotency-key")
        fingerprint = hashlib.sha256(
            f"{request.method} {request.url.path}?{request.url.query}\n".encode() + body
        ).hexdigest()
        with self.state.lock:
            if key is not None and key in self.state.responses:
                seen, status, content, headers = self.state.responses[key]
                if seen != fingerprint:
                    self.state.log.append(
                        {"interaction": interaction, "status": 422, "idempotency_key": key}
                    )
                    return _outcome(422, "conflict", "Idempotency-Key reused for another request")
                self.state.log.append(
                    {
                        "interaction": interaction,
                        "status": status,
                        "idempotency_key": key,
                        "replayed": True,
                    }
                )
                return Response(content, status, headers=headers, media_type=_FHIR_JSON)
            response = apply(key)
            if key is not None and 200 <= response.status_code < 300:
                headers = {
                    k: v for k, v in response.headers.items() if k.lower() in ("location", "etag")
                }
                self.state.responses[key] = (
                    fingerprint,
                    response.status_code,
                    bytes(response.body),
                    headers,
                )
            if 200 <= response.status_code < 300 and self.state.drops > 0:
                self.state.drops -= 1
                return CutResponse(bytes(response.body), response.status_code, None, _FHIR_JSON)
            return response

    async def transaction(self, request: Request) -> Response:
        refused = await self._gate(request, "transaction")
        if refused is not None:
            return refused
        body = await request.body()
        try:
            bundle = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _outcome(400, "structure", "the body is not JSON")
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            return _outcome(400, "invalid", "POST to the base takes a Bundle")
        if bundle.get("type") != "transaction":
            return _outcome(400, "not-supported", "only transaction Bundles are supported")
        entries = bundle.get("entry") or []
        return self._once(request, body, "transaction", lambda key: self._transaction(entries, key))

    def _transaction(self, entries: list[dict[str, Any]], key: str | None) -> Response:
        """Apply a transaction's entries, all or none; lock held."""
        try:
            writes: list[_Write] = []
            taken: set[tuple[str, str]] = set()
            resolved: dict[str, str] = {}
            fulls = {str(e["fullUrl"]) for e in entries if isinstance(e, dict) and e.get("fullUrl")}
            for entry in entries:
                req = entry.get("request") or {}
                w = self._plan(
                    str(req.get("method", "")).upper(),
                    str(req.get("url", "")),
                    entry.get("resource"),
                    taken,
                    resolved,
                    fulls,
                )
                writes.append(w)
                if entry.get("fullUrl"):
                    resolved[entry["fullUrl"]] = f"{w.rtype}/{w.rid}"
        except _Problem as exc:
            self.state.log.append(
                {"interaction": "transaction", "status": exc.status, "idempotency_key": key}
            )
            return _outcome(exc.status, exc.code, exc.text)
        out_entries = []
        logged = []
        for w in writes:
            if w.resource is not None and resolved:
                _relink(w.resource, resolved)
            status, stored = self._apply(w)
            response: dict[str, Any] = {"status": _STATUS_TEXT[status]}
            if stored is not None:
                version = stored["meta"]["versionId"]
                response["location"] = f"{w.rtype}/{w.rid}/_history/{version}"
                response["etag"] = f'W/"{version}"'
            out_entries.append({"response": response})
            logged.append(self._log_entry(w, status))
        self.state.log.append(
            {"interaction": "transaction", "status": 200, "idempotency_key": key, "entry": logged}
        )
        return _json(
            {"resourceType": "Bundle", "type": "transaction-response", "entry": out_entries}
        )

    async def _write(self, request: Request, method: str, url: str) -> Response:
        body = await request.body()
        try:
            resource = orjson.loads(body) if method != "DELETE" else None
        except orjson.JSONDecodeError:
            return _outcome(400, "structure", "the body is not JSON")
        interaction = {"PUT": "update", "POST": "create", "DELETE": "delete"}[method]
        base = f"{request.url.scheme}://{request.url.netloc}{self.base}"
        return self._once(
            request,
            body,
            interaction,
            lambda key: self._write_one(method, url, resource, interaction, key, base),
        )

    def _write_one(
        self, method: str, url: str, resource: Any, interaction: str, key: str | None, base: str
    ) -> Response:
        """Apply one write; lock held."""
        try:
            w = self._plan(method, url, resource, set(), {})
        except _Problem as exc:
            self.state.log.append(
                {"interaction": interaction, "status": exc.status, "idempotency_key": key}
            )
            return _outcome(exc.status, exc.code, exc.text)
        status, stored = self._apply(w)
        self.state.log.append(
            {
                "interaction": interaction,
                "status": status,
                "idempotency_key": key,
                "entry": [self._log_entry(w, status)],
            }
        )
        if stored is None:
            return Response(status_code=status)
        version = stored["meta"]["versionId"]
        headers = {
            "Location": f"{base}/{w.rtype}/{w.rid}/_history/{version}",
            "ETag": f'W/"{version}"',
        }
        return _json(stored, status, headers)

    async def type_level(self, request: Request) -> Response:
        rtype = request.path_params["rtype"]
        if rtype.startswith("$"):
            return await self._admin(request, rtype)
        method = request.method
        refused = await self._gate(request, {"GET": "search"}.get(method, "write"))
        if refused is not None:
            return refused
        if method == "GET":
            return self._search(rtype, request)
        url = rtype + (f"?{request.url.query}" if request.url.query else "")
        return await self._write(request, method, url)

    async def instance_level(self, request: Request) -> Response:
        rtype, rid = request.path_params["rtype"], request.path_params["rid"]
        method = request.method
        refused = await self._gate(request, {"GET": "read"}.get(method, "write"))
        if refused is not None:
            return refused
        if method == "GET":
            found = self.state.get(rtype, rid)
            if found is None:
                return _outcome(404, "not-found", f"{rtype}/{rid} is not known")
            return _json(found)
        return await self._write(request, method, f"{rtype}/{rid}")

    def _search(self, rtype: str, request: Request) -> Response:
        """A searchset of the matches, a page of ``_count`` at a time (``_offset`` names the
        page; ``link`` ``next`` points at the following one while there is one)."""
        params = parse_qs(request.url.query, keep_blank_values=True)
        try:
            count = int(params.get("_count", ["100"])[0])
            offset = int(params.get("_offset", ["0"])[0])
        except ValueError:
            return _outcome(400, "invalid", "_count and _offset are numbers")
        if count < 1 or offset < 0:
            return _outcome(400, "invalid", "_count must be positive and _offset not negative")
        with self.state.lock:
            try:
                bucket = self.state.resources.get(rtype, {})
                # by identifier: only the resources that carry the first one are read
                among = (
                    [bucket[rid] for rid in self.state._find(rtype, params["identifier"][0])]
                    if params.get("identifier")
                    else bucket.values()
                )
                hits = [r for r in among if matches(r, params)]
            except _Problem as exc:
                return _outcome(exc.status, exc.code, exc.text)
        page = hits[offset : offset + count]
        url = f"{request.url.scheme}://{request.url.netloc}{request.url.path}"
        kept = [(k, v) for k, vs in params.items() if k != "_offset" for v in vs]
        links = [{"relation": "self", "url": f"{url}?{urlencode(kept)}"}]
        if offset + count < len(hits):
            following = urlencode([*kept, ("_offset", str(offset + count))])
            links.append({"relation": "next", "url": f"{url}?{following}"})
        return _json(
            {
                "resourceType": "Bundle",
                "type": "searchset",
                "total": len(hits),
                "link": links,
                "entry": [
                    {
                        "fullUrl": f"{url.rsplit('/', 1)[0]}/{rtype}/{r['id']}",
                        "resource": r,
                        "search": {"mode": "match"},
                    }
                    for r in page
                ],
            }
        )

    def _inject(self, body: dict[str, Any]) -> None:
        """``$fail``'s body: ``clear``, then ``drop`` N, ``latency_s`` S, or a failing
        ``status`` for ``count`` requests (the default: one 503)."""
        if body.get("clear"):
            self.state.reset_failures()
        elif "drop" in body or "latency_s" in body:
            drops, latency = int(body.get("drop", 0)), body.get("latency_s")
            with self.state.lock:
                self.state.drops += drops
                if latency is not None:
                    self.state.latency_s = float(latency)
        else:
            retry_after = body.get("retry_after")
            self.state.fail_next(
                int(body.get("status", 503)),
                int(body.get("count", 1)),
                float(body.get("delay_s", 0)),
                None if retry_after is None else int(retry_after),
            )

    async def _admin(self, request: Request, op: str) -> Response:
        if op == "$fail" and request.method == "POST":
            try:
                self._inject(orjson.loads(await request.body()))
            except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
                return _outcome(400, "invalid", 'expected {"status": 503, "count": N}')
            return _json({"ok": True})
        if op == "$log" and request.method == "GET":
            with self.state.lock:
                return _json({"log": list(self.state.log)})
        if op == "$reset" and request.method == "POST":
            self.state.reset()
            return _json({"ok": True})
        return _outcome(404, "not-supported", f"unknown operation {op}")


def create_stub_fhir_app(state: StubFhirState | None = None, *, base: str = "/fhir") -> Starlette:
    """The stub as an ASGI app; ``app.state.fhir`` is its :class:`StubFhirState`."""
    base = "/" + base.strip("/") if base.strip("/") else ""
    stub = _Stub(state or StubFhirState(), base)
    routes = [
        Route(base or "/", stub.transaction, methods=["POST"]),
        Route(f"{base}/{{rtype}}", stub.type_level, methods=["GET", "POST", "PUT"]),
        Route(f"{base}/{{rtype}}/{{rid}}", stub.instance_level, methods=["GET", "PUT", "DELETE"]),
    ]
    if base:
        routes.append(Route(f"{base}/", stub.transaction, methods=["POST"]))
    app = Starlette(routes=routes)
    app.state.fhir = stub.state
    return app


def run_stub_fhir(
    host: str = "127.0.0.1", port: int = 8090, *, base: str = "/fhir", access_log: bool = False
) -> None:
    """Serve the stub until interrupted (``engine stub-fhir``).

    No access log unless asked for: a conditional URL carries the identifier searched for
    (``Patient?identifier=system|MRN``), so a line per request would log the MRN of every
    patient sent; and the log costs CPU on the cores the engine runs on (at 450 requests a
    second the stub used 20.9 % of a core with it, 17.1 and 19.1 % without, one run each)."""
    app = create_stub_fhir_app(base=base)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=access_log)


class StubFhirServer(ServerThread):
    """The stub FHIR server on a free port; ``base_url`` ends with the base path."""

    def __init__(self, *, base: str = "/fhir", host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = StubFhirState()
        self.base = "/" + base.strip("/")
        super().__init__(create_stub_fhir_app(self.state, base=base), host, port)

    @property
    def base_url(self) -> str:
        return self.url + self.base


@contextmanager
def running_stub_fhir(**kwargs: Any) -> Iterator[StubFhirServer]:
    """``with running_stub_fhir() as fhir: ... fhir.base_url ... fhir.state``."""
    server = StubFhirServer(**kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()
