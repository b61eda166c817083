"""End to end with the stub Epic (real HTTP, SMART Backend Services token): a route file's
``type: epic`` source pulls the demo practice's booked appointments, the processor indexes them,
and the eligibility job gives each a verdict from the stub payer — with no HL7 interface."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from engine.adapters.payer import load_payers
from engine.adapters.registry import load_routes
from engine.flow.process import Processor
from engine.jobs.eligibility import EligibilityService
from engine.jobs.pull import build_pull_jobs
from engine.keys import Keyring
from engine.mappings import Mappings
from engine.settings import Settings
from engine.sim.epic import MRN_SYSTEM, StubEpicServer, business_days
from engine.store import SqlMessageStore
from tests.sim.epic_support import epic_with_client

CLIENT = "engine-pull-e2e"
TIMEZONE = "America/New_York"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("home")
    Keyring(home / "var" / "keys").create("ES384")
    return home


@pytest.fixture(scope="module")
def epic(home: Path) -> Iterator[StubEpicServer]:
    with epic_with_client(Keyring(home / "var" / "keys"), CLIENT) as server:
        yield server


def test_an_epic_pull_gets_every_demo_appointment_an_eligibility_verdict(
    store: SqlMessageStore,
    epic: StubEpicServer,
    home: Path,
    tmp_path: Path,
    mappings: Mappings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ENGINE_HOME", str(home))  # the engine's signing key, as the worker's
    site = tmp_path / "routes"
    site.mkdir()
    (site / "epic.yaml").write_text(
        f"""
sources:
  epic-clinic:
    type: epic
    base_url: {epic.base_url}
    client_id: {CLIENT}
    mrn_system: "{MRN_SYSTEM}"
    every_minutes: 15
    days: 5
"""
    )
    routes = load_routes(site, defaults=tmp_path / "none")
    settings = Settings(home=home, timezone=TIMEZONE)
    jobs = build_pull_jobs(routes, settings, store, strict=True)

    async def pull() -> int:
        try:
            counts = await jobs.run("epic-clinic")
        finally:
            await jobs.close()
        assert counts.error is None, counts.error
        return counts.new

    first = business_days(date.today(), 2)[0]
    assert asyncio.run(pull()) >= 3  # three demo patients on each of two business days
    processor = Processor(store, routes, mappings)
    while processor.process_batch():
        pass
    svc = EligibilityService(store, load_payers(), settings)
    outcomes = asyncio.run(svc.check_upcoming(start=first, days=1))
    asyncio.run(svc.close())
    assert sorted(o.status for o in outcomes) == ["eligible", "inactive", "needs_action"]
    assert {o.payer_id for o in outcomes} != {""}
    assert all(o.patient_url.startswith(epic.base_url + "/Patient/") for o in outcomes)
