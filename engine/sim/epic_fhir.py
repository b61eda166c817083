"""The stub Epic's FHIR R4 API: what the engine reads and writes, with Epic's rules enforced.

Served under ``/api/FHIR/R4`` behind the stub's bearer tokens (:mod:`engine.sim.epic`):

* ``GET metadata``: a CapabilityStatement (https://hl7.org/fhir/R4/capabilitystatement.html);
  it lists Binary ``create`` only while :attr:`EpicData.binary_supported` is true, so a client
  that reads it picks inline attachments or Binary first;
* ``GET Patient?identifier=system|value``: search by MRN (Epic refuses a search without a
  parameter: 400); ``GET Patient/<id>`` is the generic stub's read;
* ``GET Appointment?date=geYYYY-MM-DD&date=leYYYY-MM-DD&status=booked[&patient=][&_count=]``:
  a searchset, paged with ``Bundle.link`` ``next`` (http.html#paging, search.html#count);
* ``GET Coverage?patient=<id>``; ``GET DocumentReference?identifier=..&subject=..``;
* ``POST DocumentReference``: validated with fhir.resources (R4B models, which read R4
  DocumentReference alike), ``status`` one of R4's codes, ``subject`` an existing Patient, the
  attachment's ``data`` (base64, its ``size`` checked when given) or ``url`` = ``Binary/<id>``
  of a Binary created here, its ``hash`` (base64 SHA-1) checked against the bytes when
  given; ``If-None-Exist`` (http.html#ccreate: ``identifier``, ``subject`` or ``patient``)
  honoured atomically: one match answers 200 with it, several 412;
* ``POST Binary``: the raw bytes with their media type as Content-Type, or a FHIR JSON Binary
  (http.html#binary); 405 when :attr:`EpicData.binary_supported` is false; raw bytes 415
  when :attr:`EpicData.binary_raw_supported` is false.

What tests look at: :attr:`EpicData.creates_by_hash` counts DocumentReferences created per
SHA-256 of their content (the "delivered once" check), :attr:`EpicData.binary_creates`, and
:attr:`EpicData.searches` counts searches per resource type.

Like Epic, ids are opaque strings. The stub keeps a document's hash, not its bytes: a Binary is
stored without ``data`` (the bench would otherwise fill memory).

Incomplete: no ``_include``; date search on the appointment's start date only; Epic may
require ``patient`` on Appointment search for backend apps (docs/EHRS.md).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode
from zoneinfo import ZoneInfo

import orjson
from fhir.resources.R4B.documentreference import DocumentReference
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine.sim.demo import PATIENTS
from engine.sim.fhir_server import StubFhirState

__all__ = [
    "APPOINTMENT_SYSTEM",
    "COVERAGE_SYSTEM",
    "MRN_SYSTEM",
    "EpicData",
    "business_days",
    "epic_fhir_routes",
    "load_mrn",
]

#: the synthetic MRN identifier system (Epic's are OIDs of this shape, per organisation)
MRN_SYSTEM = "urn:oid:1.2.840.114350.1.13.99999.2.7.5.737384.14"


def load_mrn(n: int) -> str:
    """The MRN of synthetic load patient ``n`` (1-based; :meth:`EpicData.seed_load_patients`)."""
    return f"LOAD{n:05d}"


#: the appointment (CSN) and coverage identifier systems of the stub
APPOINTMENT_SYSTEM = "urn:oid:1.2.840.114350.1.13.99999.2.7.3.698084.8"
COVERAGE_SYSTEM = "urn:oid:1.2.840.114350.1.13.99999.2.7.2.657380"
_FHIR_JSON = "application/fhir+json"
_DOC_STATUS = ("current", "superseded", "entered-in-error")
#: a 25 MiB document in base64 inside its JSON, with room to spare
MAX_BODY_BYTES = 40 * 1024 * 1024
_MAX_COUNT = 100


@dataclass
class EpicData:
    """The stub's FHIR-side memory beside the generic stub's resources (``fhir``)."""

    fhir: StubFhirState
    binary_supported: bool = True
    #: Binary create takes raw bytes (else only a FHIR JSON Binary: 415 for the rest)
    binary_raw_supported: bool = True
    #: raw Binary creates refused (415) while ``binary_raw_supported`` is off
    binary_refused: int = 0
    #: conditional create (If-None-Exist) honoured; off, a server that ignores the header
    honour_if_none_exist: bool = True
    #: SHA-256 of a DocumentReference's content -> how many were created with it
    creates_by_hash: Counter[str] = field(default_factory=Counter)
    binary_creates: int = 0
    #: Binary id -> SHA-256 of its bytes, and the base64 of their SHA-1 (Attachment.hash)
    binary_sha: dict[str, str] = field(default_factory=dict)
    binary_sha1: dict[str, str] = field(default_factory=dict)
    searches: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset_documents(self) -> None:
        """Forget every DocumentReference and Binary and the counts (the seed data stays)."""
        with self.fhir.lock:
            self.fhir.resources.pop("DocumentReference", None)
            self.fhir.resources.pop("Binary", None)
        with self.lock:
            self.creates_by_hash.clear()
            self.binary_creates = 0
            self.binary_sha.clear()
            self.binary_sha1.clear()
            self.searches.clear()

    def put(self, resource: dict[str, Any]) -> dict[str, Any]:
        """Store a new resource with an opaque id and ``meta`` (the caller holds no lock)."""
        with self.fhir.lock:
            return self._put(resource)

    def _put(self, resource: dict[str, Any]) -> dict[str, Any]:
        rid = resource.get("id") or "e" + secrets.token_hex(8)
        stored = {
            **resource,
            "id": rid,
            "meta": {
                "versionId": "1",
                "lastUpdated": datetime.now(UTC).isoformat(timespec="milliseconds"),
            },
        }
        self.fhir.resources.setdefault(resource["resourceType"], {})[rid] = stored
        return stored

    def seed_load_patients(self, count: int) -> None:
        """``count`` more synthetic patients, MRNs ``LOAD00001``..., for load tests: a clinic's
        documents are spread over many patients, and the engine keeps one delivery in flight
        per patient and destination, so a load over the three demo patients would measure
        three queues, not the engine."""
        for n in range(1, count + 1):
            self.put(
                {
                    "resourceType": "Patient",
                    "identifier": [{"use": "usual", "system": MRN_SYSTEM, "value": load_mrn(n)}],
                    "name": [{"family": "Loadtest", "given": [f"Patient{n}"]}],
                    "active": True,
                }
            )

    def seed_demo(self, today: date, tz: str = "America/New_York") -> None:
        """The demo patients (engine/sim/demo.py) with a booked appointment on each of the next
        two business days at 09:00, 10:00, 11:00 local time, and one coverage each."""
        zone = ZoneInfo(tz)
        days = business_days(today, 2)
        for n, (mrn, family, given, dob, sex, payer, payer_name, member) in enumerate(PATIENTS):
            patient = self.put(
                {
                    "resourceType": "Patient",
                    "identifier": [
                        {
                            "use": "usual",
                            "type": {"text": "MRN"},
                            "system": MRN_SYSTEM,
                            "value": mrn,
                        }
                    ],
                    "name": [{"use": "official", "family": family, "given": [given]}],
                    "gender": {"F": "female", "M": "male"}.get(sex, "unknown"),
                    "birthDate": f"{dob[:4]}-{dob[4:6]}-{dob[6:]}",
                    "active": True,
                }
            )
            ref = {"reference": f"Patient/{patient['id']}", "display": f"{family}, {given}"}
            self.put(
                {
                    "resourceType": "Coverage",
                    "status": "active",
                    "identifier": [{"system": COVERAGE_SYSTEM, "value": member}],
                    "subscriberId": member,
                    "beneficiary": {"reference": ref["reference"]},
                    "relationship": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/subscriber-relationship",
                                "code": "self",
                            }
                        ]
                    },
                    "payor": [{"identifier": {"value": payer}, "display": payer_name}],
                    "class": [
                        {
                            "type": {
                                "coding": [
                                    {
                                        "system": "http://terminology.hl7.org/CodeSystem/coverage-class",
                                        "code": "plan",
                                    }
                                ]
                            },
                            "value": "DEMO-PPO",
                            "name": "Demo PPO",
                        }
                    ],
                }
            )
            for d, day in enumerate(days):
                start = datetime.combine(day, time(9 + n), zone)
                self.put(
                    {
                        "resourceType": "Appointment",
                        "status": "booked",
                        "identifier": [{"system": APPOINTMENT_SYSTEM, "value": f"CSN{mrn}{d}"}],
                        "serviceType": [{"text": "Office Visit"}],
                        "start": start.isoformat(),
                        "end": (start + timedelta(minutes=30)).isoformat(),
                        "minutesDuration": 30,
                        "participant": [
                            {"actor": ref, "required": "required", "status": "accepted"},
                            {
                                "actor": {"display": "Demo Clinic, Exam 1"},
                                "required": "required",
                                "status": "accepted",
                            },
                        ],
                    }
                )


def business_days(today: date, n: int) -> list[date]:
    """The ``n`` business days (Monday to Friday) after ``today``."""
    out: list[date] = []
    day = today
    while len(out) < n:
        day += timedelta(days=1)
        if day.weekday() < 5:
            out.append(day)
    return out


class _Problem(Exception):
    def __init__(self, status: int, code: str, text: str) -> None:
        super().__init__(text)
        self.status, self.code, self.text = status, code, text


def _outcome(status: int, code: str, text: str) -> Response:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}],
    }
    return Response(orjson.dumps(body), status, media_type=_FHIR_JSON)


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers=headers, media_type=_FHIR_JSON)


def _searchset(
    matches: list[dict[str, Any]], links: list[dict[str, str]] | None = None, total: int = -1
) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(matches) if total < 0 else total,
        "link": links or [],
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in matches],
    }


def _date_ok(start: str, tests: list[str]) -> bool:
    """The appointment's start date against ``date`` search values (ge, le, gt, lt, eq)."""
    day = start[:10]
    for raw in tests:
        prefix, value = (raw[:2], raw[2:]) if raw[:2].isalpha() else ("eq", raw)
        value = value[:10]
        ok = {
            "ge": day >= value,
            "le": day <= value,
            "gt": day > value,
            "lt": day < value,
            "eq": day == value,
        }.get(prefix)
        if not ok:
            return False
    return True


