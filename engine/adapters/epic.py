"""Epic: documents written over FHIR R4, and booked appointments pulled from it.

Epic takes HL7v2 (ADT, SIU, MDM) over its MLLP interfaces and FHIR R4 over its APIs for
backend apps, authorised with SMART Backend Services (engine/adapters/smart.py: a JWT client
assertion signed with the engine's key, registered with Epic by its JWKS URL). So:

* the destination ``type: epic`` (:class:`EpicDestination`) writes **documents** only: a
  DocumentReference created inline or after a Binary, as Epic's CapabilityStatement says, for
  the patient found by MRN (``Patient?identifier=<mrn_system>|<mrn>``; the shared writer,
  engine/adapters/fhir_documents.py). An HL7v2 payload sent to it is a permanent failure saying
  to route it to an ``mllp`` destination (the same route can send the document as MDM^T02
  there); a FHIR Bundle one too (this destination writes documents; a Bundle for an Epic
  API that takes one goes to a ``fhir`` destination with ``auth: smart-backend``);
* the pull source ``type: epic`` (:class:`EpicSource`) reads ``Appointment?date=ge..&date=le..
  &status=booked`` page by page (``Bundle.link`` ``next``, https://hl7.org/fhir/R4/http.html#paging)
  with each appointment's Patient and the patient's Coverages (``Coverage?patient=``), and yields
  one transaction Bundle per appointment for the pipeline, its Patient keyed by the MRN.

TLS to Epic verifies against the system trust store (truststore: the operating system's CAs, as
a browser does, not a bundled list), or a private CA file when ``tls.ca_file`` is given, with an
optional client certificate (``tls.client_cert`` and ``tls.client_key``).
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path
from urllib.parse import quote

import httpx
import truststore
from pydantic import BaseModel, ConfigDict, Field

from engine.adapters.auth import SmartBackendAuth
from engine.adapters.destination import DeliveryResult, Payload
from engine.adapters.fhir_documents import DocumentMode
from engine.adapters.fhir_http import BaseUrl
from engine.adapters.fhir_rest import FhirDestination, FhirRestDestination
from engine.adapters.fhir_source import FhirSource, FhirSourceConfig
from engine.adapters.source import Pulled
from engine.errors import ConfigError
from engine.routes.loader import RouteSet
from engine.settings import Settings

__all__ = [
    "DEFAULT_SCOPE",
    "DEFAULT_SOURCE_SCOPE",
    "EpicDestination",
    "EpicDocumentDestination",
    "EpicSource",
    "EpicSourceConfig",
    "EpicTls",
    "check_epic_routes",
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
    "epic: the epic destination writes documents only: route HL7v2 to an mllp destination "
    "(a FHIR Bundle to a fhir destination with auth smart-backend)"
)


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
    base_url: BaseUrl
    #: the backend app's client id (Epic's "Non-Production" or "Production" client ID)
    client_id: str = Field(min_length=1, max_length=200)
    #: the token endpoint; unset, read from {base_url}/.well-known/smart-configuration
    token_url: str | None = None
    #: the identifier system of the organisation's MRNs (an OID, urn:oid:...)
    mrn_system: str = Field(min_length=1, max_length=300)
    timeout_s: float = Field(default=30.0, gt=0, le=300)
    tls: EpicTls | None = None


class EpicDestination(_EpicCommon):
    """A route file's ``type: epic`` destination: documents to Epic over FHIR R4."""

    scope: str = Field(default=DEFAULT_SCOPE, min_length=1, max_length=2000)
    #: ``auto``: Binary first when the CapabilityStatement lists Binary create, else inline
    document_mode: DocumentMode = "auto"
    #: how long a patient found by MRN is remembered (0: searched every time)
    patient_cache_ttl_s: float = Field(default=300.0, ge=0, le=86_400)

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
            patient_cache_ttl_s=self.patient_cache_ttl_s,
        )


