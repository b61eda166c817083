"""A stub athenahealth (athenaOne REST API) that enforces the rules a tenant does (real HTTP,
loopback, in memory).

What athena's developer documentation says, as the stub applies it (docs.athenahealth.com/api):

* ``POST /oauth2/v1/token``: OAuth 2.0 client credentials, the client authenticated with HTTP
  Basic (``client_secret_basic``), scope ``athena/service/Athenanet.MDP.*``; answers
  ``{access_token, token_type, expires_in: 3600, scope}``. The token endpoint is rate limited per
  client per minute (athena's "OAuth request" quota resets each minute): beyond
  :attr:`StubAthenaState.token_limit_per_minute` it answers 429 with ``Retry-After``;
* the API under ``/v1/{practiceid}/...`` wants a live bearer token (401 otherwise, or once it
  expired), a known practice (404) and is paced per practice (429 ``Retry-After: 1`` beyond
  :attr:`StubAthenaState.practice_rps` requests in a second);
* ``GET /patients/search?searchterm=``: patients whose athena id or MRN is the term;
  ``GET /patients/{patientid}`` (a list of one, as athena answers);
  ``GET /patients/{patientid}/insurances``;
* ``POST /patients/{patientid}/documents`` (multipart/form-data): one document per call;
  ``departmentid`` and ``documentsubclass`` required, the file in ``attachmentcontents`` (PDF:
  athena's docs recommend PDF, its APIs "not able to accept other formats"); a 400 names the
  missing field (``missingfields``); ``GET`` lists a patient's documents (with ``internalnote``);
* ``GET /appointments/booked?departmentid=&startdate=MM/DD/YYYY&enddate=``: paged with
  ``limit``/``offset``, ``totalcount`` and a ``next`` path until the last page.

Test switches: :meth:`StubAthenaState.fail_next` (5xx, 429 with Retry-After), ``delay_s`` (slow),
``token_retry_after`` (the token endpoint's 429 asks for that wait),
:meth:`StubAthenaState.expire_tokens`, :meth:`StubAthenaState.seed_appointments`,
:meth:`StubAthenaState.seed_load_patients`;
``token_requests``, ``tokens_issued``, ``uploads_by_hash`` and ``paced`` count what happened, and
``token_log`` keeps each token request's time and answer (the per-minute figures of a run).
Started with ``admin`` (``engine stub-athena --admin``), ``GET /admin/stats`` gives those counts
and ``POST /admin/expire`` revokes every token issued so far, over HTTP, for a stub that runs
as a process of its own (benches); never on by default, as they need no token.
Seeded with the demo's synthetic patients (engine/sim/demo.py) and their appointments on the next
business days.

Incomplete: the per-day API quota, document types (``documenttypeid``), class-specific document
endpoints and the real patient search's fuzzy matching are not simulated.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import math
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode

import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engine.sim.epic_fhir import (  # the demo days and load MRNs, as the stub Epic has them
    business_days,
    load_mrn,
)
from engine.sim.server_thread import ServerThread

__all__ = [
    "DEMO_DEPARTMENT",
    "DEMO_PRACTICE",
    "DOCUMENT_SUBCLASSES",
    "StubAthenaServer",
    "StubAthenaState",
    "create_stub_athena_app",
    "run_stub_athena",
    "running_stub_athena",
]

TOKEN_PATH = "/oauth2/v1/token"
SCOPE_PREFIX = "athena/service/Athenanet.MDP."
DEMO_PRACTICE = "195900"
DEMO_DEPARTMENT = "1"
MAX_FORM_BYTES = 64 * 1024
MAX_UPLOAD_BYTES = 25 * 1024 * 1024
MAX_LIMIT = 5000
#: token requests whose time and answer are kept for the per-minute figures
TOKEN_LOG_MAX = 100_000
#: athena ids of the synthetic load patients start above this (``seed_load_patients``)
LOAD_PATIENT_BASE = 100_000

#: athena's document subclasses the stub takes (the general document endpoint; the admin ones
#: are those of athena's Document Classification Guide)
DOCUMENT_SUBCLASSES = frozenset(
    {
        "ADMIN",
        "ADMIN_BILLING",
        "ADMIN_CONSENT",
        "ADMIN_HIPAA",
        "ADMIN_INSURANCEAPPROVAL",
        "ADMIN_INSURANCECARD",
        "ADMIN_INSURANCEDENIAL",
        "ADMIN_LEGAL",
        "ADMIN_MEDICALRECORDREQ",
        "ADMIN_REFERRAL",
        "ADMIN_SIGNEDFORMS",
        "CLINICALDOCUMENT",
        "ENCOUNTERDOCUMENT_PROGRESSNOTE",
        "IMAGINGRESULT",
        "LABRESULT",
        "MEDICALRECORD",
    }
)

#: the demo's synthetic patients (engine/sim/demo.py): MRN, last, first, DOB, sex, member id
_DEMO_PATIENTS = (
    ("DEMO1001", "Rivera", "Ana", "03/12/1985", "F", "DEMO100001"),
    ("DEMO1002", "Okafor", "Chidi", "01/01/1970", "M", "DEMO100002"),
    ("DEMO1003", "Lindqvist", "Maja", "11/20/1992", "F", "NOSUCH999"),
)
#: the demo payer's athena insurance package (a route maps it to the payer id DEMOPAY)
DEMO_INSURANCE_PACKAGE = "7001"


@dataclass
class StubDocument:
    """One uploaded document (its bytes are not kept: their hash and size are)."""

    documentid: str
    patientid: str
    departmentid: str
    documentsubclass: str
    sha256: str
    size: int
    internalnote: str = ""
    fields: dict[str, str] = field(default_factory=dict)


@dataclass
class StubAthenaState:
    """The stub's memory: clients, tokens, practices, patients, appointments, documents."""

    #: client id -> secret
    clients: dict[str, str] = field(default_factory=dict)
    #: practice id -> its department ids
    practices: dict[str, set[str]] = field(default_factory=dict)
    #: access token -> (client id, expires at time.time())
    tokens: dict[str, tuple[str, float]] = field(default_factory=dict)
    expires_in: int = 3600
    token_limit_per_minute: int = 5
    #: the Retry-After of the token endpoint's 429 instead of the rest of the minute (a test
    #: switch: a peer that asks for an absurd wait)
    token_retry_after: int | None = None
    #: requests a practice may make in one second
    practice_rps: int = 50
    #: how long every API answer takes (a slow EHR)
    delay_s: float = 0.0
    token_requests: int = 0
    tokens_issued: int = 0
    #: 429s the token endpoint gave for its per-minute limit
    token_limited: int = 0
    #: the most tokens one client got within any 60 seconds
    max_tokens_per_minute: int = 0
    #: API requests refused by the per-practice pacing
    paced: int = 0
    api_requests: int = 0
    #: API requests refused for a missing, unknown or expired bearer token
    api_unauthorized: int = 0
    #: every token request: (``time.time()`` when it came, the status answered), the newest
    #: :data:`TOKEN_LOG_MAX`
    token_log: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=TOKEN_LOG_MAX))
    patients: dict[str, dict[str, Any]] = field(default_factory=dict)
    insurances: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    appointments: list[dict[str, Any]] = field(default_factory=list)
    documents: list[StubDocument] = field(default_factory=list)
    uploads_by_hash: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[int, int | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _token_times: dict[str, deque[float]] = field(default_factory=dict)
    _issued_times: dict[str, deque[float]] = field(default_factory=dict)
    _practice_times: dict[str, deque[float]] = field(default_factory=dict)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(9001))

    def __post_init__(self) -> None:
        self.reset()

    def reset(self, today: date | None = None) -> None:
        """Back to the seeded demo (clients kept): no tokens, counters at zero."""
        with self.lock:
            self.practices = {DEMO_PRACTICE: {DEMO_DEPARTMENT, "2"}}
            self.tokens.clear()
            self.expires_in, self.token_limit_per_minute, self.practice_rps = 3600, 5, 50
            self.delay_s, self.token_retry_after = 0.0, None
            self.token_requests = self.tokens_issued = self.token_limited = 0
            self.max_tokens_per_minute = self.paced = self.api_requests = 0
            self.api_unauthorized = 0
            self.token_log.clear()
            self.documents.clear()
            self.uploads_by_hash.clear()
            self.failures.clear()
            self._token_times.clear()
            self._issued_times.clear()
            self._practice_times.clear()
            self.patients.clear()
            self.insurances.clear()
            self.appointments.clear()
            days = business_days(today or date.today(), 2)
            for n, (mrn, last, first, dob, sex, member) in enumerate(_DEMO_PATIENTS):
                pid = str(1001 + n)
                self.patients[pid] = {
                    "patientid": pid,
                    "mrn": mrn,
                    "lastname": last,
                    "firstname": first,
                    "dob": dob,
                    "sex": sex,
                    "departmentid": DEMO_DEPARTMENT,
                }
                self.insurances[pid] = [
                    {
                        "insuranceid": str(501 + n),
                        "insurancepackageid": DEMO_INSURANCE_PACKAGE,
                        "insuranceplanname": "Demo PPO",
                        "insurancepayername": "Demo Health Plan",
                        "insuranceidnumber": member,
                        "sequencenumber": "1",
                        "relationshiptoinsured": "Self",
                        "eligibilitystatus": "Unverified",
                    }
                ]
                for k, day in enumerate(days):
                    self.appointments.append(
                        {
                            "appointmentid": str(2001 + 10 * n + k),
                            "patientid": pid,
                            "departmentid": DEMO_DEPARTMENT,
                            "date": f"{day:%m/%d/%Y}",
                            "starttime": f"{9 + n:02d}:{30 * k:02d}",
                            "duration": "30",
                            "appointmenttype": "Office Visit",
                            "appointmenttypeid": "82",
                            "appointmentstatus": "f",
                            "providerid": "71",
                        }
                    )

    # -- test switches ---------------------------------------------------------------------------

    def register(self, client_id: str, secret: str) -> None:
        with self.lock:
            self.clients[client_id] = secret

    def expire_tokens(self) -> None:
        """Every token issued so far stops working (the next API call answers 401)."""
        with self.lock:
            self.tokens.clear()

    def fail_next(self, status: int, *, n: int = 1, retry_after: int | None = None) -> None:
        """The next ``n`` API requests answer ``status`` (with ``Retry-After`` if given)."""
        with self.lock:
            self.failures.extend([(status, retry_after)] * n)

    def seed_load_patients(self, n: int) -> None:
        """``n`` synthetic patients with the MRNs the stub Epic's load patients have
        (``LOAD00001``...; athena ids from :data:`LOAD_PATIENT_BASE` + 1), for benches whose
        documents are spread over many patients (the engine delivers one at a time per patient)."""
        with self.lock:
            for i in range(1, n + 1):
                pid = str(LOAD_PATIENT_BASE + i)
                self.patients[pid] = {
                    "patientid": pid,
                    "mrn": load_mrn(i),
                    "lastname": "Load",
                    "firstname": f"Patient{i}",
                    "dob": "01/01/1980",
                    "sex": "F" if i % 2 else "M",
                    "departmentid": DEMO_DEPARTMENT,
                }

    def stats(self) -> dict[str, Any]:
        """What happened, for ``GET /admin/stats`` and benches: the token endpoint's requests
        (each one's time and status in ``token_log``), its 429s, the API's, the uploads."""
        with self.lock:
            return {
                "token_requests": self.token_requests,
                "tokens_issued": self.tokens_issued,
                "token_limited": self.token_limited,
                "max_tokens_per_minute": self.max_tokens_per_minute,
                "token_limit_per_minute": self.token_limit_per_minute,
                "expires_in": self.expires_in,
                "token_log": [[round(t, 3), status] for t, status in self.token_log],
                "api_requests": self.api_requests,
                "api_unauthorized": self.api_unauthorized,
                "paced": self.paced,
                "uploads": sum(self.uploads_by_hash.values()),
                "documents_created_twice": sum(1 for n in self.uploads_by_hash.values() if n > 1),
            }

    def patient_id(self, mrn: str) -> str:
        return next(str(p["patientid"]) for p in self.patients.values() if p["mrn"] == mrn)

    def seed_appointments(self, n: int, *, start: date, patient_mrn: str = "DEMO1001") -> None:
        """``n`` more booked appointments from ``start`` (business days, one a day)."""
        pid = self.patient_id(patient_mrn)
        day = start
        with self.lock:
            for _ in range(n):
                while day.weekday() >= 5:
                    day += timedelta(days=1)
                self.appointments.append(
                    {
                        "appointmentid": str(next(self._ids)),
                        "patientid": pid,
                        "departmentid": DEMO_DEPARTMENT,
                        "date": f"{day:%m/%d/%Y}",
                        "starttime": "10:00",
                        "duration": "15",
                        "appointmenttype": "Follow Up",
                        "appointmenttypeid": "83",
                        "appointmentstatus": "f",
                        "providerid": "71",
                    }
                )
                day += timedelta(days=1)

    # -- rules -----------------------------------------------------------------------------------

    def token_client(self, token: str) -> str | None:
        with self.lock:
            client, until = self.tokens.get(token, ("", 0.0))
        return client if until > time.time() else None

    def _window(self, times: dict[str, deque[float]], key: str, span: float) -> deque[float]:
        now = time.monotonic()
        q = times.setdefault(key, deque())
        while q and q[0] <= now - span:
            q.popleft()
        return q


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status)


