"""Alerts end to end against the real store (SQLite and PostgreSQL), a real SMTP server and a
real HTTP receiver: the notice of a raised alert arrives once by e-mail and once by webhook, is
not sent again while the alert stays raised, and a recovery notice follows once when it
clears; a channel that failed gets the notice at the next evaluation, and only that channel."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from engine.alerts.rules import load_alert_rules
from engine.alerts.state import active_alerts, recent_events
from engine.jobs.alerts import AlertRunner
from engine.settings import Settings
from engine.store import SqlMessageStore
from engine.store.tables import audit_log
from tests.alerts.conftest import Hook, Mailbox, dead_letter, deliver_all, routed, write_alerts


def _config(folder: Path, smtp: Mailbox, webhook: Hook, rules: str, **extra: str) -> Path:
    repeat = extra.get("repeat", "0")
    return write_alerts(
        folder,
        f"""
channels:
  it-mail:
    type: email
    host: 127.0.0.1
    port: {smtp.port}
    from: engine@clinic.example
    to: [it@clinic.example, oncall@clinic.example]
    username: engine
    password_env: TEST_ALERTS_SMTP_PASSWORD
  slack:
    type: webhook
    url_env: TEST_ALERTS_WEBHOOK_URL
    timeout_s: 3
defaults:
  repeat_minutes: {repeat}
rules:
{rules}
""",
    )


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch, webhook: Hook) -> None:
    monkeypatch.setenv("TEST_ALERTS_SMTP_PASSWORD", "s3cret")
    monkeypatch.setenv("TEST_ALERTS_WEBHOOK_URL", webhook.url)


def _runner(folder: Path, db_engine: Engine, tmp_path: Path, node: str = "node-a") -> AlertRunner:
    settings = Settings(var_dir=tmp_path / "var", routes_dir=folder, timezone="UTC")
    return AlertRunner(load_alert_rules(folder), db_engine, settings, node)


DEAD = """
  - name: lab-dead
    kind: dead-letters
    destination: lab
    window_minutes: 60
    threshold: 2
