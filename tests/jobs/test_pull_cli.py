"""``engine pull run`` and ``engine pull list`` against the stub FHIR server over real HTTP."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from engine.cli import app
from engine.sim.fhir_server import StubFhirServer, running_stub_fhir
from engine.store import SqlMessageStore
from engine.store.tables import messages
from tests.jobs.pull_support import seed_alice, seed_many

runner = CliRunner()

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def ehr() -> Iterator[StubFhirServer]:
    with running_stub_fhir() as server:
        yield server


@pytest.fixture
def cli(
    store: SqlMessageStore, ehr: StubFhirServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Run:
    routes = tmp_path / "routes"
    routes.mkdir()
    (routes / "example.yaml").write_text(  # replaces the built-in example
        f"""
sources:
  clinic: {{type: fhir, base_url: "{ehr.base_url}", every_minutes: 30, days: 2}}
  down: {{type: fhir, base_url: "http://127.0.0.1:9/fhir", cron: "0 6 * * 1-5", timeout_s: 2}}
"""
    )
    monkeypatch.setenv("ENGINE_DATABASE_URL", store.db_engine.url.render_as_string(False))
    monkeypatch.setenv("ENGINE_HOME", str(tmp_path))
    monkeypatch.setenv("ENGINE_ROUTES_DIR", str(routes))
    monkeypatch.setenv("ENGINE_TIMEZONE", "UTC")

    def run(*args: str) -> tuple[int, str, str]:
        result = runner.invoke(app, list(args))
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            return 1, result.stdout, str(result.exception)
        return result.exit_code, result.stdout, result.stderr

    return run


def _stored(store: SqlMessageStore) -> int:
    with store.db_engine.connect() as conn:
        return len(conn.execute(select(messages.c.id).where(messages.c.channel == "pull")).all())


def test_pull_run_stores_and_prints_counts(
    cli: Run, ehr: StubFhirServer, store: SqlMessageStore
) -> None:
    today = date.today()
    with httpx.Client(base_url=ehr.base_url + "/") as client:
        seed_alice(client, today + timedelta(days=1))
        seed_many(client, today, 2)
        seed_many(client, today + timedelta(days=3), 1, first=2)  # outside two days, inside four
    code, out, err = cli("pull", "run", "clinic")
    assert code == 0, err
    assert out.strip() == (
        f"clinic: {today} to {today + timedelta(days=1)}: pulled 3, new 3, unchanged 0"
    )
    assert _stored(store) == 3
    code, out, _ = cli("pull", "run", "clinic", "--days", "4")
    assert code == 0 and out.strip().endswith("pulled 4, new 1, unchanged 3")


def test_pull_run_of_a_source_that_fails_says_so_and_exits_1(cli: Run) -> None:
    code, out, err = cli("pull", "run", "down")
    assert code == 1
    assert out.strip().endswith("pulled 0, new 0, unchanged 0")
    assert "error: down: Appointment search failed (ConnectError)" in err


def test_pull_run_of_an_unknown_source_names_the_known_ones(cli: Run) -> None:
    code, _, err = cli("pull", "run", "clinc")
    assert code == 1 and "no pull source named 'clinc' (defined: clinic, down)" in err


def test_pull_list_shows_each_schedule(cli: Run) -> None:
    code, out, _ = cli("pull", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[1].split()[:5] == ["clinic", "fhir", "every", "30", "min"]
    assert "cron 0 6 * * 1-5 (UTC)" in lines[2] and lines[2].rstrip().endswith("example.yaml")
