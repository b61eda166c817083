"""The ``fhir`` pull source: booked appointments read from any FHIR R4 server by search.

A route file's ``sources.<name>`` with ``type: fhir`` names the server's ``base_url`` (and its
``auth``, as a FHIR destination's). Each pull searches
``GET Appointment?date=ge<start>&date=le<end>&_count=<page_size>`` (https://hl7.org/fhir/R4/
appointment.html#search, search.html#prefix), follows every ``next`` link to the end (paging,
http.html#search), and for each appointment reads its patients (``GET Patient/<id>``), their
coverages (``GET Coverage?patient=Patient/<id>``, every page) and each coverage's payer
(``GET Organization/<id>``). One appointment is one :class:`~engine.adapters.source.Pulled`: a
transaction Bundle with the Appointment, its Patients, their Coverages and payers.

What the engine's index keys on: each entry's ``fullUrl`` is the resource's absolute URL on the
server (``<base_url>/Patient/12``), and the relative references in the resources (``Patient/12``)
are written as the same absolute URLs, so the index (engine/flow/process.py ``index_rows``) finds
the appointment's patient, the patient's coverages and the coverage's payer as the eligibility
job looks them up. Each entry's ``request`` is a conditional update by the resource's first
identifier (``PUT Patient?identifier=system|value``), else a create, so a route passing the
Bundle on to another FHIR server writes it there as the engine's own Bundles are written.

The version key is the appointment's id and a digest of the version (``meta.versionId``, else
``meta.lastUpdated``, else the content) of every resource in its Bundle: an appointment pulled
again unchanged is the same key (stored once); a changed appointment, patient or coverage makes a
new one.

Limits: every answer at most ``max_response_bytes``, at most ``max_pages`` pages of appointments
per pull, ``timeout_s`` per request; a 429 or 503 is waited out (its Retry-After, at most
``max_wait_s``) up to three times; a 401 fetches a new token once. Failures raise
:class:`~engine.adapters.source.SourceError` naming the request's resource type and status,
never what the server said about a patient. Links are followed only on the server's own origin
(the bearer token never goes elsewhere).

Incomplete: no ``_include`` (one read per patient and payer, cached for the pull); appointments'
non-patient participants (practitioners, locations) are not read.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import AsyncIterator, Mapping
from datetime import date
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Field

from engine.adapters.auth import NoAuth as NoAuthConfig
from engine.adapters.fhir_http import BaseUrl, fhir_client
from engine.adapters.fhir_rest import AuthProvider, FhirAuth, FhirDestination, auth_provider
from engine.adapters.oauth2 import retry_after
from engine.adapters.source import Pulled, SourceError
from engine.settings import Settings

__all__ = ["FhirSource", "FhirSourceConfig"]

log = logging.getLogger(__name__)

#: statuses waited out (with the server's Retry-After) before the pull gives up
_WAIT_STATUSES = frozenset({429, 503})
_WAITS = 3


class _Gone(SourceError):
    """Private: the resource read is not on the server (404, 410)."""


class FhirSourceConfig(BaseModel):
    """A route file's ``type: fhir`` source: the FHIR server to read appointments from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: BaseUrl
    auth: FhirAuth = Field(default_factory=NoAuthConfig)
    timeout_s: float = Field(default=30.0, gt=0, le=300)
    verify_tls: bool = True
    #: appointments asked for per page (``_count``)
    page_size: int = Field(default=50, ge=1, le=1000)
    #: the most pages of appointments one pull reads (a server that pages forever stops here)
    max_pages: int = Field(default=200, ge=1, le=10_000)
    #: the largest answer read, in bytes
    max_response_bytes: int = Field(default=10 * 2**20, ge=1024, le=256 * 2**20)
    #: the longest Retry-After waited for
    max_wait_s: float = Field(default=60.0, ge=0, le=600)
    #: only appointments with these statuses (``status=`` search); none: every status, so a
    #: cancelled appointment updates the one pulled booked before
    status: list[str] | None = None


