"""Start-up (issue 11): every error names the setting or the file in one line, before any port
opens or the banner shows; the banner says where the engine lives and which listeners are TLS;
SIGTERM during start-up stops it promptly."""

from __future__ import annotations

import pytest

from engine.api.auth_settings import auth_settings_for
from engine.errors import ConfigError
from engine.settings import Settings, load_settings
from engine.store import create_db_engine


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("ENGINE_MLLP_PORT", "abc", "ENGINE_MLLP_PORT: 'abc' is not a port number (0-65535)"),
        ("ENGINE_HTTP_PORT", "70000", "ENGINE_HTTP_PORT: '70000' is not a port number"),
        ("ENGINE_MAX_CONNECTIONS", "lots", "ENGINE_MAX_CONNECTIONS: 'lots' is not a whole number"),
        ("ENGINE_MAX_CONNECTIONS", "0", "ENGINE_MAX_CONNECTIONS: '0' should be greater than"),
        ("ENGINE_IDLE_TIMEOUT_S", "soon", "ENGINE_IDLE_TIMEOUT_S: 'soon' is not a number"),
        ("ENGINE_WORKERS", "perhaps", "ENGINE_WORKERS: 'perhaps' is not true or false"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value).startswith(expected), str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_flag_is_named_as_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"^--mllp-port: 70000 is not a port number"):
        load_settings(mllp_port=70000)


def test_auth_settings_name_their_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENGINE_AUTH_MODE", "magic")
    with pytest.raises(ConfigError, match=r"^ENGINE_AUTH_MODE: 'magic' should be"):
        auth_settings_for(Settings())
    monkeypatch.setenv("ENGINE_AUTH_MODE", "keyfile")
    with pytest.raises(ConfigError, match=r"^mode keyfile needs ENGINE_AUTH_KEY_FILE"):
        auth_settings_for(Settings())
    monkeypatch.setenv("ENGINE_AUTH_MODE", "dev")
    monkeypatch.setenv("ENGINE_AUTH_ROLE_ALIASES", "{not json")
    with pytest.raises(ConfigError, match=r"^ENGINE_AUTH_ROLE_ALIASES: not valid JSON"):
        auth_settings_for(Settings())


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("not a url", "ENGINE_DATABASE_URL: not a database URL"),
        ("mysql://u:hunter2@db/engine", "ENGINE_DATABASE_URL: database 'mysql' is not supported"),
        ("postgresql+nosuch://u:hunter2@db/e", "ENGINE_DATABASE_URL: driver 'postgresql+nosuch'"),
    ],
)
def test_a_bad_database_url_names_the_setting_not_the_password(url: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        create_db_engine(url)
    assert str(caught.value).startswith(expected) and "hunter2" not in str(caught.value)
