"""Each kind of rule against conditions made in the real store (SQLite and PostgreSQL), the disk
and a database that does not answer."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from engine.alerts.evaluate import evaluate_rules, in_business_hours
from engine.alerts.rules import SenderSilent, load_alert_rules
from engine.alerts.state import AlertStates
from engine.jobs.alerts import AlertRunner
from engine.settings import Settings
from engine.store import Incoming, SqlMessageStore, create_db_engine
from tests.alerts.conftest import Hook, write_alerts
from tests.serve_support import free_port

# a Wednesday, 10:00 in New York
WEDNESDAY_10 = datetime(2026, 12, 2, 15, 0, tzinfo=UTC)


def _settings(tmp_path: Path, folder: Path, **more: object) -> Settings:
    return Settings(
        var_dir=tmp_path / "var", routes_dir=folder, timezone="America/New_York", **more
    )


SILENT = """
rules:
  - name: epic-silent
    kind: sender-silent
    sender: EPIC
    silent_minutes: 60
    business_hours: {days: [mon, tue, wed, thu, fri], start: "08:00", end: "17:00"}
"""


def test_business_hours_are_the_engines_time_zone() -> None:
    rule = SenderSilent.model_validate(
        {"name": "s", "kind": "sender-silent", "sender": "EPIC", "silent_minutes": 5}
    )
    assert in_business_hours(rule, WEDNESDAY_10, "America/New_York") == datetime(
        2026, 12, 2, 13, 0, tzinfo=UTC
    )
    assert in_business_hours(rule, WEDNESDAY_10, "Asia/Tokyo") is None  # midnight there
    saturday = WEDNESDAY_10 + timedelta(days=3)
    assert in_business_hours(rule, saturday, "America/New_York") is None


def test_sender_silent_within_business_hours_only(
    store: SqlMessageStore, db_engine: Engine, tmp_path: Path
) -> None:
    folder = write_alerts(tmp_path / "routes", SILENT)
    config, settings = load_alert_rules(folder), _settings(tmp_path, folder)

    def verdict(now: datetime) -> bool | None:
        [finding] = evaluate_rules(config, db_engine, settings, now=now).findings
        return finding.raised

    # nothing from EPIC: raised at 10:00 (two hours into the day)...
    assert verdict(WEDNESDAY_10) is True
    # ...not yet at 08:30 (the day is younger than the silence asked), nor at night: unchanged
    assert verdict(WEDNESDAY_10 - timedelta(minutes=90)) is None
    assert verdict(WEDNESDAY_10 + timedelta(hours=10)) is None
    # a message from EPIC (now) clears it, whenever it is evaluated within the hour after
    store.save_batch([Incoming(raw=b"MSH|", channel="test", sending_application="EPIC")])
    now = datetime.now(UTC)
    assert verdict(now + timedelta(minutes=1)) is False
    # a message from another sender does not clear it
    folder2 = write_alerts(tmp_path / "other", SILENT.replace("sender: EPIC", "sender: CERNER"))
    [other] = evaluate_rules(load_alert_rules(folder2), db_engine, settings, now=now).findings
    assert other.raised is not False
    assert other.summary.startswith("CERNER: no message in the last 60 min of business hours")


def test_eligibility_failures_per_payer(
    store: SqlMessageStore, db_engine: Engine, tmp_path: Path
) -> None:
    folder = write_alerts(
        tmp_path / "routes",
        """
rules:
  - {name: payer-down, kind: eligibility-failures, window_minutes: 60, threshold: 2,
     per_payer: true}
  - {name: any-failure, kind: eligibility-failures, statuses: [payer_unavailable, needs_action]}
