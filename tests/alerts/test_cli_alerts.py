"""``engine alerts check | run | list`` on the test's store (SQLite and PostgreSQL), sending to a
real HTTP receiver."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.errors import EngineError
from engine.store import SqlMessageStore
from tests.alerts.conftest import Hook, dead_letter, write_alerts

runner = CliRunner()

RULES = """
channels:
  hook: {type: webhook, url_env: TEST_ALERTS_HOOK}
  mail: {type: email, enabled: false, host: 127.0.0.1, from: a@b.example, to: [c@d.example]}
rules:
  - {name: dead, kind: dead-letters, window_minutes: 60, threshold: 1}
  - {name: backlog, kind: queue-age, older_than_minutes: 30}
"""


@pytest.fixture
def cli(store: SqlMessageStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, webhook: Hook):  # type: ignore[no-untyped-def]
    routes = write_alerts(tmp_path / "routes", RULES)
    monkeypatch.setenv("ENGINE_DATABASE_URL", store.db_engine.url.render_as_string(False))
    monkeypatch.setenv("ENGINE_HOME", str(tmp_path))
    monkeypatch.setenv("ENGINE_ROUTES_DIR", str(routes))
    monkeypatch.setenv("ENGINE_TIMEZONE", "UTC")
    monkeypatch.setenv("TEST_ALERTS_HOOK", webhook.url)

    def run(*args: str) -> tuple[int, str, str]:
        result = runner.invoke(app, list(args))
        if isinstance(result.exception, EngineError):
            return 1, result.stdout, str(result.exception)
        assert result.exception is None or isinstance(result.exception, SystemExit), result
        return result.exit_code, result.stdout, result.stderr

    return run


def test_check_run_and_list(cli, store: SqlMessageStore, webhook: Hook, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = cli("alerts", "check")
    assert code == 0
    assert out.strip() == f"ok: 2 rules, 2 channels from {tmp_path / 'routes' / 'alerts.yaml'}"

    code, out, _ = cli("alerts", "run")
    assert code == 0, out
    assert "ok         dead: 0 deliveries dead-lettered in the last 60 min; threshold 1" in out
    assert webhook.bodies == []

    dead_letter(store, "P1", destination="lab")
    code, out, _ = cli("alerts", "run")
    assert code == 0, out
    assert "RAISED     dead: 1 delivery dead-lettered in the last 60 min: lab: 1" in out
    assert "raised: dead\n" in out and "sent: raise of dead to hook\n" in out
    assert webhook.texts()[0].startswith("[engine] ALERT: dead — 1 delivery dead-lettered")
    code, out, _ = cli("alerts", "run")  # once: no second notice
    assert "sent:" not in out and len(webhook.bodies) == 1

    code, out, _ = cli("alerts", "list", "--events", "5")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("raised     dead") and "raised 20" in lines[0]
    assert lines[1].strip() == "1 delivery dead-lettered in the last 60 min: lab: 1; threshold 1"
    assert any("notified   dead: raise to hook" in line for line in lines)


def test_check_names_the_file_line_and_key(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "routes" / "alerts.yaml").write_text(
        RULES.replace("older_than_minutes: 30", "older_than_minutes: x")
    )
    code, _, err = cli("alerts", "check")
    assert code == 1
    assert f"{tmp_path / 'routes' / 'alerts.yaml'}, line 7, rules[1].older_than_minutes:" in err


def test_run_exits_1_when_a_notice_fails(cli, store: SqlMessageStore, webhook: Hook) -> None:  # type: ignore[no-untyped-def]
    dead_letter(store, "P1")
    webhook.fail = 1
    code, _, err = cli("alerts", "run")
    assert code == 1
    assert "error: raise of dead not sent to hook: webhook answered HTTP 500" in err
    code, out, _ = cli("alerts", "run")
    assert code == 0 and "sent: raise of dead to hook" in out
