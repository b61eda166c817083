"""Epic: documents written over FHIR R4, and booked appointments pulled from it.

Epic takes HL7v2 (ADT, SIU, MDM) over its MLLP interfaces and FHIR R4 over its APIs for
backend apps, authorised with SMART Backend Services (engine/adapters/smart.py: a JWT client
assertion signed with the engine's key, registered with Epic by its JWKS URL). So:

* the destination ``type: epic`` (:class:`EpicDestination`) writes **documents** only: a
  DocumentReference created inline or after a Binary, as Epic's CapabilityStatement says, for
  the patient found by MRN (``Patient?identifier=<mrn_system>|<mrn>``; the shared writer,
  engine/adapters/fhir_documents.py). An HL7v2 payload sent to it is a permanent failure saying
  to route it to an ``mllp`` destination (the same route can send the document as MDM^T02
  there); a FHIR Bundle one too (Epic takes no transaction Bundles from backend apps);
* the pull source ``type: epic`` (:class:`EpicSource`) reads ``Appointment?date=ge..&date=le..
  &status=booked`` page by page (``Bundle.link`` ``next``, https://hl7.org/fhir/R4/http.html#paging)
  with each appointment's Patient and the patient's Coverages (``Coverage?patient=``), and yields
  one transaction Bundle per appointment for the pipeline.

TLS to Epic verifies against the system trust store (truststore: the operating system's CAs, as
a browser does, not a bundled list), or a private CA file when ``tls.ca_file`` is given, with an
optional client certificate (``tls.client_cert`` and ``tls.client_key``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import ssl
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import orjson
import truststore
from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.adapters.auth import SmartBackendAuth
from engine.adapters.destination import DeliveryResult, Payload
from engine.adapters.fhir_documents import DocumentMode
from engine.adapters.fhir_http import issue_code
from engine.adapters.fhir_rest import FhirDestination, FhirRestDestination
from engine.adapters.oauth2 import TokenError, retry_after
from engine.adapters.smart import SmartBackend
from engine.adapters.source import Pulled, SourceError
from engine.errors import ConfigError
from engine.settings import Settings

__all__ = [
    "DEFAULT_SCOPE",
    "DEFAULT_SOURCE_SCOPE",
    "EpicDestination",
    "EpicDocumentDestination",
    "EpicSource",
    "EpicSourceConfig",
    "EpicTls",
    "ssl_context",
]

log = logging.getLogger(__name__)

#: SMART v1 system scopes for what the destination does (Epic grants what the app's registration
#: lists; the scope asked for must not exceed it)
DEFAULT_SCOPE = (
    "system/Patient.read system/DocumentReference.write system/Binary.write "
    "system/Appointment.read system/Coverage.read"
)
DEFAULT_SOURCE_SCOPE = "system/Patient.read system/Appointment.read system/Coverage.read"
HL7V2_REFUSED = "epic: Epic takes HL7v2 over MLLP: route it to an mllp destination"
BUNDLE_REFUSED = (
    "epic: the epic destination writes documents only (Epic takes no transaction Bundles from "
    "backend apps): route HL7v2 to an mllp destination"
)
_MAX_WAIT_S = 30.0
_MAX_TRIES = 4


class EpicTls(BaseModel):
    """TLS beyond the system trust store: a private CA, a client certificate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None


def ssl_context(tls: EpicTls | None) -> ssl.SSLContext:
    """The system trust store (truststore), or ``ca_file``; the client certificate loaded.
    Raises :class:`ConfigError` naming the file that cannot be read."""
    tls = tls or EpicTls()
    try:
        if tls.ca_file is not None:
            ctx = ssl.create_default_context(cafile=str(tls.ca_file))
        else:
            ctx = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if tls.client_cert is not None:
            key = str(tls.client_key) if tls.client_key is not None else None
            ctx.load_cert_chain(str(tls.client_cert), key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"epic tls: cannot load a certificate or key ({exc.strerror or exc})"
        ) from exc
    return ctx


class _EpicCommon(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: the FHIR R4 base, e.g. https://fhir.example.org/interconnect-fhir-oauth/api/FHIR/R4
    base_url: str
    #: the backend app's client id (Epic's "Non-Production" or "Production" client ID)
    client_id: str = Field(min_length=1, max_length=200)
    #: the token endpoint; unset, read from {base_url}/.well-known/smart-configuration
    token_url: str | None = None
    #: the identifier system of the organisation's MRNs (an OID, urn:oid:...)
    mrn_system: str = Field(min_length=1, max_length=300)
    timeout_s: float = Field(default=30.0, gt=0, le=300)
    tls: EpicTls | None = None

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"base_url {value!r} must start with http:// or https://")
        return value.rstrip("/")


class EpicDestination(_EpicCommon):
    """A route file's ``type: epic`` destination: documents to Epic over FHIR R4."""

    scope: str = Field(default=DEFAULT_SCOPE, min_length=1, max_length=2000)
    #: ``auto``: Binary first when the CapabilityStatement lists Binary create, else inline
    document_mode: DocumentMode = "auto"

    def fhir(self) -> FhirDestination:
        """The FHIR destination this amounts to (smart-backend auth, Epic's base)."""
        auth = SmartBackendAuth(
            type="smart-backend",
            client_id=self.client_id,
            scope=self.scope,
            token_url=self.token_url,
        )
        return FhirDestination(
            base_url=self.base_url,
            auth=auth,
            timeout_s=self.timeout_s,
            document_mode=self.document_mode,
            mrn_system=self.mrn_system,
        )