def _oauth(status: int, error: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": error}
    return JSONResponse(body, status, headers={"Cache-Control": "no-store", **(headers or {})})


def _basic(request: Request) -> tuple[str, str] | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        client, sep, secret = base64.b64decode(value, validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return (client, secret) if sep else None


def _mdy(text: str) -> date | None:
    try:
        return datetime.strptime(text, "%m/%d/%Y").date()
    except ValueError:
        return None


def _int(text: str | None, default: int) -> int:
    try:
        return int(text) if text not in (None, "") else default
    except ValueError:
        return -1


class _Athena:
    def __init__(self, state: StubAthenaState) -> None:
        self.state = state

    async def token(self, request: Request) -> Response:
        """:meth:`_token`, its time and answer logged (``token_log``)."""
        came = time.time()
        response = await self._token(request)
        with self.state.lock:
            self.state.token_log.append((came, response.status_code))
        return response

    async def _token(self, request: Request) -> Response:
        st = self.state
        body = await request.body()
        with st.lock:
            st.token_requests += 1
        creds = _basic(request)
        if creds is None or st.clients.get(creds[0]) != creds[1] or not creds[1]:
            return _oauth(401, "invalid_client", {"WWW-Authenticate": 'Basic realm="athena"'})
        if len(body) > MAX_FORM_BYTES:
            return _oauth(400, "invalid_request")
        form = {k: v[0] for k, v in parse_qs(body.decode("latin-1")).items()}
        if form.get("grant_type") != "client_credentials":
            return _oauth(400, "unsupported_grant_type")
        scope = form.get("scope", "")
        if not scope.startswith(SCOPE_PREFIX):
            return _oauth(400, "invalid_scope")
        client = creds[0]
        with st.lock:
            window = st._window(st._token_times, client, 60.0)
            if len(window) >= st.token_limit_per_minute:
                st.token_limited += 1
                oldest = window[0] if window else time.monotonic()
                wait = max(1, math.ceil(60.0 - (time.monotonic() - oldest)))
                if st.token_retry_after is not None:
                    wait = st.token_retry_after
                return _oauth(429, "rate_limited", {"Retry-After": str(wait)})
            window.append(time.monotonic())
            issued = st._window(st._issued_times, client, 60.0)
            issued.append(time.monotonic())
            st.max_tokens_per_minute = max(st.max_tokens_per_minute, len(issued))
            access = secrets.token_urlsafe(24)
            st.tokens[access] = (client, time.time() + st.expires_in)
            st.tokens_issued += 1
            expires_in = st.expires_in
        return JSONResponse(
            {
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": expires_in,
                "scope": scope,
            },
            headers={"Cache-Control": "no-store"},
        )

    async def _gate(self, request: Request) -> Response | None:
        """Bearer, practice, pacing, injected failures and delay, in that order."""
        st = self.state
        scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or st.token_client(bearer) is None:
            with st.lock:
                st.api_unauthorized += 1
            return _error(401, "Invalid Access Token")
        practice = request.path_params["practiceid"]
        with st.lock:
            st.api_requests += 1
            if practice not in st.practices:
                return _error(404, "Invalid practice.")
            window = st._window(st._practice_times, practice, 1.0)
            if len(window) >= st.practice_rps:
                st.paced += 1
                return JSONResponse(
                    {"error": "Too many requests"}, 429, headers={"Retry-After": "1"}
                )
            window.append(time.monotonic())
            failure = st.failures.pop(0) if st.failures else None
            delay = st.delay_s
        if delay > 0:
            await asyncio.sleep(delay)
        if failure is not None:
            status, retry_after = failure
            headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
            return JSONResponse({"error": "injected failure"}, status, headers=headers)
        return None

    def _patient(self, request: Request) -> dict[str, Any] | None:
        with self.state.lock:
            return self.state.patients.get(request.path_params["patientid"])

    async def search(self, request: Request) -> Response:
        if (refused := await self._gate(request)) is not None:
            return refused
        term = request.query_params.get("searchterm", "").strip()
        if not term:
            return _error(400, "Additional fields are required.", missingfields=["searchterm"])
        with self.state.lock:
            found = [
                dict(p) for p in self.state.patients.values() if term in (p["patientid"], p["mrn"])
            ]
        return JSONResponse({"patients": found, "totalcount": len(found)})

    async def patient(self, request: Request) -> Response:
        if (refused := await self._gate(request)) is not None:
            return refused
        patient = self._patient(request)
        if patient is None:
            return _error(404, "The patient is not found.")
        return JSONResponse([dict(patient)])

    async def insurances(self, request: Request) -> Response:
        if (refused := await self._gate(request)) is not None:
            return refused
        if self._patient(request) is None:
            return _error(404, "The patient is not found.")
        with self.state.lock:
            rows = [
                dict(i) for i in self.state.insurances.get(request.path_params["patientid"], [])
            ]
        return JSONResponse({"insurances": rows, "totalcount": len(rows)})

    async def list_documents(self, request: Request) -> Response:
        if (refused := await self._gate(request)) is not None:
            return refused
        pid = request.path_params["patientid"]
        with self.state.lock:
            docs = [
                {
                    "documentid": d.documentid,
                    "departmentid": d.departmentid,
                    "documentsubclass": d.documentsubclass,
                    "internalnote": d.internalnote,
                }
                for d in self.state.documents
                if d.patientid == pid
            ]
        return JSONResponse({"documents": docs, "totalcount": len(docs)})

    async def add_document(self, request: Request) -> Response:
        if (refused := await self._gate(request)) is not None:
            return refused
        if _int(request.headers.get("content-length"), 0) > MAX_UPLOAD_BYTES + MAX_FORM_BYTES:
            return _error(413, "The document is larger than 25 MiB.")
        if self._patient(request) is None:
            return _error(404, "The patient is not found.")
        practice = request.path_params["practiceid"]
        async with request.form(max_files=1, max_fields=32, max_part_size=MAX_FORM_BYTES) as form:
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
            upload = form.get("attachmentcontents")
            content = await upload.read() if isinstance(upload, UploadFile) else b""
        missing = [
            name
            for name, value in (
                ("departmentid", fields.get("departmentid")),
                ("documentsubclass", fields.get("documentsubclass")),
                ("attachmentcontents", content),
            )
            if not value
        ]
        if missing:
            return _error(400, "Additional fields are required.", missingfields=missing)
        if fields["departmentid"] not in self.state.practices[practice]:
            return _error(400, "Invalid departmentid.")
        if fields["documentsubclass"] not in DOCUMENT_SUBCLASSES:
            return _error(400, "Invalid documentsubclass.")
        if not content.startswith(b"%PDF-"):
            return _error(400, "attachmentcontents must be a PDF.")
        digest = hashlib.sha256(content).hexdigest()
        with self.state.lock:
            doc = StubDocument(
                documentid=str(next(self.state._ids)),
                patientid=request.path_params["patientid"],
                departmentid=fields["departmentid"],
                documentsubclass=fields["documentsubclass"],
                sha256=digest,
                size=len(content),
                internalnote=fields.get("internalnote", ""),
                fields=fields,
            )
            self.state.documents.append(doc)
            self.state.uploads_by_hash[digest] += 1
        return JSONResponse({"documentid": doc.documentid})

    async def booked(self, request: Request) -> Response:
        if (refused := await self._gate(request)) is not None:
            return refused
        q = request.query_params
        missing = [k for k in ("departmentid", "startdate", "enddate") if not q.get(k)]
        if missing:
            return _error(400, "Additional fields are required.", missingfields=missing)
        start, end = _mdy(q["startdate"]), _mdy(q["enddate"])
        if start is None or end is None:
            return _error(400, "startdate and enddate are MM/DD/YYYY.")
        limit, offset = _int(q.get("limit"), 1500), _int(q.get("offset"), 0)
        if not 0 < limit <= MAX_LIMIT or offset < 0:
            return _error(400, "Invalid limit or offset.")
        departments = set(q["departmentid"].split(","))
        with self.state.lock:
            rows = [
                dict(a)
                for a in self.state.appointments
                if a["departmentid"] in departments and start <= _mdy(a["date"]) <= end  # type: ignore[operator]
            ]
        rows.sort(key=lambda a: (_mdy(a["date"]), a["starttime"], a["appointmentid"]))
        page = rows[offset : offset + limit]
        body: dict[str, Any] = {"appointments": page, "totalcount": len(rows)}
        if offset + limit < len(rows):
            params = {**dict(q), "offset": str(offset + limit), "limit": str(limit)}
            body["next"] = f"{request.url.path}?{urlencode(params)}"
        if offset > 0:
            params = {**dict(q), "offset": str(max(0, offset - limit)), "limit": str(limit)}
            body["previous"] = f"{request.url.path}?{urlencode(params)}"
        return JSONResponse(body)


class _Admin:
    """Test controls over HTTP, mounted only when the stub is started with ``admin``."""

    def __init__(self, state: StubAthenaState) -> None:
        self.state = state

    async def stats(self, request: Request) -> Response:
        return JSONResponse(self.state.stats())

    async def expire(self, request: Request) -> Response:
        self.state.expire_tokens()
        return JSONResponse({"ok": True})


def create_stub_athena_app(
    state: StubAthenaState | None = None, *, admin: bool = False
) -> Starlette:
    """The stub as an ASGI app; ``app.state.athena`` is its :class:`StubAthenaState`.
    ``admin`` adds the unauthenticated test controls (``/admin/stats``, ``/admin/expire``)."""
    state = state or StubAthenaState()
    athena = _Athena(state)
    base = "/v1/{practiceid}"
    controls = _Admin(state)
    admin_routes = [
        Route("/admin/stats", controls.stats, methods=["GET"]),
        Route("/admin/expire", controls.expire, methods=["POST"]),
    ]
    app = Starlette(
        routes=[
            *(admin_routes if admin else []),
            Route(TOKEN_PATH, athena.token, methods=["POST"]),
            Route(f"{base}/patients/search", athena.search),
            Route(f"{base}/patients/{{patientid}}", athena.patient),
            Route(f"{base}/patients/{{patientid}}/insurances", athena.insurances),
            Route(f"{base}/patients/{{patientid}}/documents", athena.list_documents),
            Route(
                f"{base}/patients/{{patientid}}/documents", athena.add_document, methods=["POST"]
            ),
            Route(f"{base}/appointments/booked", athena.booked),
        ]
    )
    app.state.athena = state
    return app


def run_stub_athena(
    host: str,
    port: int,
    *,
    client_id: str,
    client_secret: str,
    token_limit_per_minute: int | None = None,
    token_lifetime_s: int | None = None,
    admin: bool = False,
    load_patients: int = 0,
) -> None:  # pragma: no cover - runs until interrupted
    """Serve the stub until interrupted (``engine stub-athena``); the token endpoint's
    per-minute limit and the tokens' lifetime as given (else athena's: 5, 3600 s)."""
    state = StubAthenaState()
    state.register(client_id, client_secret)
    if token_limit_per_minute is not None:
        state.token_limit_per_minute = token_limit_per_minute
    if token_lifetime_s is not None:
        state.expires_in = token_lifetime_s
    state.seed_load_patients(load_patients)
    app = create_stub_athena_app(state, admin=admin)
    uvicorn.run(app, host=host, port=port, log_level="info")


class StubAthenaServer(ServerThread):
    """The stub athena on a free loopback port."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, admin: bool = False) -> None:
        self.state = StubAthenaState()
        super().__init__(create_stub_athena_app(self.state, admin=admin), host, port)

    @property
    def base_url(self) -> str:
        return self.url

    @property
    def token_url(self) -> str:
        return self.url + TOKEN_PATH


@contextmanager
def running_stub_athena(
    *, client_id: str = "", client_secret: str = "", **kwargs: Any
) -> Iterator[StubAthenaServer]:
    """``with running_stub_athena(client_id=..., client_secret=...) as athena: ...``."""
    server = StubAthenaServer(**kwargs)
    if client_id:
        server.state.register(client_id, client_secret)
    server.start()
    try:
        yield server
    finally:
        server.stop()
