"""The ``athenahealth`` pull source: booked appointments, their patients and insurances, as FHIR.

For practices whose athena sends no HL7 feed. Each pull reads, for the practice and each of its
departments (athena's documentation: docs.athenahealth.com/api, Appointment Slot and Patient
Insurance pages):

* ``GET /v1/{practiceid}/appointments/booked?departmentid=&startdate=MM/DD/YYYY&enddate=``
  with ``limit``/``offset``, every page: the ``next`` path athena gives, else ``offset`` moved on
  until ``totalcount`` is reached (athena's default page is 1500 rows, its maximum 5000);
* ``GET /v1/{practiceid}/patients/{patientid}`` (an array of one) and
  ``GET /v1/{practiceid}/patients/{patientid}/insurances``, once per patient per pull.

Each appointment becomes one :class:`~engine.adapters.source.Pulled`: a transaction Bundle with
the Patient (identifiers: athena's patient id and, when athena has one, the MRN typed ``MR``),
a payer Organization and a Coverage per insurance with a member id (``subscriberId``; the payer's
first identifier is the site's payer id from ``payer_ids``, keyed by athena's
``insurancepackageid``: what the eligibility job sends to the payer), and the Appointment (start
in the practice's time zone, its participant the Patient). Entries are conditional updates by
identifier, with stable ``urn:uuid`` fullUrls (a v5 UUID of the identifier), so pulling again
updates the same resources in the engine's index.

``version_key`` = ``athena:<practice>:appointment/<id>:<digest>``, the digest over athena's own
rows (appointment, patient, insurances): unchanged, the same key (stored once); a moved
appointment or a new member id, a new key.

Every answer is read up to ``max_response_bytes`` (10 MiB; decoded, streamed): a page past it
stops the pull unread (raise it with ``page_size``). A 429 or 503 is waited out (Retry-After, at
most ``max_wait_s``) up to three times; a 401 gets a new token once; anything else stops the
pull with a :class:`SourceError` naming the request and its status, never a patient's data.

Incomplete: a dependent's subscriber (athena's ``insurancepolicyholder*`` fields) is not made a
RelatedPerson; providers and departments are not read.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
import orjson
from pydantic import Field, field_validator, model_validator

from engine.adapters.athena_client import (
    AnswerTooLarge,
    AthenaClient,
    AthenaConnection,
    athena_secret,
)
from engine.adapters.oauth2 import TokenError, retry_after
from engine.adapters.source import Pulled, SourceError
from engine.errors import EngineError
from engine.settings import Settings, load_settings

__all__ = ["AthenaSource", "AthenaSourceConfig", "appointment_bundle"]

log = logging.getLogger(__name__)

_WAIT_STATUSES = frozenset({429, 503})
_WAITS = 3
_V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
_RELATIONSHIP = "http://terminology.hl7.org/CodeSystem/subscriber-relationship"
#: athena's appointmentstatus -> FHIR Appointment.status
_STATUS = {
    "x": "cancelled",
    "f": "booked",
    "o": "proposed",
    "2": "checked-in",
    "3": "fulfilled",
    "4": "fulfilled",
}
_SEX = {"M": "male", "F": "female"}
_RELATIONS = {"self": "self", "spouse": "spouse", "child": "child"}


class AthenaSourceConfig(AthenaConnection):
    """A route file's ``sources.<name>`` with ``type: athenahealth``."""

    #: the departments to read (default: ``department_id``)
    department_ids: list[str] = Field(default_factory=list)
    #: rows asked for per page (``limit``)
    page_size: int = Field(default=500, ge=1, le=5000)
    max_pages: int = Field(default=200, ge=1, le=10_000)
    #: athena's ``insurancepackageid`` -> the payer id the site's payer files know
    payer_ids: dict[str, str] = Field(default_factory=dict)
    #: the system of the MRN identifier (default ``urn:engine:identifier:athena-<practice>``)
    mrn_system: str | None = None
    #: the practice's time zone (athena's times are local); default: the engine's
    timezone: str | None = None
    max_wait_s: float = Field(default=60.0, gt=0, le=600)
    #: the longest answer read (decoded bytes): a page past it stops the pull unread
    max_response_bytes: int = Field(default=10 * 2**20, ge=1024, le=256 * 2**20)

    @field_validator("department_ids")
    @classmethod
    def _departments(cls, value: list[str]) -> list[str]:
        for d in value:
            if not d.isdigit() or len(d) > 12:
                raise ValueError(f"department id {d!r} is not an athena id (digits)")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"timezone {value!r} is not an IANA time zone") from exc
        return value

    @model_validator(mode="after")
    def _where(self) -> AthenaSourceConfig:
        if not self.practice_id:
            raise ValueError("a source needs practice_id (athena's practice id)")
        if not self.departments:
            raise ValueError("a source needs department_id or department_ids")
        return self

    @property
    def departments(self) -> list[str]:
        return self.department_ids or ([self.department_id] if self.department_id else [])