def _has_identifier(resource: dict[str, Any], token: str) -> bool:
    system, bar, value = token.partition("|")
    for ident in resource.get("identifier") or []:
        if ident.get("value") == value and (not bar or ident.get("system", "") == system):
            return True
    return False


class _EpicFhir:
    def __init__(self, data: EpicData, base: str) -> None:
        self.data = data
        self.base = base

    def _origin(self, request: Request) -> str:
        return f"{request.url.scheme}://{request.url.netloc}{self.base}"

    def _all(self, rtype: str) -> list[dict[str, Any]]:
        with self.data.fhir.lock:
            return list(self.data.fhir.resources.get(rtype, {}).values())

    def _count(self, rtype: str) -> None:
        with self.data.lock:
            self.data.searches[rtype] += 1

    async def metadata(self, request: Request) -> Response:
        def res(rtype: str, *codes: str) -> dict[str, Any]:
            return {"type": rtype, "interaction": [{"code": c} for c in codes]}

        resources = [
            res("Patient", "read", "search-type"),
            res("Appointment", "read", "search-type"),
            res("Coverage", "read", "search-type"),
            res("DocumentReference", "read", "create"),
        ]
        resources.append(
            res("Binary", "read", "create") if self.data.binary_supported else res("Binary", "read")
        )
        return _json(
            {
                "resourceType": "CapabilityStatement",
                "status": "active",
                "date": "2026-01-01",
                "kind": "instance",
                "software": {"name": "stub Epic (hl7-engine)"},
                "fhirVersion": "4.0.1",
                "format": ["json"],
                "rest": [{"mode": "server", "resource": resources}],
            }
        )

    async def patients(self, request: Request) -> Response:
        token = request.query_params.get("identifier")
        if not token:
            return _outcome(400, "required", "Patient search needs a parameter (identifier)")
        self._count("Patient")
        return _json(_searchset([p for p in self._all("Patient") if _has_identifier(p, token)]))

    async def coverages(self, request: Request) -> Response:
        patient = request.query_params.get("patient", "").removeprefix("Patient/")
        if not patient:
            return _outcome(400, "required", "Coverage search needs patient")
        self._count("Coverage")
        ref = f"Patient/{patient}"
        found = [c for c in self._all("Coverage") if c["beneficiary"]["reference"] == ref]
        return _json(_searchset(found))

    async def appointments(self, request: Request) -> Response:
        q = parse_qs(request.url.query)
        dates, status = q.get("date", []), q.get("status", [])
        patient = (q.get("patient") or [""])[0].removeprefix("Patient/")
        if not dates and not patient:
            return _outcome(400, "required", "Appointment search needs date or patient")
        try:
            count = min(int((q.get("_count") or ["10"])[0]), _MAX_COUNT)
            offset = int((q.get("_offset") or ["0"])[0])
        except ValueError:
            return _outcome(400, "value", "_count and _offset are integers")
        if count < 1 or offset < 0:
            return _outcome(400, "value", "_count must be at least 1")
        self._count("Appointment")
        found = [
            a
            for a in self._all("Appointment")
            if _date_ok(a["start"], dates)
            and (not status or a["status"] in status)
            and (
                not patient
                or any(
                    p.get("actor", {}).get("reference") == f"Patient/{patient}"
                    for p in a["participant"]
                )
            )
        ]
        found.sort(key=lambda a: (a["start"], a["id"]))
        page = found[offset : offset + count]
        query = [(k, v) for k, vs in q.items() if k != "_offset" for v in vs]
        links = [
            {"relation": "self", "url": f"{self._origin(request)}/Appointment?{request.url.query}"}
        ]
        if offset + count < len(found):
            nxt = urlencode([*query, ("_offset", str(offset + count))])
            links.append({"relation": "next", "url": f"{self._origin(request)}/Appointment?{nxt}"})
        return _json(_searchset(page, links, total=len(found)))

    async def documents(self, request: Request) -> Response:
        """DocumentReference search by ``identifier`` and ``subject`` or ``patient``."""
        if not request.url.query:
            return _outcome(400, "required", "DocumentReference search needs a parameter")
        self._count("DocumentReference")
        try:
            with self.data.fhir.lock:
                found = self._matching(request.url.query)
        except _Problem as exc:
            return _outcome(exc.status, exc.code, exc.text)
        return _json(_searchset(found))

    async def binary(self, request: Request) -> Response:
        if not self.data.binary_supported:
            return _outcome(405, "not-supported", "Binary create is not enabled")
        raw = await _body(request)
        if isinstance(raw, Response):
            return raw
        media = request.headers.get("content-type", "application/octet-stream").split(";")[0]
        if media not in (_FHIR_JSON, "application/json") and not self.data.binary_raw_supported:
            with self.data.lock:
                self.data.binary_refused += 1
            return _outcome(415, "not-supported", "Binary create takes application/fhir+json")
        if media in (_FHIR_JSON, "application/json"):
            try:
                doc = orjson.loads(raw)
                media = str(doc["contentType"])
                raw = base64.b64decode(doc.get("data", ""), validate=True)
            except (orjson.JSONDecodeError, KeyError, TypeError, binascii.Error):
                return _outcome(400, "structure", "not a FHIR Binary with contentType and data")
        digest = hashlib.sha256(raw).hexdigest()
        stored = self.data.put({"resourceType": "Binary", "contentType": media})
        with self.data.lock:
            self.data.binary_creates += 1
            self.data.binary_sha[stored["id"]] = digest
            self.data.binary_sha1[stored["id"]] = _sha1(raw)
        location = f"{self._origin(request)}/Binary/{stored['id']}/_history/1"
        return _json(stored, 201, {"Location": location, "ETag": 'W/"1"'})

    async def document_reference(self, request: Request) -> Response:
        raw = await _body(request)
        if isinstance(raw, Response):
            return raw
        try:
            resource, digest = self._check_document(raw)
        except _Problem as exc:
            return _outcome(exc.status, exc.code, exc.text)
        condition = request.headers.get("if-none-exist")
        if not self.data.honour_if_none_exist:
            condition = None
        with self.data.fhir.lock:  # the check and the create in one step (concurrent retries)
            if condition:
                matches = self._matching(condition)
                if len(matches) > 1:
                    return _outcome(412, "multiple-matches", "If-None-Exist matches several")
                if matches:
                    return _json(matches[0], 200)
            attachment = resource["content"][0]["attachment"]
            attachment.pop("data", None)  # the stub keeps the hash, not the bytes
            stored = self.data._put(resource)
        with self.data.lock:
            self.data.creates_by_hash[digest] += 1
        location = f"{self._origin(request)}/DocumentReference/{stored['id']}/_history/1"
        return _json(stored, 201, {"Location": location, "ETag": 'W/"1"'})

    def _check_document(self, raw: bytes) -> tuple[dict[str, Any], str]:
        try:
            resource = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise _Problem(400, "structure", "the body is not JSON") from exc
        if not isinstance(resource, dict) or resource.get("resourceType") != "DocumentReference":
            raise _Problem(400, "structure", "the body is not a DocumentReference")
        try:  # the structure; the base64 data is checked by decoding it below (5 ms a MiB less)
            DocumentReference.model_validate(_without_data(resource))
        except ValidationError as exc:
            paths = sorted({".".join(str(p) for p in e["loc"]) for e in exc.errors()})
            raise _Problem(400, "structure", f"invalid at {', '.join(paths[:5])}") from exc
        if resource.get("status") not in _DOC_STATUS:
            raise _Problem(400, "value", "status must be current, superseded or entered-in-error")
        subject = str((resource.get("subject") or {}).get("reference") or "")
        rtype, _, pid = subject.partition("/")
        if rtype != "Patient" or self.data.fhir.get("Patient", pid) is None:
            raise _Problem(422, "not-found", "subject is not a known Patient")
        attachment = resource["content"][0]["attachment"]
        if attachment.get("data"):
            try:
                content = base64.b64decode(attachment["data"], validate=True)
            except (binascii.Error, ValueError) as exc:
                raise _Problem(400, "value", "attachment.data is not base64") from exc
            if attachment.get("size") is not None and attachment["size"] != len(content):
                raise _Problem(422, "value", "attachment.size differs from the data's size")
            _check_hash(attachment, _sha1(content))
            return resource, hashlib.sha256(content).hexdigest()
        url = str(attachment.get("url") or "")
        bid = url.rsplit("Binary/", 1)[-1]
        with self.data.lock:
            digest = self.data.binary_sha.get(bid) if url else None
            sha1 = self.data.binary_sha1.get(bid, "")
        if "Binary/" not in url or digest is None:
            raise _Problem(422, "required", "attachment needs data or the url of a Binary here")
        _check_hash(attachment, sha1)
        return resource, digest

    def _matching(self, condition: str) -> list[dict[str, Any]]:
        """DocumentReferences matching an If-None-Exist query; fhir lock held."""
        q = parse_qs(condition.lstrip("?"))
        if not q:
            raise _Problem(400, "invalid", "If-None-Exist is not a search")
        out = []
        for doc in self.data.fhir.resources.get("DocumentReference", {}).values():
            ok = all(_has_identifier(doc, v) for v in q.get("identifier", []))
            for key in ("subject", "patient"):
                for v in q.get(key, []):
                    want = v if "/" in v else f"Patient/{v}"
                    ok = ok and (doc.get("subject") or {}).get("reference") == want
            if ok:
                out.append(doc)
        return out


