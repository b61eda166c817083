"""The ``fhir`` pull source against the stub FHIR server over real HTTP, and the route files'
``sources:`` block: what a source reads, how it pages, how its version key moves, and how a
wrong source is refused with its file, line and key."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.adapters.fhir_source import FhirSource, FhirSourceConfig
from engine.adapters.registry import SOURCE_TYPES, build_source, load_routes
from engine.adapters.source import Pulled, SourceError
from engine.errors import ConfigError
from engine.sim.fhir_server import StubFhirServer, running_stub_fhir
from tests.jobs.pull_support import appointment, put, seed_alice, seed_many

DAY = date(2026, 11, 30)


@pytest.fixture
def ehr() -> Iterator[StubFhirServer]:
    with running_stub_fhir() as server:
        yield server


@pytest.fixture
def client(ehr: StubFhirServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ehr.base_url + "/") as c:
        yield c


def _pull(source: FhirSource, start: date, end: date) -> list[Pulled]:
    async def main() -> list[Pulled]:
        try:
            return [p async for p in source.pull(start, end)]
        finally:
            await source.close()

    return asyncio.run(main())


def _source(ehr: StubFhirServer, **kw: Any) -> FhirSource:
    return FhirSource("clinic", FhirSourceConfig(base_url=ehr.base_url, **kw))


def _types(pulled: Pulled) -> dict[str, dict[str, Any]]:
    return {e["resource"]["resourceType"]: e for e in pulled.bundle["entry"]}


def test_stub_searches_appointments_by_day_and_pages_them(
    ehr: StubFhirServer, client: httpx.Client
) -> None:
    seed_many(client, DAY, 5)
    put(client, appointment("later", "m0", date(2026, 12, 3)))
    first = client.get(
        "Appointment", params={"date": ["ge2026-11-30", "le2026-11-30"], "_count": 2}
    )
    assert first.status_code == 200
    page = first.json()
    assert page["total"] == 5 and len(page["entry"]) == 2
    [following] = [link["url"] for link in page["link"] if link["relation"] == "next"]
    ids = [e["resource"]["id"] for e in page["entry"]]
    while following:
        page = httpx.get(following).json()
        ids += [e["resource"]["id"] for e in page["entry"]]
        following = next((lk["url"] for lk in page["link"] if lk["relation"] == "next"), "")
    assert sorted(ids) == [f"ma{i}" for i in range(5)]  # "later" is outside the window
    bad = client.get("Appointment", params={"date": "xx2026-11-30"})
    assert bad.status_code == 400


def test_a_pull_gives_each_appointment_with_its_patient_coverage_and_payer(
    ehr: StubFhirServer, client: httpx.Client
) -> None:
    seed_alice(client, DAY)
    put(client, appointment("other-day", "p1", date(2026, 12, 5)))
    [pulled] = _pull(_source(ehr), DAY, date(2026, 12, 1))
    entries = _types(pulled)
    assert set(entries) == {"Appointment", "Patient", "Coverage", "Organization"}
    base = ehr.base_url
    # what the index and the eligibility job key on: absolute fullUrls, references to them
    assert entries["Patient"]["fullUrl"] == f"{base}/Patient/p1"
    appt = entries["Appointment"]["resource"]
    assert appt["participant"][0]["actor"]["reference"] == f"{base}/Patient/p1"
    coverage = entries["Coverage"]["resource"]
    assert coverage["beneficiary"]["reference"] == f"{base}/Patient/p1"
    assert coverage["payor"][0]["reference"] == entries["Organization"]["fullUrl"]
    assert entries["Patient"]["request"] == {
        "method": "PUT",
        "url": "Patient?identifier=urn:oid:1.2.3.4.5|MRN0001",
    }
    assert pulled.bundle["type"] == "transaction"
    assert pulled.version_key.startswith("Appointment/a1|")
    assert "ALICE" not in repr(pulled)


def test_the_version_key_stays_for_the_same_data_and_moves_when_any_of_it_changes(
    ehr: StubFhirServer, client: httpx.Client
) -> None:
    seed_alice(client, DAY)
    [one] = _pull(_source(ehr), DAY, DAY)
    [again] = _pull(_source(ehr), DAY, DAY)
    assert again.version_key == one.version_key
    put(client, appointment("a1", "p1", DAY, hour=10))  # moved to 10:00
    [moved] = _pull(_source(ehr), DAY, DAY)
    assert moved.version_key != one.version_key
    coverage = client.get("Coverage/c1").json()
    put(client, {**coverage, "subscriberId": "XQZ999"})  # the coverage changed, not the visit
    [recovered] = _pull(_source(ehr), DAY, DAY)
    assert recovered.version_key not in (one.version_key, moved.version_key)


def test_paging_is_followed_to_the_end(ehr: StubFhirServer, client: httpx.Client) -> None:
    seed_many(client, DAY, 7)
    source = _source(ehr, page_size=2)
    pulled = _pull(source, DAY, DAY)
    assert len(pulled) == 7 and len({p.version_key for p in pulled}) == 7
    assert source.requests == 4 + 7 * 2  # four pages; a patient read and a coverage search each


def test_a_server_that_pages_past_the_limit_fails_the_pull(
    ehr: StubFhirServer, client: httpx.Client
) -> None:
    seed_many(client, DAY, 5)
    with pytest.raises(SourceError, match="more than 2 pages"):
        _pull(_source(ehr, page_size=1, max_pages=2), DAY, DAY)


def test_a_failing_server_is_a_phi_free_source_error_and_429_is_waited_out(
    ehr: StubFhirServer, client: httpx.Client
) -> None:
    seed_alice(client, DAY)
    ehr.state.fail_next(429, count=1, retry_after=0)
    assert len(_pull(_source(ehr), DAY, DAY)) == 1  # waited out
    ehr.state.fail_next(500, count=1)
    with pytest.raises(SourceError) as caught:
        _pull(_source(ehr), DAY, DAY)
    assert str(caught.value) == "clinic: Appointment answered HTTP 500"


def test_a_patient_gone_from_the_server_leaves_the_appointment_without_it(
    ehr: StubFhirServer, client: httpx.Client
) -> None:
    seed_alice(client, DAY)
    put(client, appointment("a2", "gone", DAY, hour=10))  # its patient was never there
    pulled = {p.version_key.split("|")[0]: p for p in _pull(_source(ehr), DAY, DAY)}
    assert set(_types(pulled["Appointment/a2"])) == {"Appointment"}
    assert set(_types(pulled["Appointment/a1"])) == {
        "Appointment",
        "Patient",
        "Coverage",
        "Organization",
    }
    with pytest.raises(SourceError, match="Appointment answered HTTP 404"):
        _pull(FhirSource("clinic", FhirSourceConfig(base_url=ehr.url + "/nothing")), DAY, DAY)


def test_an_oversize_answer_is_refused(ehr: StubFhirServer, client: httpx.Client) -> None:
    seed_many(client, DAY, 20)
    with pytest.raises(SourceError, match="larger than 1024 bytes"):
        _pull(_source(ehr, max_response_bytes=1024), DAY, DAY)


# -- route files -----------------------------------------------------------------------------


def _routes(tmp_path: Path, **files: str) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    for name, text in files.items():
        (site / f"{name}.yaml").write_text(text)
    return site


def test_sources_are_read_checked_and_built(tmp_path: Path) -> None:
    site = _routes(
        tmp_path,
        a="""
