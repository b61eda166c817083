"""The alert rules are evaluated by the leader node only (engine/jobs/alerts.py); a node that
does not lead records nothing and sends nothing while the database answers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import Engine

from engine.alerts.rules import load_alert_rules
from engine.jobs.alerts import AlertRunner
from engine.settings import Settings
from engine.store import SqlMessageStore
from tests.alerts.conftest import Hook, dead_letter, webhook, write_alerts

__all__ = ["webhook"]  # the fixture, imported for this module's tests

RULES = """
channels:
  slack: {{type: webhook, url_env: TEST_ALERTS_WEBHOOK_URL, timeout_s: 3}}
defaults:
  repeat_minutes: 0
rules:
  - {{name: lab-dead, kind: dead-letters, destination: lab, window_minutes: 60, threshold: 1}}
"""


def test_only_the_leader_evaluates(
    store: SqlMessageStore,
    db_engine: Engine,
    tmp_path: Path,
    webhook: Hook,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_ALERTS_WEBHOOK_URL", webhook.url)
    folder = write_alerts(tmp_path / "routes", RULES.format())
    settings = Settings(var_dir=tmp_path / "var", routes_dir=folder, timezone="UTC")
    runner = AlertRunner(load_alert_rules(folder), db_engine, settings, "node-b")
    dead_letter(store, "P1")

    follower = asyncio.run(runner.run_once(leading=False))
    assert follower.findings == [] and follower.transitions == [] and webhook.bodies == []

    leader = asyncio.run(runner.run_once(leading=True))
    assert leader.transitions == [("lab-dead", "lab", "raised")]
    assert len(webhook.bodies) == 1