"""


def test_dead_letters_raise_once_then_recover_once(
    store: SqlMessageStore, db_engine: Engine, tmp_path: Path, smtp: Mailbox, webhook: Hook
) -> None:
    folder = _config(tmp_path / "routes", smtp, webhook, DEAD)
    runner = _runner(folder, db_engine, tmp_path)
    dead_letter(store, "P1")
    first = asyncio.run(runner.run_once())
    assert first.transitions == [] and smtp.mails == [] and webhook.bodies == []  # 1 < 2
    dead_letter(store, "P2")
    dead_letter(store, "P3", destination="other")  # another destination: not counted
    report = asyncio.run(runner.run_once())
    assert report.transitions == [("lab-dead", "lab", "raised")]

    # the e-mail, as the SMTP server received it: one message to both addresses, after AUTH
    assert smtp.logins == ["engine"]
    [(rcpts, mail)] = smtp.mails
    assert rcpts == ["it@clinic.example", "oncall@clinic.example"]
    assert mail["Subject"] == "[engine] ALERT: lab-dead (lab)"
    assert mail["From"] == "engine@clinic.example"
    body = mail.get_payload(decode=True).decode()  # type: ignore[union-attr]
    assert "2 deliveries dead-lettered in the last 60 min (destination lab): lab: 2" in body
    assert "rule: lab-dead (dead-letters)" in body
    # the webhook: JSON with a text field (what Slack and Teams show)
    [hooked] = webhook.bodies
    assert webhook.content_types == ["application/json"]
    assert list(hooked) == ["text"]
    assert hooked["text"].startswith("[engine] ALERT: lab-dead (lab) — 2 deliveries dead-lettered")
    # no patient in any notice
    for patient in ("P1", "P2", "P3"):
        assert patient not in body and patient not in hooked["text"]

    [active] = active_alerts(db_engine)
    assert (active.rule, active.subject, active.kind) == ("lab-dead", "lab", "dead-letters")
    assert active.notified_at is not None

    # still raised: no second notice, however often it is evaluated
    for _ in range(3):
        again = asyncio.run(runner.run_once())
        assert again.transitions == [] and again.sent == []
    assert len(smtp.mails) == 1 and len(webhook.bodies) == 1

    # an hour later the dead letters are out of the window: recovered, one notice each
    later = datetime.now(UTC) + timedelta(minutes=61)
    cleared = asyncio.run(runner.run_once(now=later))
    assert cleared.transitions == [("lab-dead", "lab", "recovered")]
    assert smtp.subjects() == [
        "[engine] ALERT: lab-dead (lab)",
        "[engine] RECOVERED: lab-dead (lab)",
    ]
    assert webhook.texts()[1].startswith("[engine] RECOVERED: lab-dead (lab) — 0 deliveries")
    asyncio.run(runner.run_once(now=later + timedelta(minutes=1)))
    assert len(smtp.mails) == 2 and len(webhook.bodies) == 2
    assert active_alerts(db_engine) == []
    with db_engine.connect() as conn:
        trail = conn.execute(
            select(audit_log.c.actor, audit_log.c.source, audit_log.c.detail, audit_log.c.outcome)
            .where(audit_log.c.action == "alert")
            .order_by(audit_log.c.id)
        ).all()
    assert [tuple(r) for r in trail] == [
        ("engine", "engine", "raised: lab-dead (lab): " + active.summary, "ok"),
        ("engine", "engine", "recovered: lab-dead (lab): " + cleared.findings[0].summary, "ok"),
    ]
    events = [(e.event, e.detail) for e in reversed(recent_events(db_engine))]
    assert [e for e, _ in events] == ["raised", "notified", "recovered", "notified"]
    assert events[1][1] == "raise to it-mail, slack"


def test_a_failed_channel_gets_the_notice_next_time_and_the_other_not_twice(
    store: SqlMessageStore, db_engine: Engine, tmp_path: Path, smtp: Mailbox, webhook: Hook
) -> None:
    folder = _config(
        tmp_path / "routes", smtp, webhook, DEAD.replace("threshold: 2", "threshold: 1")
    )
    runner = _runner(folder, db_engine, tmp_path)
    dead_letter(store, "P1")
    webhook.fail = 1  # the receiver answers 500 once
    report = asyncio.run(runner.run_once())
    assert ("lab-dead", "lab", "raise", "slack", "webhook answered HTTP 500") in report.sent
    assert len(smtp.mails) == 1 and webhook.bodies == []
    [active] = active_alerts(db_engine)
    assert active.last_error == "slack: webhook answered HTTP 500"
    assert active.notified_at is None  # not every channel has it yet

    retry = asyncio.run(runner.run_once())
    assert [(c, e) for _, _, _, c, e in retry.sent] == [("slack", None)]
    assert len(smtp.mails) == 1 and len(webhook.bodies) == 1
    assert webhook.texts()[0].startswith("[engine] ALERT: lab-dead (lab)")
    [active] = active_alerts(db_engine)
    assert active.notified_at is not None and active.last_error is None
    assert asyncio.run(runner.run_once()).sent == []


def test_a_channel_that_cannot_be_reached_never_stops_the_evaluation(
    store: SqlMessageStore, db_engine: Engine, tmp_path: Path, smtp: Mailbox, webhook: Hook
) -> None:
    folder = _config(
        tmp_path / "routes", smtp, webhook, DEAD.replace("threshold: 2", "threshold: 1")
    )
    text = (folder / "alerts.yaml").read_text().replace(f"port: {smtp.port}", "port: 9")
    (folder / "alerts.yaml").write_text(text)  # nothing listens on 127.0.0.1:9
    runner = _runner(folder, db_engine, tmp_path)
    dead_letter(store, "P1")
    report = asyncio.run(runner.run_once())
    [mail_try] = [s for s in report.sent if s[3] == "it-mail"]
    assert mail_try[4] is not None and mail_try[4].startswith("SMTP ")
    assert len(webhook.bodies) == 1


def test_two_evaluators_at_once_send_each_notice_once(
    store: SqlMessageStore, db_engine: Engine, tmp_path: Path, smtp: Mailbox, webhook: Hook
) -> None:
    folder = _config(
        tmp_path / "routes", smtp, webhook, DEAD.replace("threshold: 2", "threshold: 1")
    )
    runners = [_runner(folder, db_engine, tmp_path, node=f"node-{i}") for i in range(4)]
    dead_letter(store, "P1")

    async def together() -> None:
        await asyncio.gather(*(r.run_once() for r in runners))

    asyncio.run(together())
    assert len(smtp.mails) == 1 and len(webhook.bodies) == 1
    later = datetime.now(UTC) + timedelta(minutes=90)

    async def together_later() -> None:
        await asyncio.gather(*(r.run_once(now=later) for r in runners))

    asyncio.run(together_later())
    assert smtp.subjects() == [
        "[engine] ALERT: lab-dead (lab)",
        "[engine] RECOVERED: lab-dead (lab)",
    ]
    assert len(webhook.bodies) == 2


def test_an_alert_still_raised_is_notified_again_after_the_repeat_interval(
    store: SqlMessageStore, db_engine: Engine, tmp_path: Path, smtp: Mailbox, webhook: Hook
) -> None:
    rules = """
  - name: lab-backlog
    kind: queue-age
    older_than_minutes: 15
