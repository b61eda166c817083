"""The audit trail in a real browser against a real ``engine serve``: an admin logs in through the
form, opens /console/audit and sees the trail with that very login in it, filters it, and
verifies the chain with the button; a viewer is refused the page, by a page that says why."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.console.support import ConsoleEngine, console_engine, login

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleEngine]:
    with console_engine(tmp_path_factory.mktemp("browser-audit")) as running:
        running.add_user("ada", PASSWORD, "admin")
        running.add_user("bea", PASSWORD, "viewer")
        yield running


def test_an_admin_sees_their_own_login_and_verifies_the_chain(
    page: Any, engine: ConsoleEngine
) -> None:
    login(page, engine.base_url, "ada", PASSWORD)
    page.goto(f"{engine.base_url}/console/audit")
    rows = page.locator("table.audit tbody tr")
    first = rows.first.inner_text()
    assert "ada" in first and "view-audit" not in first  # its own reading is recorded after
    logins = page.locator("table.audit tbody tr", has_text="login")
    assert logins.count() >= 1
    assert "ada" in logins.first.inner_text() and "console" in logins.first.inner_text()
    assert "ok" in logins.first.inner_text()
    page.select_option("select[name=action]", "login")
    with page.expect_navigation():
        page.click("form.search button[type=submit]")
    assert "action=login" in page.url
    texts = rows.all_inner_texts()
    assert texts and all("login" in t for t in texts)
    with page.expect_navigation():
        page.click("text=Verify chain")
    status = page.locator("[data-verify]")
    assert status.get_attribute("data-verify") == "ok"
    assert "Chain intact" in status.inner_text()
    # the page's readings are in the trail: the newest row after the check
    page.goto(f"{engine.base_url}/console/audit?action=view-audit")
    assert any("verify: intact" in t for t in rows.all_inner_texts())
    done = engine.cli("audit", "verify")
    assert done.returncode == 0, done.stderr
    assert "audit trail intact" in done.stdout


def test_a_viewer_is_refused_the_trail(page: Any, engine: ConsoleEngine) -> None:
    login(page, engine.base_url, "bea", PASSWORD)
    answer = page.goto(f"{engine.base_url}/console/audit")
    assert answer is not None and answer.status == 403
    # a page of the console, not JSON: the role it needs, the user's, where they may go
    assert page.title() == "Not allowed · engine"
    assert page.locator("[role=alert]").inner_text() == "This page needs the admin role."
    assert "logged in as bea, with the role viewer." in page.locator("main").inner_text()
    with page.expect_navigation():
        page.click("ul.allowed a:text-is('Messages')")
    assert page.url == f"{engine.base_url}/console/messages"
    page.goto(f"{engine.base_url}/console/")
    assert page.locator("header.top nav a", has_text="Dashboard").count() == 1
    assert page.locator("header.top nav a", has_text="Audit").count() == 0