def _absolute(node: Any, base: str) -> Any:
    """The resource with its relative references (``Patient/12``) made absolute on ``base``."""
    if isinstance(node, dict):
        out = {k: _absolute(v, base) for k, v in node.items()}
        ref = node.get("reference")
        if (
            isinstance(ref, str)
            and "/" in ref
            and "://" not in ref
            and not ref.startswith(("#", "urn:"))
        ):
            out["reference"] = f"{base}/{ref}"
        return out
    if isinstance(node, list):
        return [_absolute(v, base) for v in node]
    return node


def _version(resource: dict[str, Any]) -> str:
    """One resource's version: ``meta.versionId``, else ``meta.lastUpdated``, else a digest."""
    meta = resource.get("meta") or {}
    tag = meta.get("versionId") or meta.get("lastUpdated")
    if tag:
        return str(tag)
    return hashlib.sha256(orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def _request(resource: dict[str, Any]) -> dict[str, str]:
    """The entry's request: a conditional update by its first identifier, else a create."""
    rtype = str(resource.get("resourceType"))
    for ident in resource.get("identifier") or []:
        if ident.get("value"):
            token = (
                f"{ident.get('system', '')}|{ident['value']}"
                if ident.get("system")
                else ident["value"]
            )
            return {"method": "PUT", "url": f"{rtype}?identifier={token}"}
    return {"method": "POST", "url": rtype}


class FhirSource:
    """Pulls booked appointments, their patients and coverages from one FHIR server."""

    def __init__(
        self,
        name: str,
        config: FhirSourceConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        environ: Mapping[str, str] | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.name = name
        self.config = config
        env = os.environ if environ is None else environ
        as_destination = FhirDestination(
            base_url=config.base_url, auth=config.auth, timeout_s=config.timeout_s
        )
        self.auth: AuthProvider = auth_provider(as_destination, name, env, settings)
        self._origin = urlsplit(config.base_url)[:2]
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        #: requests sent by the last pulls (tests and the pull's log line count them)
        self.requests = 0

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = fhir_client(
                timeout_s=self.config.timeout_s,
                verify=self.config.verify_tls,
                transport=self._transport,
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- reading -----------------------------------------------------------------------------

    async def _read_one(self, url: str, what: str) -> dict[str, Any] | None:
        """A read of one resource; None when the server says it is gone (404, 410): the
        appointment goes on without it, as a patient deleted in the EHR is not an outage."""
        try:
            return await self._get(url, what)
        except _Gone:
            return None

    async def _get(self, url: str, what: str) -> dict[str, Any]:
        """One GET on the server, as JSON: Retry-After waited out, a 401 answered with a new
        token once. ``what`` names the request in errors (a resource type, never an id)."""
        if urlsplit(url)[:2] != self._origin:
            raise SourceError(f"{self.name}: {what} link leaves the server's origin; not followed")
        client = self._http()
        waits = 0
        renewed = False
        while True:
            try:
                header = await self.auth.authorization(client)
            except Exception as exc:  # the token endpoint's failure, already PHI-free
                raise SourceError(f"{self.name}: authorization failed: {exc}") from exc
            headers = {"Authorization": header} if header else {}
            self.requests += 1
            try:
                async with client.stream("GET", url, headers=headers) as resp:
                    body = await self._read(resp, what)
            except httpx.TimeoutException as exc:
                raise SourceError(f"{self.name}: {what} search timed out") from exc
            except httpx.RequestError as exc:
                raise SourceError(
                    f"{self.name}: {what} search failed ({type(exc).__name__})"
                ) from exc
            status = resp.status_code
            if status == 401 and not renewed and self.auth.invalidate():
                renewed = True
                continue
            if status in _WAIT_STATUSES and waits < _WAITS:
                wait = retry_after(resp)
                wait = 1.0 if wait is None else wait
                if wait <= self.config.max_wait_s:
                    waits += 1
                    await asyncio.sleep(wait)
                    continue
            if status in (404, 410):
                raise _Gone(f"{self.name}: {what} answered HTTP {status}")
            if status != 200:
                raise SourceError(f"{self.name}: {what} answered HTTP {status}")
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise SourceError(f"{self.name}: {what} answer is not JSON") from exc
            if not isinstance(doc, dict):
                raise SourceError(f"{self.name}: {what} answer is not a FHIR resource")
            return doc

    async def _read(self, resp: httpx.Response, what: str) -> bytes:
        """The answer's body, refused past ``max_response_bytes`` (read no further)."""
        limit = self.config.max_response_bytes
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.aiter_bytes():
            size += len(chunk)
            if size > limit:
                raise SourceError(f"{self.name}: {what} answer larger than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _search(
        self, url: str, what: str, *, max_pages: int
    ) -> AsyncIterator[dict[str, Any]]:
        """The resources of a search, every page of it (at most ``max_pages``)."""
        pages = 0
        next_url: str | None = url
        while next_url is not None:
            pages += 1
            if pages > max_pages:
                raise SourceError(f"{self.name}: {what} search has more than {max_pages} pages")
            bundle = await self._get(next_url, what)
            if bundle.get("resourceType") != "Bundle":
                raise SourceError(f"{self.name}: {what} search did not answer a Bundle")
            for entry in bundle.get("entry") or []:
                res = entry.get("resource") if isinstance(entry, dict) else None
                mode = (entry.get("search") or {}).get("mode", "match") if res else None
                if isinstance(res, dict) and res.get("resourceType") == what and mode == "match":
                    yield res
            next_url = next(
                (
                    str(link.get("url"))
                    for link in bundle.get("link") or []
                    if link.get("relation") == "next" and link.get("url")
                ),
                None,
            )

    async def pull(self, start: date, end: date) -> AsyncIterator[Pulled]:
        """The appointments from ``start`` to ``end`` (inclusive), one Bundle each."""
        base = self.config.base_url
        query = [
            ("date", f"ge{start.isoformat()}"),
            ("date", f"le{end.isoformat()}"),
            ("_count", str(self.config.page_size)),
        ]
        if self.config.status:
            query.append(("status", ",".join(self.config.status)))
        url = str(httpx.URL(f"{base}/Appointment", params=query))
        patients: dict[str, dict[str, Any] | None] = {}
        payers: dict[str, dict[str, Any] | None] = {}
        coverages: dict[str, list[dict[str, Any]]] = {}
        async for appt in self._search(url, "Appointment", max_pages=self.config.max_pages):
            if not appt.get("id"):
                continue
            found: list[dict[str, Any]] = [appt]
            for part in appt.get("participant") or []:
                ref = str((part.get("actor") or {}).get("reference", ""))
                if not ref.startswith("Patient/"):
                    continue
                if ref not in patients:
                    patients[ref] = await self._read_one(f"{base}/{ref}", "Patient")
                    coverages[ref] = [
                        c
                        async for c in self._search(
                            str(httpx.URL(f"{base}/Coverage", params={"patient": ref})),
                            "Coverage",
                            max_pages=self.config.max_pages,
                        )
                    ]
                patient = patients[ref]
                if patient is None or patient.get("resourceType") != "Patient":
                    continue
                found.append(patient)
                for coverage in coverages[ref]:
                    found.append(coverage)
                    for payor in coverage.get("payor") or []:
                        pref = str(payor.get("reference", ""))
                        if not pref.startswith("Organization/"):
                            continue  # self-pay (the Patient) or a RelatedPerson
                        if pref not in payers:
                            payers[pref] = await self._read_one(f"{base}/{pref}", "Organization")
                        payer = payers[pref]
                        if payer is not None:
                            found.append(payer)
            yield self._pulled(appt, found)

    def _pulled(self, appt: dict[str, Any], found: list[dict[str, Any]]) -> Pulled:
        """One appointment's Bundle and version key."""
        base = self.config.base_url
        entries: list[dict[str, Any]] = []
        seen: set[str] = set()
        for res in found:
            key = f"{res.get('resourceType')}/{res.get('id')}"
            if key in seen:
                continue
            seen.add(key)
            entries.append(
                {
                    "fullUrl": f"{base}/{key}",
                    "resource": _absolute(res, base),
                    "request": _request(res),
                }
            )
        versions = "\n".join(
            f"{e['resource']['resourceType']}/{e['resource'].get('id')}/{_version(e['resource'])}"
            for e in entries
        )
        digest = hashlib.sha256(versions.encode()).hexdigest()[:24]
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        return Pulled(f"Appointment/{appt['id']}|{digest}", bundle)
