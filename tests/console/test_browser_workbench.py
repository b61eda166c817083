"""The workbench and the reports in a real browser against a real ``engine serve``
(tests/console/support.py), logged in through the login form as a viewer:

- Workbench: an ADT pasted into the form becomes a Bundle whose Patient is on the page, with
  the line saying which mapping file and line made the family name; a message with an
  impossible birth date is refused with the field and the pasted line named.
- Reports: after an ADT sent over MLLP as an EHR sends it, the reports page draws its charts
  as SVG (no script), today's new patient among them, and a chart's CSV downloads.

Screenshots land in test-artifacts/console (the ``page`` fixture, and one per step here).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from tests.conftest import FIXTURES
from tests.console.conftest import ARTIFACTS
from tests.console.support import console_engine, login
from tests.serve_support import send_stream

PASSWORD = "mapping files all day long"


def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"workbench-reports-{name}.png"), full_page=True)


def test_paste_an_adt_see_the_patient_and_where_it_came_from(page: Any, tmp_path: Path) -> None:
    adt = (FIXTURES / "hl7" / "adt_a01.hl7").read_text().replace("\r", "\n")
    with console_engine(tmp_path) as engine:
        engine.add_user("wanda", PASSWORD, "viewer")
        login(page, engine.base_url, "wanda", PASSWORD)
        page.goto(f"{engine.base_url}/console/workbench")
        page.fill("#message", adt)
        with page.expect_navigation():
            page.click("#to-fhir button[type=submit]")
        assert page.locator("#result h2").inner_text() == "HL7v2 → FHIR: ADT^A01"
        assert '"resourceType": "Patient"' in page.locator("#output").inner_text()
        row = page.locator("table.provenance tr", has_text="Patient.name[0].family")
        made_by = row.first.inner_text()
        assert "segments/PID.yaml, line 21: PID-5 → name[] (XPN)" in made_by
        assert "datatypes/XPN.yaml, line 7: XPN.1 → family" in made_by
        _shot(page, "workbench")

        page.fill("#message", adt.replace("19840229", "19841399"))
        with page.expect_navigation():
            page.click("#to-fhir button[type=submit]")
        errors = page.locator(".conversion-errors").inner_text()
        assert "PID-7, line 3" in errors
        _shot(page, "workbench-error")


def test_the_reports_page_draws_svg_charts(page: Any, tmp_path: Path) -> None:
    adt = (FIXTURES / "hl7" / "adt_a04.hl7").read_bytes()
    with console_engine(tmp_path) as engine:
        send_stream(engine.mllp, [("a04", adt)], [])
        engine.add_user("rita", PASSWORD, "viewer")
        login(page, engine.base_url, "rita", PASSWORD)
        page.goto(f"{engine.base_url}/console/reports")
        assert page.locator("section.report svg.chart").count() == 6
        assert page.locator("main script").count() == 0
        today = datetime.now(ZoneInfo("America/New_York")).strftime("%m-%d")
        titles = page.locator("#report-new-patients svg.chart rect title").all_text_contents()
        assert f"{today} · new patients: 1" in titles
        _shot(page, "reports")
        with page.expect_download() as info:
            page.click("#report-new-patients a.export")
        data = Path(info.value.path()).read_bytes()
        assert data.startswith(b"day,new_patients\r\n") and b",1\r\n" in data