sources:
  clinic:
    type: fhir
    base_url: http://127.0.0.1:9/fhir
    every_minutes: 30
    days: 3
""",
    )
    routes = load_routes(site, defaults=tmp_path / "none")
    spec = routes.sources["clinic"]
    assert (spec.type, spec.every_minutes, spec.days) == ("fhir", 30, 3)
    assert routes.origin["source:clinic"].endswith("a.yaml")
    assert isinstance(build_source("clinic", spec), FhirSource)
    assert "fhir" in SOURCE_TYPES


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            {
                "a": "sources:\n  c: {type: fhir, base_url: http://x/f}\n",
                "b": "sources:\n  c:\n    type: fhir\n    base_url: http://y/f\n",
            },
            "b.yaml, line 2, sources.c: source 'c' is already defined in",
        ),
        (
            {"a": "sources:\n  c:\n    type: fhir\n    base_url: http://x/f\n    pagesize: 3\n"},
            "a.yaml, line 5, sources.c.pagesize: Extra inputs are not permitted",
        ),
        (
            {"a": "sources:\n  c:\n    type: fhir\n    base_url: ftp://x/f\n"},
            "a.yaml, line 4, sources.c.base_url: base_url 'ftp://x/f' must start with http",
        ),
        (
            {"a": "sources:\n  c:\n    type: fihr\n    base_url: http://x/f\n"},
            "a.yaml, line 3, sources.c.type: source type 'fihr' does not match",
        ),
        (
            {
                "a": "sources:\n  c:\n    type: fhir\n    base_url: http://x/f\n"
                "    cron: 61 * * * *\n"
            },
            "a.yaml, line 5, sources.c.cron: cron '61 * * * *' is not a cron line",
        ),
        (
            {
                "a": "sources:\n  c:\n    type: fhir\n    base_url: http://x/f\n"
                "    every_minutes: 5\n    cron: 0 6 * * *\n"
            },
            "a.yaml, line 2, sources.c: give every_minutes or cron, not both",
        ),
    ],
)
def test_a_wrong_source_names_its_file_line_and_key(
    tmp_path: Path, files: dict[str, str], message: str
) -> None:
    site = _routes(tmp_path, **files)
    with pytest.raises(ConfigError) as caught:
        load_routes(site, defaults=tmp_path / "none")
    assert message in str(caught.value)


def test_a_source_missing_its_token_variable_is_not_built(tmp_path: Path) -> None:
    site = _routes(
        tmp_path,
        a="sources:\n  c:\n    type: fhir\n    base_url: http://x/f\n"
        "    auth: {type: bearer, token_env: PULL_TEST_UNSET_TOKEN}\n",
    )
    routes = load_routes(site, defaults=tmp_path / "none")
    with pytest.raises(ConfigError, match="PULL_TEST_UNSET_TOKEN is not set"):
        build_source("c", routes.sources["c"])


def test_a_reload_with_a_wrong_source_is_refused_and_a_right_one_takes_the_new_sources(
    tmp_path: Path,
) -> None:
    """Sources follow the routes' reload: checked with the route files, and the worker is
    restarted on the reloaded files (its schedules are built from them)."""
    from engine.flow.config import Reloader, load_running_config
    from engine.settings import Settings

    site = _routes(tmp_path, example="sources:\n  c: {type: fhir, base_url: 'http://x/f'}\n")
    settings = Settings(home=tmp_path, var_dir=tmp_path / "var", routes_dir=site)
    config, _ = load_running_config(settings)
    applied: list[Settings] = []
    reloader = Reloader(settings, config, lambda new, running: applied.append(running))
    (site / "example.yaml").write_text("sources:\n  c: {type: fhir, base_url: 'x'}\n")
    refused = reloader.reload()
    assert not refused.applied and "example.yaml, line 2, sources.c.base_url" in (
        refused.error or ""
    )
    (site / "example.yaml").write_text(
        "sources:\n  c: {type: fhir, base_url: 'http://y/f'}\n  d: {type: fhir, base_url: "
        "'http://z/f', cron: '0 6 * * *'}\n"
    )
    assert reloader.reload().applied
    [running] = applied  # the worker restarts on this snapshot
    assert set(load_routes(running.routes_dir).sources) == {"c", "d"}
