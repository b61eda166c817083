"""The front desk's worklist (issue 11): ``engine eligibility list`` and ``GET /api/eligibility``
name the patient (name and MRN) and give the appointment time in the practice's time zone; the
demo's first Monday appointment is at 09:00 in New York, and is shown so on SQLite and
PostgreSQL alike."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from typer.testing import CliRunner

from engine.cli import app as cli
from engine.store import SqlMessageStore
from tests.jobs.conftest import MONDAY, TIMEZONE, api_client, service

#: the demo's Monday: who comes when (local time), with the verdict the stub payer gives
EXPECTED = [
    ("Rivera, Ana", "DEMO1001", "09:00", "eligible"),
    ("Okafor, Chidi", "DEMO1002", "10:00", "inactive"),
    ("Lindqvist, Maja", "DEMO1003", "11:00", "needs_action"),
]


@pytest.fixture
def checked(indexed: SqlMessageStore) -> SqlMessageStore:
    """The demo's Monday appointments, checked once."""
    svc = service(indexed)
    asyncio.run(svc.check_upcoming(start=MONDAY, days=1))
    asyncio.run(svc.close())
    return indexed


def _seen(rows: list[dict[str, object]]) -> list[tuple[object, ...]]:
    return [(r["patient_name"], r["mrn"], r["time"], r["status"]) for r in rows]


def test_the_worklist_names_the_patient_and_gives_local_time(checked: SqlMessageStore) -> None:
    from engine.jobs.eligibility import worklist

    rows = worklist(checked, MONDAY, TIMEZONE)
    assert _seen(rows) == EXPECTED
    first = rows[0]
    assert first["appointment_start"] == "2026-11-30T09:00:00-05:00"
    assert first["timezone"] == TIMEZONE
    assert first["copay"] == "25.00"
    assert "response" not in first  # the 271 itself stays in the store


def test_a_summer_appointment_is_shown_at_its_local_time_too(
    checked: SqlMessageStore,
) -> None:
    """The offset comes from the zone on that day (EDT), not from a fixed -05:00."""
    from engine.jobs.eligibility import worklist

    row = dict(checked.eligibility_for_day(MONDAY)[0])
    del row["id"]
    # 05:00 in New York, with its offset, as the job hands it to the store
    row["appointment_start"] = datetime(2026, 7, 6, 5, 0, tzinfo=ZoneInfo(TIMEZONE))
    row["service_date"] = date(2026, 7, 6)
    checked.save_eligibility(row)
    (summer,) = worklist(checked, date(2026, 7, 6), TIMEZONE)
    assert summer["time"] == "05:00"
    assert summer["appointment_start"] == "2026-07-06T05:00:00-04:00"


@pytest.fixture
def cli_env(checked: SqlMessageStore, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI in New York, on the test's store (its own engine would leave a PostgreSQL
    connection open in this process)."""
    monkeypatch.setattr("engine.cli.open_store", lambda: checked)
    monkeypatch.setenv("ENGINE_TIMEZONE", TIMEZONE)
    yield


@pytest.mark.usefixtures("cli_env")
def test_cli_list_json_gives_one_object_a_line() -> None:
    result = CliRunner().invoke(cli, ["eligibility", "list", "--date", "2026-11-30", "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert _seen(rows) == EXPECTED
    assert rows[0]["appointment_start"] == "2026-11-30T09:00:00-05:00"
    assert rows[0]["timezone"] == TIMEZONE


@pytest.mark.usefixtures("cli_env")
def test_cli_list_table_shows_name_mrn_and_local_time() -> None:
    result = CliRunner().invoke(
        cli, ["eligibility", "list", "--date", "2026-11-30"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any(TIMEZONE in line for line in lines)  # the zone the times are in
    for name, mrn, time, _ in EXPECTED:
        assert any(name in line and mrn in line and time in line for line in lines), name


def test_api_gives_name_mrn_and_local_time(checked: SqlMessageStore, tmp_path: Path) -> None:
    client, token = api_client(service(checked), tmp_path)
    with client:
        resp = client.get(
            "/api/eligibility",
            params={"date": "2026-11-30"},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert _seen(body) == EXPECTED
    assert body[0]["appointment_start"] == "2026-11-30T09:00:00-05:00"
    assert body[0]["timezone"] == TIMEZONE


@pytest.mark.parametrize(
    "path,method", [("/api/eligibility", "GET"), ("/api/eligibility/check", "POST")]
)
def test_api_without_a_date_is_400_naming_it(
    indexed: SqlMessageStore, tmp_path: Path, path: str, method: str
) -> None:
    client, token = api_client(service(indexed), tmp_path)
    with client:
        resp = client.request(method, path, headers={"Authorization": f"Bearer {token}"})
        bad = client.request(
            method,
            path,
            params={"date": "30/11/2026"},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert resp.status_code == 400, resp.text
    assert "date" in resp.json()["detail"] and "YYYY-MM-DD" in resp.json()["detail"]
    assert bad.status_code in (400, 422) and "date" in bad.text