class EpicDocumentDestination:
    """Delivers document payloads to one Epic organisation's FHIR API."""

    def __init__(
        self,
        name: str,
        config: EpicDestination,
        *,
        settings: Settings | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = name
        self.config = config
        verify = ssl_context(config.tls) if config.base_url.startswith("https://") else None
        #: the FHIR destination doing the work (its ``auth.smart`` and ``documents`` for tests)
        self.fhir = FhirRestDestination(
            name, config.fhir(), transport=transport, settings=settings, verify=verify
        )

    async def deliver(self, payload: Payload) -> DeliveryResult:
        if payload.kind == "hl7v2":
            return DeliveryResult.fail(HL7V2_REFUSED)
        if payload.kind != "document":
            return DeliveryResult.fail(BUNDLE_REFUSED)
        result = await self.fhir.deliver(payload)
        detail = result.detail
        if detail.startswith("fhir: "):
            detail = "epic: " + detail.removeprefix("fhir: ")
        return dataclasses.replace(result, detail=detail)

    async def close(self) -> None:
        await self.fhir.close()


# -- the pull source -----------------------------------------------------------------------------


class EpicSourceConfig(_EpicCommon):
    """A route file's ``sources.<name>`` of ``type: epic``."""

    scope: str = Field(default=DEFAULT_SOURCE_SCOPE, min_length=1, max_length=2000)
    #: the appointment statuses to read (Appointment ``status`` search)
    status: str = Field(default="booked", pattern=r"^[a-z-]+(,[a-z-]+)*$")
    #: ``_count`` per page (the server may give fewer)
    page_size: int = Field(default=50, ge=1, le=1000)
    #: a pull stops with an error past this many pages (a server looping its next links)
    max_pages: int = Field(default=500, ge=1, le=100_000)


class EpicSource:
    """Booked appointments from Epic, each with its Patient and Coverages, as Bundles."""

    def __init__(
        self,
        name: str,
        config: EpicSourceConfig,
        *,
        settings: Settings | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = name
        self.config = config
        auth = SmartBackendAuth(
            type="smart-backend",
            client_id=config.client_id,
            scope=config.scope,
            token_url=config.token_url,
        )
        self.smart = SmartBackend(auth, config.base_url, settings=settings)
        verify = ssl_context(config.tls) if config.base_url.startswith("https://") else True
        self._client = httpx.AsyncClient(
            base_url=config.base_url + "/",
            timeout=config.timeout_s,
            verify=verify,
            transport=transport,
            headers={"Accept": "application/fhir+json", "User-Agent": "hl7-engine"},
        )
        split = urlsplit(config.base_url)
        self._origin = f"{split.scheme}://{split.netloc}"

    async def close(self) -> None:
        await self._client.aclose()

    async def pull(self, start: date, end: date) -> AsyncIterator[Pulled]:
        """Every appointment from ``start`` to ``end`` (inclusive), page after page."""
        cfg = self.config
        url: str | None = (
            f"Appointment?date=ge{start.isoformat()}&date=le{end.isoformat()}"
            f"&status={quote(cfg.status, safe=',')}&_count={cfg.page_size}"
        )
        patients: dict[str, dict[str, Any] | None] = {}
        coverages: dict[str, list[dict[str, Any]]] = {}
        pages = 0
        while url is not None:
            pages += 1
            if pages > cfg.max_pages:
                raise SourceError(f"epic {self.name}: more than {cfg.max_pages} pages")
            page = await self._get(url, "Appointment search", pages)
            for entry in page.get("entry") or []:
                appt = entry.get("resource") or {}
                if appt.get("resourceType") != "Appointment" or not appt.get("id"):
                    continue  # an OperationOutcome Epic adds to a searchset
                pid = _patient_of(appt)
                if pid is None:
                    log.info("appointment without a patient skipped", extra={"source": self.name})
                    continue
                if pid not in patients:
                    patients[pid] = await self._patient(pid)
                    coverages[pid] = await self._coverages(pid)
                patient = patients[pid]
                mrn = _mrn(patient, cfg.mrn_system) if patient else None
                if patient is None or mrn is None:
                    log.warning(
                        "appointment skipped: its patient has no MRN in mrn_system",
                        extra={"source": self.name, "appointment": appt["id"]},
                    )
                    continue
                yield Pulled(
                    _version_key(cfg.base_url, appt),
                    _bundle(cfg.base_url, cfg.mrn_system, mrn, appt, patient, coverages[pid]),
                )
            url = self._next(page)

    def _next(self, page: dict[str, Any]) -> str | None:
        for link in page.get("link") or []:
            if isinstance(link, dict) and link.get("relation") == "next" and link.get("url"):
                nxt = str(link["url"])
                if not nxt.startswith(self._origin + "/"):  # the token goes nowhere else
                    raise SourceError(f"epic {self.name}: a next link leaves the server")
                return nxt
        return None

    async def _patient(self, pid: str) -> dict[str, Any] | None:
        found = await self._get(f"Patient/{quote(pid)}", "Patient read", 0, missing_ok=True)
        return found if found.get("resourceType") == "Patient" else None

    async def _coverages(self, pid: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        url: str | None = f"Coverage?patient={quote(pid)}"
        pages = 0
        while url is not None and pages < self.config.max_pages:
            pages += 1
            page = await self._get(url, "Coverage search", pages)
            out += [
                e["resource"]
                for e in page.get("entry") or []
                if (e.get("resource") or {}).get("resourceType") == "Coverage"
            ]
            url = self._next(page)
        return out

    async def _get(
        self, url: str, what: str, page: int, *, missing_ok: bool = False
    ) -> dict[str, Any]:
        """One GET with the token: a new token once after a 401; 429/503 obeyed (Retry-After,
        at most 30 s, a few times); anything else not 200 is a :class:`SourceError`."""
        refreshed = False
        for _ in range(_MAX_TRIES + 1):
            try:
                authorization = await self.smart.authorization(self._client)
                resp = await self._client.get(url, headers={"Authorization": authorization})
            except TokenError as exc:
                raise SourceError(f"epic {self.name}: {exc.detail}") from exc
            except httpx.RequestError as exc:
                raise SourceError(f"epic {self.name}: {what} {type(exc).__name__}") from exc
            status = resp.status_code
            if status == 401 and not refreshed:
                refreshed = self.smart.invalidate()
                continue
            if status in (429, 503):
                wait = min(retry_after(resp) or 1.0, _MAX_WAIT_S)
                log.info("epic asked to wait", extra={"source": self.name, "wait_s": wait})
                await asyncio.sleep(wait)
                continue
            if status == 404 and missing_ok:
                return {}
            if status != 200:
                code = issue_code(resp)
                at = f" at page {page}" if page else ""
                raise SourceError(
                    f"epic {self.name}: {what} -> {status}{at}"
                    + (f" (OperationOutcome: {code})" if code else "")
                )
            try:
                body = orjson.loads(resp.content)
            except orjson.JSONDecodeError as exc:
                raise SourceError(f"epic {self.name}: {what} answered no JSON") from exc
            if not isinstance(body, dict):
                raise SourceError(f"epic {self.name}: {what} answered no FHIR resource")
            return body
        raise SourceError(f"epic {self.name}: {what} still refused after {_MAX_TRIES} waits")


def _patient_of(appt: dict[str, Any]) -> str | None:
    for p in appt.get("participant") or []:
        ref = str((p.get("actor") or {}).get("reference") or "")
        if ref.startswith("Patient/"):
            return ref.removeprefix("Patient/")
    return None


def _mrn(patient: dict[str, Any], system: str) -> str | None:
    for ident in patient.get("identifier") or []:
        if ident.get("system") == system and ident.get("value"):
            return str(ident["value"])
    return None


def _version_key(base: str, appt: dict[str, Any]) -> str:
    meta = appt.get("meta") or {}
    version = meta.get("versionId") or meta.get("lastUpdated")
    if not version:
        version = hashlib.sha256(orjson.dumps(appt, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]
    return f"epic:{base}:Appointment/{appt['id']}:{version}"


def _with_own_identifier(resource: dict[str, Any], base: str) -> tuple[dict[str, Any], str]:
    """The resource with the identifier ``{base}/{Type}`` | its Epic id (stable across pulls,
    for a conditional update downstream), and that identifier as a search token."""
    rtype, rid = resource["resourceType"], str(resource["id"])
    system = f"{base}/{rtype}"
    idents = [i for i in resource.get("identifier") or [] if i.get("system") != system]
    return {**resource, "identifier": [*idents, {"system": system, "value": rid}]}, (
        f"{quote(system, safe=':/')}|{quote(rid)}"
    )


def _bundle(
    base: str,
    mrn_system: str,
    mrn: str,
    appt: dict[str, Any],
    patient: dict[str, Any],
    coverages: list[dict[str, Any]],
) -> dict[str, Any]:
    """A transaction Bundle: the Patient (keyed by its MRN), its Coverages, the Appointment.
    Each fullUrl is the resource's URL at Epic, so ``Patient/<id>`` references resolve to the
    entries (bundle.html#references) and a pull of the same appointment keys alike."""
    entries = [
        {
            "fullUrl": f"{base}/Patient/{patient['id']}",
            "resource": patient,
            "request": {
                "method": "PUT",
                "url": f"Patient?identifier={quote(mrn_system, safe=':/')}|{quote(mrn)}",
            },
        }
    ]
    for resource in [*coverages, appt]:
        marked, token = _with_own_identifier(resource, base)
        rtype = marked["resourceType"]
        entries.append(
            {
                "fullUrl": f"{base}/{rtype}/{marked['id']}",
                "resource": marked,
                "request": {"method": "PUT", "url": f"{rtype}?identifier={token}"},
            }
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}
