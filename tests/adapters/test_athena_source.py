"""The ``athenahealth`` pull source against the stub athena, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from engine.adapters.athena_source import AthenaSource, AthenaSourceConfig
from engine.adapters.source import Pulled, SourceError
from engine.flow.process import index_rows
from engine.settings import Settings
from engine.sim.athena import (
    DEMO_DEPARTMENT,
    DEMO_INSURANCE_PACKAGE,
    DEMO_PRACTICE,
    StubAthenaServer,
    running_stub_athena,
)

CLIENT = "engine-athena-pull"
SECRET = "athena-pull-secret"
SECRET_ENV = "ATHENA_PULL_SECRET"
JAN = date(2030, 1, 7)  # a Monday, far from the seeded demo appointments


@pytest.fixture(scope="module")
def server() -> Iterator[StubAthenaServer]:
    with running_stub_athena(client_id=CLIENT, client_secret=SECRET) as athena:
        yield athena


@pytest.fixture
def athena(server: StubAthenaServer) -> StubAthenaServer:
    server.state.reset()
    return server


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


def source(athena: StubAthenaServer, home: Path, **extra: Any) -> AthenaSource:
    config = AthenaSourceConfig.model_validate(
        {
            "base_url": athena.url,
            "client_id": CLIENT,
            "client_secret_env": SECRET_ENV,
            "practice_id": DEMO_PRACTICE,
            "department_id": DEMO_DEPARTMENT,
            "payer_ids": {DEMO_INSURANCE_PACKAGE: "DEMOPAY"},
            "timezone": "America/New_York",
            "requests_per_second": 100,
            **extra,
        }
    )
    return AthenaSource(
        "athena-pull", config, environ={SECRET_ENV: SECRET}, settings=Settings(home=home)
    )


def pull(src: AthenaSource, start: date, end: date) -> list[Pulled]:
    async def run() -> list[Pulled]:
        try:
            return [p async for p in src.pull(start, end)]
        finally:
            await src.close()

    return asyncio.run(run())


def resources(pulled: Pulled, rtype: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in pulled.bundle["entry"] if e["resource"]["resourceType"] == rtype]


def test_every_page_is_pulled(athena: StubAthenaServer, home: Path) -> None:
    athena.state.seed_appointments(7, start=JAN)
    pulled = pull(source(athena, home, page_size=3), JAN, JAN + timedelta(days=30))
    ids = [resources(p, "Appointment")[0]["identifier"][0]["value"] for p in pulled]
    assert len(ids) == len(set(ids)) == 7
    keys = {p.version_key for p in pulled}
    assert len(keys) == 7
    assert all(k.startswith(f"athena:{DEMO_PRACTICE}:appointment/") for k in keys)


def test_the_bundle_has_patient_coverage_payer_and_appointment(
    athena: StubAthenaServer, home: Path
) -> None:
    athena.state.seed_appointments(1, start=JAN, patient_mrn="DEMO1002")
    (one,) = pull(source(athena, home), JAN, JAN)
    bundle = one.bundle
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
    (patient,) = resources(one, "Patient")
    values = {i["value"] for i in patient["identifier"]}
    assert values == {athena.state.patient_id("DEMO1002"), "DEMO1002"}
    mr = [i for i in patient["identifier"] if i["type"]["coding"][0]["code"] == "MR"]
    assert mr[0]["value"] == "DEMO1002"
    assert patient["birthDate"] == "1970-01-01" and patient["gender"] == "male"
    (coverage,) = resources(one, "Coverage")
    (payer,) = resources(one, "Organization")
    assert coverage["subscriberId"] == "DEMO100002" and coverage["status"] == "active"
    assert payer["identifier"][0]["value"] == "DEMOPAY"
    (appt,) = resources(one, "Appointment")
    assert appt["status"] == "booked"
    assert datetime.fromisoformat(appt["start"]) == datetime.fromisoformat(
        "2030-01-07T10:00:00-05:00"
    )
    assert appt["minutesDuration"] == 15
    urls = {e["resource"]["resourceType"]: e["fullUrl"] for e in bundle["entry"]}
    assert coverage["beneficiary"]["reference"] == urls["Patient"]
    assert coverage["payor"][0]["reference"] == urls["Organization"]
    assert all(e["request"]["method"] == "PUT" for e in bundle["entry"])
    # what the engine's index (and so the eligibility job) makes of it
    rows = {r.resource_type: r for r in index_rows(bundle)}
    assert rows["Appointment"].patient_url == urls["Patient"]
    assert rows["Coverage"].patient_url == urls["Patient"]


def test_an_unchanged_appointment_keeps_its_key_and_a_change_makes_a_new_one(
    athena: StubAthenaServer, home: Path
) -> None:
    athena.state.seed_appointments(2, start=JAN)
    first = pull(source(athena, home), JAN, JAN + timedelta(days=3))
    again = pull(source(athena, home), JAN, JAN + timedelta(days=3))
    assert [p.version_key for p in first] == [p.version_key for p in again]
    athena.state.appointments[-1]["starttime"] = "11:30"
    changed = pull(source(athena, home), JAN, JAN + timedelta(days=3))
    assert changed[0].version_key == first[0].version_key
    assert changed[1].version_key != first[1].version_key


def test_the_demo_appointments_of_the_next_business_days(
    athena: StubAthenaServer, home: Path
) -> None:
    today = date.today()
    pulled = pull(source(athena, home), today, today + timedelta(days=7))
    mrns = {
        i["value"]
        for p in pulled
        for i in resources(p, "Patient")[0]["identifier"]
        if i["value"].startswith("DEMO")
    }
    assert len(pulled) == 6 and mrns == {"DEMO1001", "DEMO1002", "DEMO1003"}


def test_a_429_while_paging_is_waited_out(athena: StubAthenaServer, home: Path) -> None:
    athena.state.seed_appointments(4, start=JAN)
    athena.state.fail_next(429, retry_after=1)
    started = time.monotonic()
    pulled = pull(source(athena, home, page_size=2), JAN, JAN + timedelta(days=10))
    assert len(pulled) == 4
    assert time.monotonic() - started >= 1.0


def test_an_unavailable_athena_stops_the_pull_naming_the_status(
    athena: StubAthenaServer, home: Path
) -> None:
    athena.state.fail_next(500, n=1)
    with pytest.raises(SourceError, match=r"appointments/booked -> 500"):
        pull(source(athena, home), JAN, JAN)


def test_a_401_fetches_a_new_token_once(athena: StubAthenaServer, home: Path) -> None:
    athena.state.seed_appointments(1, start=JAN)
    assert len(pull(source(athena, home), JAN, JAN)) == 1
    athena.state.expire_tokens()
    assert len(pull(source(athena, home), JAN, JAN)) == 1
    assert athena.state.token_requests == 2


def test_a_source_without_a_department_is_refused() -> None:
    with pytest.raises(ValueError, match="department"):
        AthenaSourceConfig.model_validate(
            {"base_url": "http://x", "client_id": "c", "client_secret_env": "S", "practice_id": "1"}
        )
