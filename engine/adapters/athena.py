"""athenahealth (athenaOne REST API): the ``athenahealth`` destination, for documents.

What athena's developer documentation says (docs.athenahealth.com/api; the notes for
docs/EHRS.md list the pages), as applied here:

The connection (token, hosts, pacing) is :mod:`engine.adapters.athena_client`.

* **Documents**: one document per call, ``POST /v1/{practiceid}/patients/{patientid}/documents``
  as multipart/form-data: the file in ``attachmentcontents``, ``departmentid`` (required for
  every document class), ``documentsubclass`` (our document type mapped through
  the document type table's ``athena`` column, engine/mappings/specs/tables/document_types.yaml
  layered with the site's, overridable per destination), ``internalnote``. athena
  recommends PDF ("the APIs are not able to accept other formats"): a TIFF, JPEG or PNG is
  refused here, permanently, naming its type.
* **Patient**: found by MRN with ``GET /v1/{practiceid}/patients/search?searchterm=<mrn>``
  (the result whose ``mrn`` is exactly it: the search term also matches athena's own patient
  ids, which must never stand for an MRN), cached ``patient_cache_ttl_s``; no
  match is :meth:`DeliveryResult.unknown_patient` (the delivery waits in *needs patient*).
* **Pacing**: ``requests_per_second`` per practice, shared by the deliveries of the destinations
  in one process (athena throttles per app); a 429 is retried after its Retry-After.

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

import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx
from pydantic import Field, field_validator

from engine.adapters.athena_client import (
    AnswerTooLarge,
    AthenaClient,
    AthenaConnection,
    athena_secret,
    classify,
    is_athena_id,
    token_result,
)
from engine.adapters.destination import DeliveryResult, Payload
from engine.adapters.oauth2 import TokenError
from engine.documents.model import DocumentEnvelope, DocumentInfo
from engine.errors import EngineError
from engine.mappings.document_types import DocumentTypes, load_document_types
from engine.settings import Settings, load_settings

__all__ = ["AthenaDestination", "AthenaDestinationConfig"]

_MAX_ANSWER_BYTES = 4 * 1024 * 1024


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


class _Refused(Exception):
    """Private: stops a delivery early with its result."""

    def __init__(self, result: DeliveryResult) -> None:
        super().__init__(result.detail)
        self.result = result


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
        except AnswerTooLarge as exc:  # an answer no patient search needs: athena misbehaves
            return DeliveryResult.retry(f"athena: an answer larger than {exc.limit} bytes")
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
        if doc.appointment is not None and is_athena_id(doc.appointment):
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
            "GET",
            practice,
            "/patients/search",
            params={"searchterm": mrn},
            max_bytes=_MAX_ANSWER_BYTES,
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
            # athena's search term matches its own patient ids (and names) too: only the MRN
            # counts, or a practice MRN equal to another patient's id files in that chart
            if isinstance(r, dict) and str(r.get("mrn", "")) == mrn
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
        try:
            resp = await self.api.request(
                "GET",
                practice,
                f"/patients/{patient}/documents",
                params={"departmentid": department},
                max_bytes=_MAX_ANSWER_BYTES,
            )
        except AnswerTooLarge:
            return None  # as before: a list too long to check is uploaded to (at least once)
        if resp.status_code != 200:
            raise _Refused(classify(resp, "document list"))
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
