"""An alert in a real browser: a real ``engine serve`` (tests/console/support.py) dead-letters a
message (its FHIR destination refuses connections, one attempt), ``engine alerts run`` evaluates
the rules of its alerts.yaml and notifies a real HTTP receiver, and an admin logged in through
the login form sees the alert raised on /console/alerts and on the dashboard. Screenshots land in
test-artifacts/console."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.alerts.conftest import Hook
from tests.alerts.conftest import webhook as webhook  # noqa: F401  (the fixture)
from tests.console.conftest import ARTIFACTS
from tests.console.support import console_engine, login
from tests.serve_support import free_port, send_stream

PASSWORD = "alerts are for admins"
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hl7"


def _routes(folder: Path) -> Path:
    folder.mkdir()
    nowhere = free_port()  # nothing listens there: every delivery is refused
    (folder / "example.yaml").write_text(
        f"""
destinations:
  lab-fhir:
    type: fhir
    base_url: http://127.0.0.1:{nowhere}/fhir
    mode: transaction
    timeout_s: 2
    retry: {{max_attempts: 1, base_delay_s: 1, max_delay_s: 1}}
routes:
  - name: adt-to-lab
    match: {{message: [ADT]}}
    mapping: fhir
    destinations: [lab-fhir]
"""
    )
    (folder / "alerts.yaml").write_text(
        """
channels:
  ops-hook: {type: webhook, url_env: TEST_ALERTS_HOOK, timeout_s: 3}
rules:
  - name: lab-dead-letters
    description: any dead letter to the lab in the last hour
    kind: dead-letters
    destination: lab-fhir
    window_minutes: 60
    threshold: 1
"""
    )
    return folder


def test_a_dead_letter_raises_an_alert_seen_on_the_console(
    page: Any, tmp_path: Path, webhook: Hook
) -> None:
    routes = _routes(tmp_path / "routes")
    env = {"TEST_ALERTS_HOOK": webhook.url, "ENGINE_TIMEZONE": "UTC"}
    with console_engine(tmp_path, routes=routes, env=env) as engine:
        engine.add_user("ada", PASSWORD, "admin")
        acked: list[str] = []
        # original-mode acknowledgment (the fixture asks for enhanced mode's CA)
        raw = (FIXTURES / "adt_a01.hl7").read_bytes().replace(b"|AL|NE|", b"|||", 1)
        send_stream(engine.mllp, [("A01", raw)], acked)
        assert acked == ["A01"]
        deadline = time.monotonic() + 60
        while not webhook.bodies:
            assert time.monotonic() < deadline, "no alert notice within 60 s"
            done = engine.cli("alerts", "run")
            if webhook.bodies:
                # the notice is sent by whichever evaluation raised it first: this run's (it
                # says "sent: raise of ...") or the worker that leads, beside it (then this run
                # reports the alert RAISED); a race, more often lost with two worker processes
                assert "lab-dead-letters (lab-fhir)" in done.stdout
                break
            time.sleep(1)
        [text] = webhook.texts()
        assert text.startswith(
            "[engine] ALERT: lab-dead-letters (lab-fhir) — 1 delivery dead-lettered"
        )
        assert "MRN20001" not in text  # the fixture's patient is named nowhere

        login(page, engine.base_url, "ada", PASSWORD)
        page.goto(f"{engine.base_url}/console/alerts")
        row = page.locator('tr[data-alert="lab-dead-letters"]')
        assert row.get_attribute("data-state") == "raised"
        assert "1 delivery dead-lettered in the last 60 min (destination lab-fhir)" in (
            row.inner_text()
        )
        assert "UTC" in row.inner_text()  # raised and notified, with their times
        assert page.locator('tr[data-rule="lab-dead-letters"]').is_visible()
        assert str(routes / "alerts.yaml") in page.locator("[data-alerts-file]").inner_text()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "alerts-page.png"), full_page=True)

        page.goto(f"{engine.base_url}/console/")
        panel = page.locator("[data-alerts-panel]")
        assert "lab-dead-letters (lab-fhir)" in panel.inner_text()
