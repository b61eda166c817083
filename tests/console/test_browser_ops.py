"""The IT admin's pages in a real browser against a real ``engine serve``: log in, see the
dashboard, search by MRN, open a message (its fields named), resend it to the one destination
that failed, reload the routes. Screenshots of each page go to test-artifacts/console/."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from tests.console.conftest import ARTIFACTS
from tests.console.support import console_engine, login
from tests.serve_support import free_port, send_stream

PASSWORD = "correct horse battery staple"

#: a folder that takes everything, and a FHIR server that is not there (dead after one try)
ROUTES = """\
destinations:
  folder:
    type: file
    directory: {outbox}
  ehr-fhir:
    type: fhir
    base_url: http://127.0.0.1:{closed}/fhir
    mode: transaction
    timeout_s: 2
    retry: {{max_attempts: 1, base_delay_s: 0, max_delay_s: 0}}
routes:
  - name: adt-out
    match: {{message: [ADT]}}
    mapping: fhir
    destinations: [folder, ehr-fhir]
"""

ADT = (
    "MSH|^~\\&|FRONTDESK|OAKCLINIC|ENGINE|HUB|20260102030405||ADT^A04|BRW{n}|P|2.5.1\r"
    "EVN|A04|20260102030405\r"
    "PID|1||{mrn}^^^OAKCLINIC^MR||Testpatient^Alice||19800101|F\r"
    "PV1|1|O\r"
)


def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"ops_{name}.png"), full_page=True)


def test_an_admin_finds_a_failed_message_resends_it_and_reloads_routes(
    page: Any, tmp_path: Path
) -> None:
    routes = tmp_path / "routes"
    routes.mkdir()
    outbox = tmp_path / "outbox"
    (routes / "site.yaml").write_text(ROUTES.format(outbox=outbox, closed=free_port()))
    with console_engine(tmp_path, routes=routes) as engine:
        engine.add_user("ada", PASSWORD, "admin")
        acked: list[str] = []
        messages = [(f"BRW{n}", ADT.format(n=n, mrn=f"MRN77{n}").encode()) for n in range(3)]
        send_stream(engine.mllp, messages, acked)
        assert acked == ["BRW0", "BRW1", "BRW2"]

        login(page, engine.base_url, "ada", PASSWORD)
        # the dashboard: the route's two destinations, the dead ones counted
        _until_dead_letters(page, f"{engine.base_url}/console/", "ehr-fhir", "3")
        row = page.locator("table.routes-figures tbody tr", has_text="ehr-fhir")
        assert row.locator("td").nth(0).inner_text() == "adt-out"
        assert page.locator("svg.spark").count() == 1
        assert page.locator("#dashboard-live[data-refresh]").count() == 1
        _shot(page, "dashboard")

        # search by MRN
        page.goto(f"{engine.base_url}/console/messages")
        page.fill("input[name=mrn]", "MRN771")
        with page.expect_navigation():
            page.click("form.search button[type=submit]")
        lines = page.locator("table.messages tbody tr")
        assert lines.count() == 1
        assert "BRW1" in lines.first.inner_text() and "dead" in lines.first.inner_text()
        _shot(page, "messages")

        # open it: the fields named, the deliveries
        with page.expect_navigation():
            lines.first.locator("a").first.click()
        assert re.search(r"/console/messages/\d+$", page.url)
        body = page.locator("main").inner_text()
        assert "Patient Identifier List" in body and "MRN771" in body
        assert "MSA|AA|BRW1" in body  # the ACK we sent
        dead = page.locator("table.deliveries tbody tr", has_text="ehr-fhir")
        assert "dead" in dead.inner_text()
        _shot(page, "message")

        # resend to the one destination that failed
        page.select_option("select[name=destination]", "ehr-fhir")
        with page.expect_navigation():
            page.click("button[name=resend]")
        assert "Resent" in page.locator(".notice").inner_text()
        assert page.locator("table.deliveries tbody tr", has_text="resent").count() == 1
        _shot(page, "message_resent")

        # reload the routes: a new route file is applied without a restart
        (routes / "lab.yaml").write_text(
            "routes:\n  - name: oru-out\n    match: {message: [ORU]}\n"
            "    mapping: none\n    destinations: [folder]\n"
        )
        page.goto(f"{engine.base_url}/console/routes")
        assert page.locator("table.routes tbody tr", has_text="oru-out").count() == 0
        with page.expect_navigation():
            page.click("button[name=reload]")
        assert "Reloaded" in page.locator(".reload-result").inner_text()
        assert page.locator("table.routes tbody tr", has_text="oru-out").count() == 1
        _shot(page, "routes")

        trail = engine.cli("audit", "list", "--limit", "50")
        assert trail.returncode == 0, trail.stderr
        for action in ("search-messages", "view-message", "resend", "reload"):
            assert action in trail.stdout


def _until_dead_letters(page: Any, url: str, destination: str, count: str) -> None:
    """Open the dashboard until ``destination`` shows ``count`` dead letters (the worker
    delivers in its own time)."""
    deadline = time.monotonic() + 30
    while True:
        page.goto(url)
        row = page.locator("table.routes-figures tbody tr", has_text=destination)
        if row.count() and row.locator("td").nth(10).inner_text().strip() == count:
            return
        assert time.monotonic() < deadline, f"{destination}: no {count} dead letters in 30 s"
        time.sleep(0.5)
