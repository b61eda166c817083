"""The reports page on the real app and store (SQLite and PostgreSQL): six server-side SVG
charts for the range, their CSVs (the same range, no cell a spreadsheet would run), every view
and export audited, the range checked, viewers only."""

from __future__ import annotations

import csv
import io
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from engine.api.app import create_app
from engine.api.auth import Role
from engine.api.auth_settings import AuthSettings
from engine.console.auth import ConsoleUser, current_console_user
from engine.console.pages_reports import REPORTS, csv_cell
from engine.metrics import EngineMetrics
from engine.settings import Settings
from engine.store import SqlMessageStore
from engine.store.reports import clear_kept
from engine.store.tables import audit_log
from tests.api.conftest import TestClient
from tests.api.fakes import FakeHealth, FakeIngest
from tests.console.test_reports_store import (
    DFT,
    NOV1,
    NOV2,
    OCT31,
    add_appointment,
    add_message,
    local,
)

RANGE = {"from": OCT31.isoformat(), "to": NOV2.isoformat()}


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    clear_kept()
    yield
    clear_kept()


def _client(store: SqlMessageStore, tmp_path: Path, *roles: Role) -> TestClient:
    metrics = EngineMetrics()
    app = create_app(
        Settings(var_dir=tmp_path, timezone="America/New_York"),
        ingest=FakeIngest(metrics),
        messages=store,
        health=FakeHealth(),
        metrics=metrics,
        auth=AuthSettings(environment="development", dev_secret_file=tmp_path / "secret"),
    )
    who = ConsoleUser("rita", frozenset(roles or (Role.VIEWER,)), "s-1", "t", "127.0.0.1:4000")
    overrides: dict[Callable[..., object], Callable[..., object]] = {
        current_console_user: lambda: who
    }
    app.dependency_overrides.update(overrides)
    return TestClient(app)


def _seed(store: SqlMessageStore) -> None:
    add_appointment(store, 1, local(OCT31, 9), "fulfilled", "urn:uuid:p1")
    add_appointment(store, 2, local(OCT31, 10), "noshow", "urn:uuid:p2")
    add_appointment(store, 3, local(NOV1, 10), "cancelled", "urn:uuid:p3")
    add_appointment(store, 4, local(NOV1, 11), "booked", "urn:uuid:p4")
    add_message(store, local(OCT31, 8), patient="OAK|A")
    add_message(store, local(NOV1, 10), patient="OAK|A", mtype="DFT", raw=DFT)
    for appt, payer, status in (
        ("a1", '=HYPERLINK("http://x")', "inactive"),
        ("a2", "Aetna", "eligible"),
        ("a3", "Aetna", "eligible"),
    ):
        store.save_eligibility(
            {
                "appointment_url": appt,
                "patient_url": "urn:uuid:p1",
                "payer_id": "P1",
                "payer_name": payer,
                "service_date": NOV2,
                "checked_at": datetime.now(UTC),
                "status": status,
            }
        )


def _audits(store: SqlMessageStore) -> list[str]:
    with store.db_engine.connect() as conn:
        return [
            str(r.detail)
            for r in conn.execute(
                select(audit_log)
                .where(audit_log.c.action == "view-report")
                .order_by(audit_log.c.id)
            )
        ]


def test_the_page_draws_each_report_as_svg(store: SqlMessageStore, tmp_path: Path) -> None:
    _seed(store)
    answer = _client(store, tmp_path).get("/console/reports", params=RANGE)
    assert answer.status_code == 200, answer.text
    page = answer.text
    charts = re.findall(r"<svg .*?</svg>", page, re.S)
    assert len(charts) == len(REPORTS) == 6
    main = page[page.index("<main>") : page.index("</main>")]
    assert "<script" not in main and "style=" not in main
    for chart in charts:
        ET.fromstring(chart)  # well-formed
    titles = [t for c in charts for t in re.findall(r"<title>(.*?)</title>", c)]
    assert "10-31 · patients: 1" in titles  # p1 came; p2 did not
    assert "11-01 · cancelled: 1" in titles
    assert "10-31 · no-show rate: 50%" in titles
    assert "11-01 · amount: $150" in titles
    assert "Aetna · eligible: 2" in titles
    # the payer's name is text in the chart, escaped like any other
    assert "=HYPERLINK(&#34;http://x&#34;) · inactive: 1" in titles
    assert "$150.00 in 2 charge lines, 1 DFT messages" in page
    for name, _title in REPORTS:
        assert f'href="/console/reports/{name}.csv?from=2026-10-31&amp;to=2026-11-02"' in page
    assert _audits(store) == ["reports 2026-10-31..2026-11-02"]


def _csv(client: TestClient, name: str) -> list[list[str]]:
    answer = client.get(f"/console/reports/{name}.csv", params=RANGE)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/csv")
    assert f"{name}-2026-10-31-2026-11-02.csv" in answer.headers["content-disposition"]
    return list(csv.reader(io.StringIO(answer.text)))


def test_each_report_exports_its_figures_as_csv(store: SqlMessageStore, tmp_path: Path) -> None:
    _seed(store)
    client = _client(store, tmp_path)
    assert _csv(client, "patients-per-day") == [
        ["day", "patients"],
        ["2026-10-31", "1"],
        ["2026-11-01", "1"],
        ["2026-11-02", "0"],
    ]
    assert _csv(client, "new-patients")[1] == ["2026-10-31", "1"]
    assert _csv(client, "no-show-rate")[1:3] == [
        ["2026-10-31", "2", "1", "50.0"],
        ["2026-11-01", "1", "0", "0.0"],
    ]
    assert _csv(client, "cancellations")[2] == ["2026-11-01", "1"]
    assert _csv(client, "charges")[2] == ["2026-11-01", "1", "2", "150.00"]
    rows = _csv(client, "eligibility-by-payer")
    # a payer's name that a spreadsheet would run as a formula is written as text
    assert rows == [
        ["payer", "verdict", "count"],
        ["Aetna", "eligible", "2"],
        ['\'=HYPERLINK("http://x")', "inactive", "1"],
    ]
    assert _audits(store)[-1] == "eligibility-by-payer.csv 2026-10-31..2026-11-02"
    assert len(_audits(store)) == 6
    assert client.get("/console/reports/nothing.csv", params=RANGE).status_code == 404


@pytest.mark.parametrize("value", ["=1+1", "+1", "-1+2", "@SUM(A1)", "\tx", "\rx"])
def test_formula_cells_are_quoted(value: str) -> None:
    assert csv_cell(value) == "'" + value
    assert csv_cell("Aetna") == "Aetna" and csv_cell(-5) == -5 and csv_cell(2.5) == 2.5


def test_the_range_is_checked_and_only_viewers_see_reports(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    client = _client(store, tmp_path)
    for params, text in (
        ({"from": "2026-13-01"}, "YYYY-MM-DD"),
        ({"from": "2026-11-02", "to": "2026-11-01"}, "to is before from"),
        ({"from": "2025-01-01", "to": "2026-11-01"}, "at most 366 days"),
    ):
        answer = client.get("/console/reports", params=params)
        assert answer.status_code == 422 and text in answer.text
        assert client.get("/console/reports/charges.csv", params=params).status_code == 422
    assert _audits(store) == []
    default = client.get("/console/reports")
    assert default.status_code == 200 and default.text.count("<svg ") == 6
    today = date.today()
    assert f'value="{today.year}-' in default.text
    for roles in ((Role.FRONT_DESK,), (Role.INTEGRATION,)):
        assert _client(store, tmp_path, *roles).get("/console/reports").status_code == 403
