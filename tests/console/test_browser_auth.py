"""Logging in and out of the console in a real browser against a real ``engine serve``: through
the login form to the dashboard and out by the header's button; out by idling (the next
navigation lands on the login page, and the audit trail says session-expired); locked out after
repeated failures, even with the right password; in through a (stub) OpenID Connect provider."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.store import SqlMessageStore, create_db_engine
from tests.console.support import ConsoleEngine, console_engine, login
from tests.console.test_auth_oidc import running_provider

PASSWORD = "correct horse battery"
IDLE_S = 6  # ENGINE_CONSOLE_IDLE_MINUTES=0.1


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleEngine]:
    env = {"ENGINE_CONSOLE_IDLE_MINUTES": "0.1", "ENGINE_CONSOLE_MAX_FAILED_LOGINS": "3"}
    with console_engine(tmp_path_factory.mktemp("browser-auth"), env=env) as running:
        running.add_user("ada", PASSWORD, "admin")
        running.add_user("bea", PASSWORD, "viewer")
        running.add_user("cyd", PASSWORD, "front-desk")
        yield running


def audit_of(engine: ConsoleEngine) -> list[tuple[str, str, str | None]]:
    db = create_db_engine(f"sqlite:///{Path(engine.var) / 'engine.db'}")
    try:
        entries = SqlMessageStore(db).audit_entries(limit=200)
    finally:
        db.dispose()
    return [(e.action, e.actor, e.detail) for e in entries]


def test_log_in_see_the_dashboard_and_log_out(page: Any, engine: ConsoleEngine) -> None:
    login(page, engine.base_url, "ada", PASSWORD)
    assert page.url == f"{engine.base_url}/console/"
    answer = page.goto(f"{engine.base_url}/console/")
    assert answer is not None and answer.status < 500
    page.goto(f"{engine.base_url}/console/users")
    assert page.locator("tr[data-user=bea]").count() == 1
    assert page.locator("header .who").inner_text() == "ada"
    with page.expect_navigation():
        page.click("form.logout button")
    assert page.url.startswith(f"{engine.base_url}/console/login")
    page.goto(f"{engine.base_url}/console/users")
    assert page.url.startswith(f"{engine.base_url}/console/login?next=")
    actions = [(a, who) for a, who, _ in audit_of(engine)]
    assert ("logout", "ada") in actions and ("login", "ada") in actions


def test_an_idle_session_logs_off_and_the_trail_says_so(page: Any, engine: ConsoleEngine) -> None:
    login(page, engine.base_url, "bea", PASSWORD)
    page.goto(f"{engine.base_url}/console/routes")
    time.sleep(IDLE_S + 1)
    page.goto(f"{engine.base_url}/console/routes")
    assert page.url == f"{engine.base_url}/console/login?next=%2Fconsole%2Froutes"
    assert page.locator("form.login-form").count() == 1
    expired = [
        (who, detail) for action, who, detail in audit_of(engine) if action == "session-expired"
    ]
    assert ("bea", "idle for 0.1 min") in expired
    # logging in again goes back where the user was
    page.fill("#username", "bea")
    page.fill("#password", PASSWORD)
    with page.expect_navigation():
        page.click("form.login-form button[type=submit]")
    assert page.url == f"{engine.base_url}/console/routes"


def test_repeated_failures_lock_the_account(page: Any, engine: ConsoleEngine) -> None:
    for _ in range(3):
        page.goto(f"{engine.base_url}/console/login")
        page.fill("#username", "cyd")
        page.fill("#password", "not the password at all")
        with page.expect_navigation():
            page.click("form.login-form button[type=submit]")
        assert "Wrong user name or password" in page.locator(".error").inner_text()
    with pytest.raises(AssertionError, match="Wrong user name or password"):
        login(page, engine.base_url, "cyd", PASSWORD)
    listed = engine.cli("users", "list", "--json")
    assert '"username":"cyd"' in listed.stdout and '"state":"locked"' in listed.stdout
    assert engine.cli("users", "enable", "cyd").returncode == 0
    login(page, engine.base_url, "cyd", PASSWORD)
    assert "/console/login" not in page.url


def test_log_in_with_an_identity_provider(page: Any, tmp_path: Path) -> None:
    with running_provider() as provider:
        secret = tmp_path / "oidc-secret"
        secret.write_text(provider.client_secret)
        env = {
            "ENGINE_OIDC_ISSUER": provider.base_url,
            "ENGINE_OIDC_CLIENT_ID": provider.client_id,
            "ENGINE_OIDC_CLIENT_SECRET_FILE": str(secret),
            "ENGINE_OIDC_ROLE_MAP": '{"engine-admins": "admin"}',
            "ENGINE_OIDC_NAME": "Stub IdP",
        }
        with console_engine(tmp_path, env=env) as engine:
            page.goto(f"{engine.base_url}/console/users")
            with page.expect_navigation(url=f"{engine.base_url}/console/users"):
                page.click("text=Log in with Stub IdP")
            assert page.locator("header .who").inner_text() == "ada.oidc"
            assert page.locator("tr[data-user='ada.oidc']").count() == 1
            assert provider.seen[0]["authorize"]["code_challenge_method"] == "S256"
            trail = audit_of(engine)
            assert ("login", "ada.oidc", "by oidc") in trail
