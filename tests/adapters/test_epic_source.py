"""The ``epic`` pull source against the stub Epic over real HTTP, with the real SMART Backend
Services token: booked appointments paged to the end, each with its Patient keyed by the MRN
and the patient's Coverage, in one transaction Bundle."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from engine.adapters.epic import EpicSource, EpicSourceConfig
from engine.adapters.source import Pulled, SourceError
from engine.keys import Keyring
from engine.settings import Settings
from engine.sim.demo import PATIENTS
from engine.sim.epic import MRN_SYSTEM, StubEpicServer, business_days
from tests.sim.epic_support import epic_with_client

CLIENT = "engine-epic-pull"
TODAY = date.today()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("home")
    Keyring(home / "var" / "keys").create("ES384")
    return home


@pytest.fixture(scope="module")
def epic_server(home: Path) -> Iterator[StubEpicServer]:
    with epic_with_client(Keyring(home / "var" / "keys"), CLIENT) as epic:
        yield epic


@pytest.fixture
def epic(epic_server: StubEpicServer, home: Path) -> StubEpicServer:
    epic_server.state.failures.clear()
    epic_server.state.data.searches.clear()
    epic_server.state.revoke_tokens()
    for cached in (home / "var" / "tokens").glob("smart-*.json"):
        cached.unlink()
    return epic_server


def source(epic: StubEpicServer, home: Path, **keys: Any) -> EpicSource:
    config = EpicSourceConfig.model_validate(
        {"base_url": epic.base_url, "client_id": CLIENT, "mrn_system": MRN_SYSTEM, **keys}
    )
    return EpicSource("epic-pull", config, settings=Settings(home=home))


def pull(src: EpicSource, start: date, end: date) -> list[Pulled]:
    async def run() -> list[Pulled]:
        try:
            return [p async for p in src.pull(start, end)]
        finally:
            await src.close()

    return asyncio.run(run())


def window() -> tuple[date, date]:
    days = business_days(TODAY, 2)
    return days[0], days[-1]


def test_pull_pages_to_the_end(epic: StubEpicServer, home: Path) -> None:
    start, end = window()
    pulled = pull(source(epic, home, page_size=2), start, end)
    expected = len(PATIENTS) * 2
    assert len(pulled) == expected
    assert len({p.version_key for p in pulled}) == expected
    assert epic.state.data.searches["Appointment"] == (expected + 1) // 2  # every page
    assert epic.state.data.searches["Coverage"] == len(PATIENTS)  # once per patient


def test_each_bundle_has_the_patient_by_mrn_its_coverage_and_the_appointment(
    epic: StubEpicServer, home: Path
) -> None:
    start, end = window()
    first = pull(source(epic, home), start, end)[0]
    bundle = first.bundle
    assert bundle["type"] == "transaction"
    by_type = {e["resource"]["resourceType"]: e for e in bundle["entry"]}
    assert set(by_type) == {"Patient", "Coverage", "Appointment"}
    patient = by_type["Patient"]
    mrn = patient["resource"]["identifier"][0]
    assert mrn["system"] == MRN_SYSTEM and mrn["value"].startswith("DEMO100")
    assert patient["request"] == {
        "method": "PUT",
        "url": f"Patient?identifier={MRN_SYSTEM}|{mrn['value']}",
    }
    appt = by_type["Appointment"]["resource"]
    actors = [p["actor"].get("reference") for p in appt["participant"]]
    assert patient["fullUrl"] in actors
    assert by_type["Coverage"]["resource"]["beneficiary"]["reference"] == patient["fullUrl"]
    assert first.version_key.startswith(f"epic:{epic.base_url}:Appointment/{appt['id']}:")


def test_pulling_again_unchanged_gives_the_same_keys(epic: StubEpicServer, home: Path) -> None:
    start, end = window()
    once = [p.version_key for p in pull(source(epic, home), start, end)]
    again = [p.version_key for p in pull(source(epic, home), start, end)]
    assert once == again


def test_429_waited_out_and_401_renewed(epic: StubEpicServer, home: Path) -> None:
    start, end = window()
    src = source(epic, home, page_size=3)

    async def run() -> list[Pulled]:
        try:
            [p async for p in src.pull(start, end)]  # a token, then Epic forgets it
            epic.state.revoke_tokens()
            epic.state.fail_next(429, retry_after=0)
            return [p async for p in src.pull(start, end)]
        finally:
            await src.close()

    issued = epic.state.tokens_issued
    pulled = asyncio.run(run())
    assert len(pulled) == len(PATIENTS) * 2
    assert epic.state.tokens_issued == issued + 2


def test_a_server_down_stops_the_pull_with_a_phi_free_error(
    epic: StubEpicServer, home: Path
) -> None:
    start, end = window()
    epic.state.fail_next(500, count=1)
    with pytest.raises(SourceError, match="Appointment") as caught:
        pull(source(epic, home), start, end)
    assert "500" in str(caught.value)
    assert "DEMO" not in str(caught.value)