def _ident(system: str, value: str, code: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"system": system, "value": value}
    if code:
        out["type"] = {"coding": [{"system": _V2_0203, "code": code}]}
    return out


def _entry(rtype: str, ident: dict[str, Any], resource: dict[str, Any]) -> dict[str, Any]:
    key = f"{ident['system']}|{ident['value']}"
    return {
        "fullUrl": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{rtype}/{key}')}",
        "resource": {"resourceType": rtype, **resource},
        "request": {"method": "PUT", "url": f"{rtype}?identifier={key}"},
    }


def _iso_date(mdy: object) -> str | None:
    try:
        return datetime.strptime(str(mdy), "%m/%d/%Y").date().isoformat()
    except ValueError:
        return None


def appointment_bundle(
    practice: str,
    appt: Mapping[str, Any],
    patient: Mapping[str, Any],
    insurances: Sequence[Mapping[str, Any]],
    *,
    payer_ids: Mapping[str, str],
    mrn_system: str,
    zone: ZoneInfo,
) -> dict[str, Any]:
    """One athena appointment, its patient and insurances as a FHIR R4 transaction Bundle."""
    athena = f"urn:athenahealth:practice:{practice}"
    pid = str(patient.get("patientid") or appt.get("patientid"))
    patient_id = _ident(f"{athena}:patient", pid, "PI")
    identifiers = [patient_id]
    mrn = str(patient.get("mrn") or "")
    if mrn:
        identifiers.append(_ident(mrn_system, mrn, "MR"))
    person: dict[str, Any] = {"identifier": identifiers}
    name = {k: v for k, v in (("family", patient.get("lastname")),) if v}
    if patient.get("firstname"):
        name["given"] = [patient["firstname"]]
    if name:
        person["name"] = [name]
    if born := _iso_date(patient.get("dob")):
        person["birthDate"] = born
    person["gender"] = _SEX.get(str(patient.get("sex", "")).upper(), "unknown")
    entries = [_entry("Patient", patient_id, person)]
    patient_url = entries[0]["fullUrl"]

    for ins in insurances:
        member = str(ins.get("insuranceidnumber") or "")
        package = str(ins.get("insurancepackageid") or "")
        if not member or not package:
            continue  # nothing a payer could check
        payer = _ident("urn:engine:payer", payer_ids.get(package, package), "NIIP")
        org: dict[str, Any] = {
            "identifier": [payer, _ident("urn:athenahealth:insurancepackageid", package)],
        }
        if ins.get("insurancepayername") or ins.get("insuranceplanname"):
            org["name"] = ins.get("insurancepayername") or ins.get("insuranceplanname")
        org_entry = _entry("Organization", payer, org)
        coverage_id = _ident(f"{athena}:insurance", str(ins.get("insuranceid") or member), "MB")
        relation = _RELATIONS.get(str(ins.get("relationshiptoinsured", "")).lower(), "other")
        coverage: dict[str, Any] = {
            "identifier": [coverage_id],
            "status": "active",
            "subscriberId": member,
            "beneficiary": {"reference": patient_url},
            "relationship": {"coding": [{"system": _RELATIONSHIP, "code": relation}]},
            "payor": [{"reference": org_entry["fullUrl"]}],
            "order": int(ins["sequencenumber"]) if str(ins.get("sequencenumber")).isdigit() else 1,
        }
        if ins.get("insuranceplanname"):
            coverage["class"] = [
                {
                    "type": {"coding": [{"code": "plan"}]},
                    "value": package,
                    "name": ins["insuranceplanname"],
                }
            ]
        entries += [org_entry, _entry("Coverage", coverage_id, coverage)]

    appt_id = _ident(f"{athena}:appointment", str(appt.get("appointmentid")))
    visit: dict[str, Any] = {
        "identifier": [appt_id],
        "status": _STATUS.get(str(appt.get("appointmentstatus", "")).lower(), "booked"),
        "participant": [{"actor": {"reference": patient_url}, "status": "accepted"}],
    }
    start = _start(appt, zone)
    if start is not None:
        visit["start"] = start.isoformat()
        minutes = str(appt.get("duration") or "")
        if minutes.isdigit():
            visit["minutesDuration"] = int(minutes)
            visit["end"] = (start + timedelta(minutes=int(minutes))).isoformat()
    if appt.get("appointmenttype"):
        visit["appointmentType"] = {"text": appt["appointmenttype"]}
    entries.append(_entry("Appointment", appt_id, visit))
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _start(appt: Mapping[str, Any], zone: ZoneInfo) -> datetime | None:
    try:
        local = datetime.strptime(f"{appt.get('date')} {appt.get('starttime')}", "%m/%d/%Y %H:%M")
    except ValueError:
        return None
    return local.replace(tzinfo=zone)


