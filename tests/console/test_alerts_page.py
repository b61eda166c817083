"""/console/alerts on the real app and store (SQLite and PostgreSQL): the rules with their file,
the channels without their secrets, the alerts raised and recovered with their times, the
history; the dashboard's partial; a file that does not load is shown with its error."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI

from engine.alerts.rules import load_alert_rules
from engine.alerts.state import active_alerts
from engine.api.app import create_app
from engine.api.auth import Role
from engine.api.auth_settings import AuthSettings
from engine.console.auth import ConsoleUser, current_console_user
from engine.console.render import environment
from engine.jobs.alerts import AlertRunner
from engine.metrics import EngineMetrics
from engine.settings import Settings
from engine.store import SqlMessageStore
from tests.alerts.conftest import dead_letter, routed, write_alerts
from tests.api.conftest import TestClient
from tests.api.fakes import FakeHealth, FakeIngest

RULES = """
channels:
  hook: {type: webhook, enabled: false, url_env: SECRET_HOOK_URL}
  mail:
    type: email
    enabled: false
    host: smtp.clinic.example
    port: 587
    starttls: true
    from: engine@clinic.example
    to: [it@clinic.example]
    username: engine
    password_env: SMTP_PASSWORD_VARIABLE
rules:
  - {name: lab-dead, kind: dead-letters, destination: lab, description: dead letters to the lab}
  - {name: backlog, kind: queue-age, older_than_minutes: 15, channels: [hook], repeat_minutes: 60}
"""


def _app(store: SqlMessageStore, tmp_path: Path, folder: Path, *roles: Role) -> FastAPI:
    settings = Settings(var_dir=tmp_path / "var", routes_dir=folder, timezone="America/Chicago")
    metrics = EngineMetrics()
    app = create_app(
        settings,
        ingest=FakeIngest(metrics),
        messages=store,
        health=FakeHealth(),
        metrics=metrics,
        auth=AuthSettings(environment="development", dev_secret_file=tmp_path / "dev-secret"),
    )

    async def user() -> ConsoleUser:
        return ConsoleUser("ada", frozenset(roles), "sid", "csrf-token", "127.0.0.1")

    app.dependency_overrides[current_console_user] = user
    return app


def _evaluate(store: SqlMessageStore, folder: Path, tmp_path: Path, now: datetime) -> None:
    settings = Settings(var_dir=tmp_path / "var", routes_dir=folder, timezone="UTC")
    runner = AlertRunner(load_alert_rules(folder), store.db_engine, settings, "node")
    asyncio.run(runner.run_once(now=now))


def test_the_page_lists_rules_channels_alerts_and_history(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    folder = write_alerts(tmp_path / "routes", RULES)
    client = TestClient(_app(store, tmp_path, folder, Role.VIEWER))
    page = client.get("/console/alerts")
    assert page.status_code == 200, page.text
    assert "No alert has been raised." in page.text
    assert f"<code data-alerts-file>{folder / 'alerts.yaml'}</code>" in page.text
    assert 'data-rule="lab-dead"' in page.text and 'data-rule="backlog"' in page.text
    assert "≥ 1 dead-lettered in 60 min (destination lab)" in page.text
    assert "oldest undelivered older than 15 min (each destination)" in page.text
    assert "it@clinic.example via smtp.clinic.example:587 (STARTTLS)" in page.text
    assert "URL from SECRET_HOOK_URL" in page.text and "no (enabled: false)" in page.text

    now = datetime.now(UTC)
    dead_letter(store, "PATIENT-SECRET-1")
    routed(store, "PATIENT-SECRET-2", destination="fhir")
    _evaluate(store, folder, tmp_path, now + timedelta(minutes=20, seconds=30))
    page = client.get("/console/alerts")
    assert 'data-alert="lab-dead" data-state="raised"' in page.text
    assert 'data-alert="backlog" data-state="raised"' in page.text
    assert "1 delivery dead-lettered in the last 60 min (destination lab): lab: 1" in page.text
    assert "fhir: the oldest undelivered delivery has waited 20 min (1 in the queue)" in page.text
    assert " CST</td>" in page.text or " CDT</td>" in page.text  # times in ENGINE_TIMEZONE
    assert "PATIENT-SECRET" not in page.text

    # the lab's dead letter leaves the window: recovered, with its time
    _evaluate(store, folder, tmp_path, now + timedelta(minutes=90))
    page = client.get("/console/alerts")
    assert 'data-alert="lab-dead" data-state="recovered"' in page.text
    assert page.text.count('data-event="raised"') == 2
    assert page.text.count('data-event="recovered"') == 1


def test_the_dashboard_partial_shows_the_active_alerts(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    folder = write_alerts(tmp_path / "routes", RULES)
    template = environment().get_template("partials/alerts.html")
    assert "No alert raised." in template.render(alerts=[])
    dead_letter(store, "P1")
    _evaluate(store, folder, tmp_path, datetime.now(UTC))
    html = template.render(alerts=active_alerts(store.db_engine), timezone="Europe/Paris")
    assert '<li data-alert="lab-dead"><strong class="bad">lab-dead (lab)</strong>' in html
    assert "1 delivery dead-lettered" in html and " CET</span>" in html
    assert 'href="/console/alerts"' in html


def test_a_file_that_does_not_load_is_shown_with_its_error(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    folder = write_alerts(tmp_path / "routes", RULES.replace("older_than_minutes: 15", "older: 1"))
    page = TestClient(_app(store, tmp_path, folder, Role.INTEGRATION)).get("/console/alerts")
    assert page.status_code == 200
    assert "alerts.yaml does not load:" in page.text
    assert "line 16, rules[1].older: Extra inputs are not permitted" in page.text


@pytest.mark.parametrize("roles", [(Role.FRONT_DESK,), ()])
def test_only_viewers_and_integration_users_see_it(
    store: SqlMessageStore, tmp_path: Path, roles: tuple[Role, ...]
) -> None:
    folder = write_alerts(tmp_path / "routes", RULES)
    answer = TestClient(_app(store, tmp_path, folder, *roles)).get("/console/alerts")
    assert answer.status_code == 403