def _sha1(data: bytes) -> str:
    return base64.b64encode(hashlib.sha1(data).digest()).decode()  # noqa: S324 (FHIR's choice)


def _check_hash(attachment: dict[str, Any], sha1: str) -> None:
    """Attachment.hash, when given, is the base64 of the data's SHA-1 (R4 datatypes)."""
    if attachment.get("hash") not in (None, sha1):
        raise _Problem(422, "value", "attachment.hash is not the SHA-1 of the data")


def _without_data(resource: dict[str, Any]) -> dict[str, Any]:
    contents = resource.get("content")
    if not isinstance(contents, list):
        return resource
    out = []
    for c in contents:
        if isinstance(c, dict) and isinstance(c.get("attachment"), dict):
            c = {**c, "attachment": {k: v for k, v in c["attachment"].items() if k != "data"}}
        out.append(c)
    return {**resource, "content": out}


async def _body(request: Request) -> bytes | Response:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return _outcome(413, "too-costly", "body larger than 40 MiB")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return _outcome(413, "too-costly", "body larger than 40 MiB")
        chunks.append(chunk)
    return b"".join(chunks)


def epic_fhir_routes(data: EpicData, base: str) -> list[Route]:
    """The Epic-specific FHIR routes (in front of the generic stub's, which reads by id)."""
    epic = _EpicFhir(data, base)
    return [
        Route(f"{base}/metadata", epic.metadata, methods=["GET"]),
        Route(f"{base}/Patient", epic.patients, methods=["GET"]),
        Route(f"{base}/Appointment", epic.appointments, methods=["GET"]),
        Route(f"{base}/Coverage", epic.coverages, methods=["GET"]),
        Route(f"{base}/DocumentReference", epic.document_reference, methods=["POST"]),
        Route(f"{base}/DocumentReference", epic.documents, methods=["GET"]),
        Route(f"{base}/Binary", epic.binary, methods=["POST"]),
    ]