def check_epic_routes(routes: RouteSet) -> None:
    """Refuse, when the routes are loaded, a route that would send an ``epic`` destination what
    it refuses at delivery: HL7v2 or FHIR messages (Epic takes HL7v2 over MLLP), or documents
    mapped to anything but ``fhir``. Raises :class:`ConfigError` naming the file and route."""
    for route in routes.routes:
        for name in route.destinations:
            spec = routes.destinations.get(name)
            if spec is None or spec.type != "epic":
                continue
            if route.input == "document" and route.mapping == "fhir":
                continue
            if route.input == "document":
                why = (
                    f"documents mapped to {route.mapping!r} cannot go to Epic over FHIR (use "
                    "mapping fhir; send MDM^T02 to an mllp destination)"
                )
            else:
                why = (
                    HL7V2_REFUSED.removeprefix("epic: ") + " (an epic destination takes documents)"
                )
            where = routes.origin.get(f"route:{route.name}", "routes")
            raise ConfigError(f"{where}: route {route.name!r} to epic destination {name!r}: {why}")


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
    status: list[str] = Field(default_factory=lambda: ["booked"], min_length=1)
    #: ``_count`` per page (the server may give fewer)
    page_size: int = Field(default=50, ge=1, le=1000)
    #: a pull stops with an error past this many pages (a server looping its next links)
    max_pages: int = Field(default=200, ge=1, le=10_000)
    #: the longest Retry-After waited for
    max_wait_s: float = Field(default=60.0, ge=0, le=600)

    def fhir(self) -> FhirSourceConfig:
        """The generic FHIR source this amounts to (smart-backend auth, Epic's base)."""
        auth = SmartBackendAuth(
            type="smart-backend",
            client_id=self.client_id,
            scope=self.scope,
            token_url=self.token_url,
        )
        return FhirSourceConfig(
            base_url=self.base_url,
            auth=auth,
            timeout_s=self.timeout_s,
            page_size=self.page_size,
            max_pages=self.max_pages,
            max_wait_s=self.max_wait_s,
            status=self.status,
        )


class EpicSource:
    """Booked appointments from Epic, each with its Patient (keyed by the organisation's MRN)
    and Coverages, as transaction Bundles.

    The reading is the generic FHIR source's (engine/adapters/fhir_source.py: Appointment search
    by date and status, every ``next`` page on the server's own origin, Retry-After obeyed, a new
    token once after a 401, answers size-capped); Epic's part is the MRN: a Patient carries many
    identifiers (Epic's internal ids, the MRN, others), so its MRN (``mrn_system``) is put first
    and keys the Patient's conditional update, and an appointment whose patient has none is
    skipped (logged with the appointment's id), since nothing downstream could match it.
    """

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
        if transport is None and config.base_url.startswith("https://"):
            transport = httpx.AsyncHTTPTransport(verify=ssl_context(config.tls))
        #: the generic source doing the reading
        self.fhir = FhirSource(name, config.fhir(), transport=transport, settings=settings)

    async def close(self) -> None:
        await self.fhir.close()

    async def pull(self, start: date, end: date) -> AsyncIterator[Pulled]:
        """Every appointment from ``start`` to ``end`` (inclusive), page after page."""
        async for pulled in self.fhir.pull(start, end):
            epic = _by_mrn(pulled, self.config.base_url, self.config.mrn_system)
            if epic is None:
                log.warning(
                    "appointment skipped: its patient has no MRN in mrn_system",
                    extra={"source": self.name, "version_key": pulled.version_key},
                )
                continue
            yield epic


def _by_mrn(pulled: Pulled, base: str, mrn_system: str) -> Pulled | None:
    """The pulled Bundle with each Patient's MRN first and its request keyed by it, and the
    version key ``epic:<base>:Appointment/<id>:<digest>``; None when a Patient has no MRN."""
    entries = []
    for entry in pulled.bundle.get("entry") or []:
        resource = entry.get("resource") or {}
        if resource.get("resourceType") == "Patient":
            idents = resource.get("identifier") or []
            mrn = [i for i in idents if i.get("system") == mrn_system and i.get("value")]
            if not mrn:
                return None
            others = [i for i in idents if i is not mrn[0]]
            token = f"{quote(mrn_system, safe=':/')}|{quote(str(mrn[0]['value']))}"
            entry = {
                **entry,
                "resource": {**resource, "identifier": [mrn[0], *others]},
                "request": {"method": "PUT", "url": f"Patient?identifier={token}"},
            }
        entries.append(entry)
    appointment, _, digest = pulled.version_key.partition("|")
    return Pulled(f"epic:{base}:{appointment}:{digest}", {**pulled.bundle, "entry": entries})
