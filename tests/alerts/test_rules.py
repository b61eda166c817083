"""alerts.yaml is read like a route file: every mistake stops with the file, the line and the
key; it sits beside the route files without being taken for one."""

from __future__ import annotations

from datetime import time
from pathlib import Path

import pytest

from engine.alerts.rules import (
    DeadLetters,
    EmailChannel,
    SenderSilent,
    WebhookChannel,
    check_loaded,
    load_alert_rules,
)
from engine.errors import ConfigError
from tests.alerts.conftest import write_alerts

GOOD = """\
channels:
  it-mail:
    type: email
    host: smtp.clinic.example
    port: 587
    starttls: true
    from: engine@clinic.example
    to: [it@clinic.example]
    username: engine
    password_env: ENGINE_TEST_SMTP_PASSWORD
  slack:
    type: webhook
    url_env: ENGINE_TEST_SLACK_URL
defaults:
  channels: [it-mail]
  repeat_minutes: 240
rules:
  - {name: dead, kind: dead-letters, window_minutes: 30, threshold: 3, route: adt-out}
  - {name: backlog, kind: queue-age, older_than_minutes: 15, channels: [slack]}
  - name: epic-silent
    kind: sender-silent
    sender: EPIC
    silent_minutes: 60
    business_hours: {days: [mon, tue], start: 07:30, end: 17:00}
  - {name: payers, kind: eligibility-failures, per_payer: true}
  - {name: disk, kind: disk, min_free_percent: 5}
  - {name: db, kind: database, max_query_ms: 500, repeat_minutes: 0}
"""


def test_a_good_file_loads_with_its_rules_channels_and_defaults(tmp_path: Path) -> None:
    folder = write_alerts(tmp_path / "routes", GOOD)
    config = load_alert_rules(folder)
    assert config.file == str(folder / "alerts.yaml")
    assert [r.name for r in config.rules] == [
        "dead",
        "backlog",
        "epic-silent",
        "payers",
        "disk",
        "db",
    ]
    dead = config.rule("dead")
    assert isinstance(dead, DeadLetters) and (dead.threshold, dead.route) == (3, "adt-out")
    silent = config.rule("epic-silent")
    assert isinstance(silent, SenderSilent)
    # 07:30 stays text in YAML, 17:00 is read as the number 1020 (YAML 1.1): both are times
    assert (silent.business_hours.start, silent.business_hours.end) == (time(7, 30), time(17, 0))
    assert isinstance(config.channels["it-mail"], EmailChannel)
    assert isinstance(config.channels["slack"], WebhookChannel)
    assert config.channels_of(dead) == ["it-mail"]
    assert config.channels_of(config.rule("backlog")) == ["slack"]
    assert config.repeat_minutes(dead) == 240
    assert config.repeat_minutes(config.rule("db")) == 0


def test_no_file_means_no_rules(tmp_path: Path) -> None:
    assert load_alert_rules(tmp_path).rules == ()
    assert load_alert_rules(None).rules == ()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ("threshold: 3", "threshold: 0"),
            "line 18, rules[0].threshold: Input should be greater than or equal to 1",
        ),
        (
            ("kind: queue-age", "kind: queue-depth"),
            "line 19, rules[1]: Input tag 'queue-depth' found using 'kind' does not match",
        ),
        (
            ("channels: [slack]", "channels: [teams]"),
            "line 19, rules[1].channels[0]: unknown channel 'teams' (defined: it-mail, slack)",
        ),
        (("older_than_minutes: 15, ", ""), "line 19, rules[1].older_than_minutes: Field required"),
        (("start: 07:30", "start: 18:00"), "line 24, rules[2].business_hours: end must be after"),
        (("days: [mon, tue]", "days: [mon, tues]"), "line 24, rules[2].business_hours.days[1]:"),
        (
            ("password_env: ENGINE_TEST_SMTP_PASSWORD", "password: hunter2"),
            "line 10, channels.it-mail.password: Extra inputs are not permitted (a secret never "
            "goes in alerts.yaml",
        ),
        (("from: engine@clinic.example", "from: engine"), "line 7, channels.it-mail.from:"),
        (("url_env: ENGINE_TEST_SLACK_URL", "url: ftp://x"), "line 13, channels.slack.url:"),
        (("name: db,", "name: disk,"), "line 27, rules[5].name: rule 'disk' is already defined"),
        (
            ("min_free_percent: 5", "path: /var"),
            "line 26, rules[4].min_free_percent: give min_free",
        ),
        (("channels: [it-mail]", "channels: [pager]"), "line 15, defaults.channels[0]: unknown"),
    ],
)
def test_a_mistake_names_the_file_the_line_and_the_key(
    tmp_path: Path, change: tuple[str, str], expected: str
) -> None:
    old, new = change
    assert old in GOOD
    folder = write_alerts(tmp_path / "routes", GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as caught:
        load_alert_rules(folder)
    message = str(caught.value)
    assert message.startswith(f"{folder}/alerts.yaml, "), message
    assert expected in message, message


def test_not_yaml_and_a_key_written_twice_are_refused(tmp_path: Path) -> None:
    folder = write_alerts(tmp_path / "a", "rules: [\n")
    with pytest.raises(ConfigError, match=r"alerts.yaml, line \d+: not valid YAML"):
        load_alert_rules(folder)
    folder = write_alerts(tmp_path / "b", "rules: []\nrules: []\n")
    with pytest.raises(ConfigError, match=r"alerts.yaml, line 2, rules: written twice"):
        load_alert_rules(folder)


def test_check_loaded_names_secrets_that_are_not_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ENGINE_TEST_SMTP_PASSWORD", raising=False)
    monkeypatch.setenv("ENGINE_TEST_SLACK_URL", "http://127.0.0.1:1/hook")
    config = load_alert_rules(write_alerts(tmp_path / "routes", GOOD))
    assert check_loaded(config) == ["channel 'it-mail': ENGINE_TEST_SMTP_PASSWORD is not set"]


def test_the_route_loader_leaves_alerts_yaml_alone_and_load_config_checks_it(
    tmp_path: Path,
) -> None:
    from engine.adapters.registry import load_routes
    from engine.flow.config import load_config
    from engine.settings import Settings

    folder = write_alerts(tmp_path / "routes", GOOD)
    routes = load_routes(folder)  # no "unknown key: rules" from the route loader
    assert "(built-in) example.yaml" in routes.origin.values()
    assert not any("alerts.yaml" in where for where in routes.origin.values())
    settings = Settings(var_dir=tmp_path / "var", routes_dir=folder)
    load_config(settings)
    (folder / "alerts.yaml").write_text(GOOD.replace("threshold: 3", "threshold: -1"))
    with pytest.raises(ConfigError, match=r"alerts.yaml, line 18, rules\[0\].threshold"):
        load_config(settings)


def test_a_channel_needs_one_url_and_a_password_needs_a_username(tmp_path: Path) -> None:
    text = GOOD.replace("    username: engine\n", "")
    with pytest.raises(ConfigError, match=r"line 2, channels.it-mail.password_file: a password"):
        load_alert_rules(write_alerts(tmp_path / "a", text))
    text = GOOD.replace("url_env: ENGINE_TEST_SLACK_URL", "timeout_s: 3")
    with pytest.raises(ConfigError, match=r"line 11, channels.slack.url_env: give url or url_env"):
        load_alert_rules(write_alerts(tmp_path / "b", text))