class AthenaSource:
    """A scheduled pull of one athena practice's booked appointments."""

    def __init__(
        self,
        name: str,
        config: AthenaSourceConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        environ: Mapping[str, str] | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.name = name
        self.config = config
        env = os.environ if environ is None else environ
        secret = athena_secret(config, f"source {name}", env)
        self.api = AthenaClient(config, secret, settings=settings, transport=transport)
        self._settings = settings
        assert config.practice_id is not None  # the model's check
        self.practice: str = config.practice_id

    async def close(self) -> None:
        await self.api.close()

    def _zone(self) -> ZoneInfo:
        name = self.config.timezone
        if name is None:
            try:
                name = (self._settings or load_settings()).timezone
            except EngineError:
                name = "UTC"
        return ZoneInfo(name)

    async def pull(self, start: date, end: date) -> AsyncIterator[Pulled]:
        """Every booked appointment from ``start`` to ``end``, department by department."""
        zone = self._zone()
        patients: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
        mrn_system = self.config.mrn_system or f"urn:engine:identifier:athena-{self.practice}"
        for department in self.config.departments:
            async for appt in self._booked(department, start, end):
                pid = str(appt.get("patientid") or "")
                if not pid.isdigit():
                    log.warning("athena appointment without a patient", extra={"source": self.name})
                    continue
                if pid not in patients:
                    patients[pid] = await self._patient(pid)
                patient, insurances = patients[pid]
                digest = hashlib.sha256(
                    orjson.dumps([appt, patient, insurances], option=orjson.OPT_SORT_KEYS)
                ).hexdigest()[:16]
                bundle = appointment_bundle(
                    self.practice,
                    appt,
                    patient,
                    insurances,
                    payer_ids=self.config.payer_ids,
                    mrn_system=mrn_system,
                    zone=zone,
                )
                key = f"athena:{self.practice}:appointment/{appt.get('appointmentid')}:{digest}"
                yield Pulled(key, bundle)

    async def _booked(
        self, department: str, start: date, end: date
    ) -> AsyncIterator[dict[str, Any]]:
        path = "/appointments/booked"
        params: dict[str, str] | None = {
            "departmentid": department,
            "startdate": f"{start:%m/%d/%Y}",
            "enddate": f"{end:%m/%d/%Y}",
            "limit": str(self.config.page_size),
            "offset": "0",
        }
        seen = 0
        for _ in range(self.config.max_pages):
            body = await self._get(path, params, "appointments/booked")
            rows = body.get("appointments") or []
            if not isinstance(rows, list):
                raise SourceError(
                    f"athena appointments/booked: no appointments list (page at {seen})"
                )
            for row in rows:
                if isinstance(row, dict):
                    yield row
            seen += len(rows)
            total = body.get("totalcount")
            nxt = body.get("next")
            if isinstance(nxt, str) and nxt:
                path, params = self._same_practice(nxt), None
            elif isinstance(total, int) and seen < total and rows:
                params = {**(params or {}), "offset": str(seen)}
            else:
                return
        raise SourceError(
            f"athena appointments/booked: more than {self.config.max_pages} pages (max_pages)"
        )

    def _same_practice(self, link: str) -> str:
        """athena's ``next`` as a path on this practice (never another host)."""
        base = self.config.base_url
        path = link[len(base) :] if link.startswith(base) else link
        if not path.startswith(f"/v1/{self.practice}/"):
            raise SourceError("athena appointments/booked: a next link off this practice")
        return path

    async def _patient(self, pid: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        body = await self._get(f"/patients/{pid}", None, "patient")
        rows = body.get("_list") if "_list" in body else [body]
        patient = rows[0] if isinstance(rows, list) and rows and isinstance(rows[0], dict) else {}
        ins = await self._get(f"/patients/{pid}/insurances", None, "patient insurances")
        insurances = [i for i in ins.get("insurances") or [] if isinstance(i, dict)]
        return patient, insurances

    async def _get(self, path: str, params: dict[str, str] | None, what: str) -> dict[str, Any]:
        for attempt in range(_WAITS + 1):
            try:
                resp = await self.api.request(
                    "GET",
                    self.practice,
                    path,
                    params=params,
                    max_bytes=self.config.max_response_bytes,
                )
            except TokenError as exc:
                raise SourceError(f"athena: {exc.detail}") from exc
            except AnswerTooLarge as exc:
                raise SourceError(
                    f"athena {what}: the answer is larger than {exc.limit} bytes"
                    " (max_response_bytes)"
                ) from exc
            except httpx.HTTPError as exc:
                raise SourceError(f"athena {what}: {type(exc).__name__}") from exc
            if resp.status_code in _WAIT_STATUSES and attempt < _WAITS:
                wait = min(retry_after(resp) or 1.0, self.config.max_wait_s)
                log.info("athena asked to wait", extra={"source": self.name, "wait_s": wait})
                await asyncio.sleep(wait)
                continue
            if resp.status_code != 200:
                raise SourceError(f"athena {what} -> {resp.status_code}")
            try:
                body = resp.json()
            except ValueError as exc:
                raise SourceError(f"athena {what}: the answer is not JSON") from exc
            if isinstance(body, list):
                return {"_list": body}
            if not isinstance(body, dict):
                raise SourceError(f"athena {what}: the answer is not a JSON object")
            return body
        raise AssertionError("unreachable")
