"""The stub athenahealth enforces the rules a real tenant does, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import date

import httpx
import pytest

from engine.sim.athena import DEMO_DEPARTMENT, DEMO_PRACTICE, StubAthenaServer, running_stub_athena

PDF = b"%PDF-1.4\n% a synthetic test document\n%%EOF\n"


@pytest.fixture(scope="module")
def server() -> Iterator[StubAthenaServer]:
    with running_stub_athena(client_id="stub-client", client_secret="stub-secret") as athena:
        yield athena


_OPEN: list[httpx.Client] = []


@pytest.fixture
def athena(server: StubAthenaServer) -> Iterator[StubAthenaServer]:
    server.state.reset()
    yield server
    while _OPEN:
        _OPEN.pop().close()


def token(athena: StubAthenaServer, secret: str = "stub-secret") -> httpx.Response:
    return httpx.post(
        athena.token_url,
        data={"grant_type": "client_credentials", "scope": "athena/service/Athenanet.MDP.*"},
        auth=("stub-client", secret),
    )


def api(athena: StubAthenaServer) -> httpx.Client:
    resp = token(athena)
    assert resp.status_code == 200, resp.text
    bearer = resp.json()["access_token"]
    client = httpx.Client(
        base_url=f"{athena.url}/v1/{DEMO_PRACTICE}",
        headers={"Authorization": f"Bearer {bearer}"},
    )
    _OPEN.append(client)
    return client


def upload(client: httpx.Client, patient: str, **fields: str) -> httpx.Response:
    form = {"departmentid": DEMO_DEPARTMENT, "documentsubclass": "ADMIN_CONSENT", **fields}
    form = {k: v for k, v in form.items() if v}
    files = {"attachmentcontents": ("consent.pdf", PDF, "application/pdf")}
    return client.post(f"/patients/{patient}/documents", data=form, files=files)


def test_the_token_endpoint_checks_basic_client_credentials(athena: StubAthenaServer) -> None:
    assert token(athena, "wrong").status_code == 401
    assert token(athena, "wrong").json()["error"] == "invalid_client"
    good = token(athena)
    assert good.status_code == 200
    assert good.json()["expires_in"] == 3600
    assert good.json()["token_type"] == "Bearer"
    assert athena.state.token_requests == 3


def test_the_token_endpoint_limits_requests_per_client_per_minute(
    athena: StubAthenaServer,
) -> None:
    athena.state.token_limit_per_minute = 3
    answers = [token(athena) for _ in range(5)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429, 429]
    assert 0 < int(answers[3].headers["retry-after"]) <= 60
    assert athena.state.tokens_issued == 3


def test_the_api_needs_a_live_token(athena: StubAthenaServer) -> None:
    resp = httpx.get(f"{athena.url}/v1/{DEMO_PRACTICE}/patients/search?searchterm=DEMO1001")
    assert resp.status_code == 401
    client = api(athena)
    assert client.get("/patients/search", params={"searchterm": "DEMO1001"}).status_code == 200
    athena.state.expire_tokens()
    assert client.get("/patients/search", params={"searchterm": "DEMO1001"}).status_code == 401


def test_patient_search_and_insurances(athena: StubAthenaServer) -> None:
    client = api(athena)
    found = client.get("/patients/search", params={"searchterm": "DEMO1002"}).json()
    assert found["totalcount"] == 1
    (patient,) = found["patients"]
    assert patient["mrn"] == "DEMO1002" and patient["lastname"] == "Okafor"
    none = client.get("/patients/search", params={"searchterm": "NOBODY"}).json()
    assert none == {"patients": [], "totalcount": 0}
    (read,) = client.get(f"/patients/{patient['patientid']}").json()
    assert read["dob"] == "01/01/1970"
    ins = client.get(f"/patients/{patient['patientid']}/insurances").json()
    assert ins["insurances"][0]["insuranceidnumber"] == "DEMO100002"


def test_an_unknown_practice_or_department_is_refused(athena: StubAthenaServer) -> None:
    client = api(athena)
    other = client.get(f"{athena.url}/v1/999999/patients/search", params={"searchterm": "x"})
    assert other.status_code == 404
    resp = upload(client, athena.state.patient_id("DEMO1001"), departmentid="77")
    assert resp.status_code == 400 and "departmentid" in resp.json()["error"]


def test_an_upload_lands_and_is_counted_by_hash(athena: StubAthenaServer) -> None:
    client = api(athena)
    patient = athena.state.patient_id("DEMO1001")
    resp = upload(client, patient, internalnote="engine-doc 7")
    assert resp.status_code == 200, resp.text
    assert resp.json()["documentid"]
    digest = hashlib.sha256(PDF).hexdigest()
    assert athena.state.uploads_by_hash[digest] == 1
    (doc,) = athena.state.documents
    assert (doc.departmentid, doc.documentsubclass) == (DEMO_DEPARTMENT, "ADMIN_CONSENT")
    listed = client.get(f"/patients/{patient}/documents").json()
    assert listed["documents"][0]["internalnote"] == "engine-doc 7"


@pytest.mark.parametrize("missing", ["departmentid", "documentsubclass"])
def test_an_upload_without_a_required_field_names_it(
    athena: StubAthenaServer, missing: str
) -> None:
    client = api(athena)
    resp = upload(client, athena.state.patient_id("DEMO1001"), **{missing: ""})
    assert resp.status_code == 400
    assert resp.json()["missingfields"] == [missing]
    assert athena.state.documents == []


def test_an_upload_for_an_unknown_patient_or_subclass_is_refused(athena: StubAthenaServer) -> None:
    client = api(athena)
    assert upload(client, "424242").status_code == 404
    bad = upload(client, athena.state.patient_id("DEMO1001"), documentsubclass="NOPE")
    assert bad.status_code == 400 and "documentsubclass" in bad.json()["error"]


def test_requests_per_practice_are_paced(athena: StubAthenaServer) -> None:
    client = api(athena)
    athena.state.practice_rps = 3
    codes = [
        client.get("/patients/search", params={"searchterm": "x"}).status_code for _ in range(6)
    ]
    assert codes[:3] == [200, 200, 200]
    assert 429 in codes[3:]
    assert athena.state.paced == codes.count(429)


def test_booked_appointments_page_with_next(athena: StubAthenaServer) -> None:
    athena.state.seed_appointments(7, start=date(2030, 1, 7))
    client = api(athena)
    params = {
        "departmentid": DEMO_DEPARTMENT,
        "startdate": "01/07/2030",
        "enddate": "01/31/2030",
        "limit": "3",
    }
    first = client.get("/appointments/booked", params=params).json()
    assert first["totalcount"] == 7 and len(first["appointments"]) == 3
    seen = [a["appointmentid"] for a in first["appointments"]]
    nxt = first.get("next")
    while nxt:
        page = client.get(athena.url + nxt).json()
        seen += [a["appointmentid"] for a in page["appointments"]]
        nxt = page.get("next")
    assert len(seen) == len(set(seen)) == 7
    no_dept = client.get("/appointments/booked", params={**params, "departmentid": ""})
    assert no_dept.status_code == 400


def test_injected_failures(athena: StubAthenaServer) -> None:
    client = api(athena)
    athena.state.fail_next(503, n=1)
    athena.state.fail_next(429, n=1, retry_after=7)
    assert client.get("/patients/search", params={"searchterm": "x"}).status_code == 503
    limited = client.get("/patients/search", params={"searchterm": "x"})
    assert limited.status_code == 429 and limited.headers["retry-after"] == "7"
    assert client.get("/patients/search", params={"searchterm": "x"}).status_code == 200
