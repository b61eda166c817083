"""athena's booked appointments pulled into the store, processed and indexed, and found by the
eligibility job with their coverage and payer: no HL7 interface at all (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.adapters.athena_source import AthenaSource, AthenaSourceConfig
from engine.adapters.registry import load_routes
from engine.flow.process import Processor
from engine.jobs.pull import pull_source
from engine.mappings import Mappings, load_mappings
from engine.settings import Settings
from engine.sim.athena import (
    DEMO_DEPARTMENT,
    DEMO_INSURANCE_PACKAGE,
    DEMO_PRACTICE,
    StubAthenaServer,
    running_stub_athena,
)
from engine.store import SqlMessageStore
from tests.jobs.conftest import MONDAY, TIMEZONE, TODAY, service

CLIENT = "engine-athena-eligibility"
SECRET = "athena-eligibility-secret"


@pytest.fixture(scope="module")
def athena() -> Iterator[StubAthenaServer]:
    with running_stub_athena(client_id=CLIENT, client_secret=SECRET) as server:
        yield server


@pytest.fixture(scope="module")
def mappings() -> Mappings:
    return load_mappings()


def source(athena: StubAthenaServer, home: Path) -> AthenaSource:
    config = AthenaSourceConfig.model_validate(
        {
            "base_url": athena.url,
            "client_id": CLIENT,
            "client_secret_env": "ATHENA_ELIGIBILITY_SECRET",
            "practice_id": DEMO_PRACTICE,
            "department_id": DEMO_DEPARTMENT,
            "payer_ids": {DEMO_INSURANCE_PACKAGE: "DEMOPAY"},
            "timezone": TIMEZONE,
            "page_size": 2,
            "requests_per_second": 50,
        }
    )
    return AthenaSource(
        "athena",
        config,
        environ={"ATHENA_ELIGIBILITY_SECRET": SECRET},
        settings=Settings(home=home),
    )


def test_pulled_athena_appointments_are_eligibility_targets(
    store: SqlMessageStore,
    athena: StubAthenaServer,
    mappings: Mappings,
    tmp_path: Path,
) -> None:
    athena.state.reset(today=TODAY)  # the demo's appointments on Monday and Tuesday
    (home := tmp_path / "home").mkdir()
    (tmp_path / "routes").mkdir()
    routes = load_routes(defaults=tmp_path / "routes")

    async def pull() -> tuple[int, int]:
        src = source(athena, home)
        try:
            counts = await pull_source(store, "athena", src, MONDAY, MONDAY)
        finally:
            await src.close()
        assert counts.error is None, counts.error
        return counts.new, counts.unchanged

    assert asyncio.run(pull()) == (3, 0)
    assert asyncio.run(pull()) == (0, 3)  # pulled again unchanged: nothing new stored
    processor = Processor(store, routes, mappings)
    while processor.process_batch():
        pass

    targets = service(store).targets(MONDAY, 1)
    members = sorted(str(t.coverage["subscriberId"]) for t in targets)
    assert members == ["DEMO100001", "DEMO100002", "NOSUCH999"]
    assert {t.payer["identifier"][0]["value"] for t in targets} == {"DEMOPAY"}
    assert all(t.service_date == MONDAY for t in targets)
    names = sorted(t.patient["name"][0]["family"] for t in targets)
    assert names == ["Lindqvist", "Okafor", "Rivera"]