""",
    )
    now = datetime.now(UTC)
    for payer, status, minutes_ago in (
        ("60054", "payer_unavailable", 5),
        ("60054", "payer_unavailable", 20),
        ("60054", "payer_unavailable", 90),  # out of the window
        ("87726", "payer_unavailable", 5),
        ("87726", "eligible", 5),
        ("12345", "needs_action", 5),
    ):
        store.save_eligibility(
            {
                "patient_url": "urn:uuid:synthetic",
                "payer_id": payer,
                "service_date": date(2026, 12, 3),
                "checked_at": now - timedelta(minutes=minutes_ago),
                "status": status,
            }
        )
    config, settings = load_alert_rules(folder), _settings(tmp_path, folder)
    evaluation = evaluate_rules(config, db_engine, settings, now=now)
    by = {(f.rule, f.subject): f for f in evaluation.findings}
    assert by[("payer-down", "60054")].raised is True
    assert by[("payer-down", "87726")].raised is False
    assert by[("payer-down", "60054")].summary.startswith("payer 60054: 2 eligibility checks")
    assert by[("any-failure", "")].raised is True
    assert "4 eligibility checks payer_unavailable, needs_action" in by[("any-failure", "")].summary
    assert evaluation.complete == {"payer-down": "eligibility-failures"}
    # a payer that answers again (no failure in the window) recovers: it is no longer named
    states = AlertStates(db_engine)
    states.apply(evaluation.findings, evaluation.complete, now=now)
    later = evaluate_rules(config, db_engine, settings, now=now + timedelta(hours=2))
    made = states.apply(later.findings, later.complete, now=now + timedelta(hours=2))
    assert sorted(made) == [("any-failure", "", "recovered"), ("payer-down", "60054", "recovered")]


def test_disk_free_space_of_the_store_folder(db_engine: Engine, tmp_path: Path) -> None:
    folder = write_alerts(
        tmp_path / "routes",
        """
rules:
  - {name: disk-full, kind: disk, min_free_percent: 99.999}
  - {name: disk-ok, kind: disk, min_free_mb: 1}
""",
    )
    settings = _settings(tmp_path, folder)
    findings = evaluate_rules(load_alert_rules(folder), db_engine, settings).findings
    assert [(f.rule, f.raised) for f in findings] == [("disk-full", True), ("disk-ok", False)]
    assert findings[0].summary.startswith(f"{tmp_path / 'var'}: ")
    assert "MB free of" in findings[0].summary


def test_a_database_that_does_not_answer_raises_the_database_alert_from_memory(
    tmp_path: Path, webhook: Hook, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing can be recorded in a database that is away: each evaluator sends the raise
    from memory, once, and the recovery once it answers again."""
    monkeypatch.setenv("TEST_HOOK", webhook.url)
    folder = write_alerts(
        tmp_path / "routes",
        """
channels:
  hook: {type: webhook, url_env: TEST_HOOK}
rules:
  - {name: db, kind: database, max_query_ms: 5000}
  - {name: dead, kind: dead-letters}
""",
    )
    away = create_db_engine(f"postgresql://nobody@127.0.0.1:{free_port()}/none?connect_timeout=2")
    settings = _settings(tmp_path, folder)
    runner = AlertRunner(load_alert_rules(folder), away, settings, "node-a")
    report = asyncio.run(runner.run_once())
    assert "dead" in report.errors and "(state)" in report.errors
    [text] = webhook.texts()
    assert text.startswith("[engine] ALERT: db — the database does not answer (OperationalError)")
    asyncio.run(runner.run_once())
    assert len(webhook.bodies) == 1  # once per process
    # the same engine serve's second worker process, not leading, leaves it to the first
    second = AlertRunner(load_alert_rules(folder), away, settings, "node-b")
    second.away_notices = False
    asyncio.run(second.run_once(leading=False))
    assert len(webhook.bodies) == 1
    # another node's first worker process says it too (its host's view)
    third = AlertRunner(load_alert_rules(folder), away, settings, "node-c")
    asyncio.run(third.run_once(leading=False))
    assert len(webhook.bodies) == 2
    webhook.bodies.pop()
    # the database is back (a working one): the recovery, from memory, once
    good = create_db_engine(f"sqlite:///{tmp_path / 'engine.db'}")
    SqlMessageStore(good).migrate()
    runner.db_engine, runner.states = good, AlertStates(good)
    asyncio.run(runner.run_once())
    assert webhook.texts()[1].startswith("[engine] RECOVERED: db — the database answered")
    asyncio.run(runner.run_once())
    assert len(webhook.bodies) == 2
    away.dispose()
    good.dispose()


def test_a_slow_database_raises_the_database_alert(db_engine: Engine, tmp_path: Path) -> None:
    from engine.alerts.evaluate import database_finding, probe_database
    from engine.alerts.rules import Database

    rule = Database.model_validate({"name": "db", "kind": "database", "max_query_ms": 1})
    elapsed = probe_database(db_engine)
    assert elapsed > 0
    assert database_finding(rule, 2.5, None).raised is True
    assert database_finding(rule, 0.5, None).raised is False
    assert "answered its probe in 2 ms; limit 1 ms" in database_finding(rule, 2.4, None).summary