"""
    folder = _config(tmp_path / "routes", smtp, webhook, rules, repeat="30")
    runner = _runner(folder, db_engine, tmp_path)
    routed(store, "P1")  # pending, never delivered
    now = datetime.now(UTC)
    assert asyncio.run(runner.run_once(now=now + timedelta(minutes=5))).transitions == []
    raised = asyncio.run(runner.run_once(now=now + timedelta(minutes=16)))
    assert raised.transitions == [("lab-backlog", "lab", "raised")]
    assert smtp.subjects() == ["[engine] ALERT: lab-backlog (lab)"]
    body = smtp.mails[0][1].get_payload(decode=True).decode()  # type: ignore[union-attr]
    assert "lab: the oldest undelivered delivery has waited 16 min (1 in the queue)" in body
    asyncio.run(runner.run_once(now=now + timedelta(minutes=30)))
    assert len(smtp.mails) == 1
    asyncio.run(runner.run_once(now=now + timedelta(minutes=47)))
    assert smtp.subjects()[1] == "[engine] STILL RAISED: lab-backlog (lab)"
    # delivered: the destination has no queue left, the alert recovers
    deliver_all(store)
    cleared = asyncio.run(runner.run_once(now=now + timedelta(minutes=48)))
    assert cleared.transitions == [("lab-backlog", "lab", "recovered")]
    assert smtp.subjects()[2] == "[engine] RECOVERED: lab-backlog (lab)"
    assert len(webhook.bodies) == 3


def test_the_history_is_kept_90_days_and_a_raised_alert_for_ever(
    store: SqlMessageStore, db_engine: Engine, tmp_path: Path
) -> None:
    from engine.alerts.state import AlertStates, Finding, alert_rows

    states = AlertStates(db_engine)
    now = datetime.now(UTC)
    states.apply([Finding("a", "", "disk", True, "low"), Finding("b", "", "disk", True, "low")])
    states.apply([Finding("a", "", "disk", False, "fine")], now=now + timedelta(minutes=1))
    assert len(recent_events(db_engine)) == 3
    assert states.prune(now=now + timedelta(days=89)) == 0
    assert states.prune(now=now + timedelta(days=91)) == 4  # 3 events and the recovered alert
    assert [(r.rule, r.state) for r in alert_rows(db_engine)] == [("b", "raised")]
