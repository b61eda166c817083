"""The users page (admin): the list with roles, state and last login; add, change roles, set a
password, disable and enable — each form with the session's CSRF token, each change audited with
the admin as actor; no admin can lock themself out by a slip; other roles get 403."""

from __future__ import annotations

import re

from engine.store import SqlMessageStore
from engine.store.users import hash_password
from tests.api.conftest import TestClient
from tests.console.test_auth_sessions import ADMIN, PASSWORD, AppMaker, form_token, log_in
from tests.console.test_auth_sessions import ada as ada  # noqa: F401  (the fixture)
from tests.console.test_auth_sessions import make_console as make_console  # noqa: F401


def admin_client(make_console: AppMaker) -> tuple[TestClient, str]:
    client = TestClient(make_console())
    assert log_in(client, "ada", PASSWORD)[0] == 303
    page = client.get("/console/users")
    assert page.status_code == 200
    return client, form_token(page.text)


def test_the_list_shows_roles_state_and_last_login(
    make_console: AppMaker, ada: str, store: SqlMessageStore
) -> None:
    store.add_user("bea", ["viewer"], ADMIN, password_hash=hash_password(PASSWORD))
    store.add_user("cyd", ["front-desk"], ADMIN, password_hash=hash_password(PASSWORD))
    store.set_disabled("cyd", True, ADMIN)
    client, _ = admin_client(make_console)
    page = client.get("/console/users").text
    rows = dict(re.findall(r'<tr data-user="([^"]+)">(.*?)</tr>', page, re.S))
    assert set(rows) == {"ada", "bea", "cyd"}
    assert "admin" in rows["ada"] and "UTC" in rows["ada"]  # logged in just now
    assert "never" in rows["bea"] and "active" in rows["bea"]
    assert "disabled" in rows["cyd"] and "Enable" in rows["cyd"]
    assert "Disable" not in rows["ada"]  # not oneself
    assert page.count('name="csrf_token"') >= 1 + 3 * 2


def test_add_change_reset_disable_enable(
    make_console: AppMaker, ada: str, store: SqlMessageStore
) -> None:
    client, token = admin_client(make_console)
    answer = client.post(
        "/console/users",
        data={
            "csrf_token": token,
            "username": "Bea",
            "password": PASSWORD,
            "role": ["viewer", "front-desk"],
        },
        follow_redirects=False,
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == "/console/users?done=added&user=bea"
    bea = store.get_user("bea")
    assert bea is not None and bea.roles == ("front-desk", "viewer")
    assert "bea: added" in client.get(answer.headers["location"]).text

    assert (
        client.post(
            "/console/users/bea/roles", data={"csrf_token": token, "role": "integration"}
        ).status_code
        == 200
    )  # redirected to the list
    assert store.get_user("bea").roles == ("integration",)  # type: ignore[union-attr]

    other = TestClient(make_console())
    assert log_in(other, "bea", PASSWORD)[0] == 303
    new = "a brand new password"
    client.post("/console/users/bea/password", data={"csrf_token": token, "password": new})
    assert other.get("/console/_whoami", follow_redirects=False).status_code == 303
    assert store.check_login("bea", new, None).reason == "ok"

    client.post("/console/users/bea/disable", data={"csrf_token": token})
    assert store.get_user("bea").disabled  # type: ignore[union-attr]
    client.post("/console/users/bea/enable", data={"csrf_token": token})
    assert not store.get_user("bea").disabled  # type: ignore[union-attr]

    trail = [
        (e.action, e.actor, e.source)
        for e in reversed(store.audit_entries(limit=100))
        if e.action.startswith("user-")
    ]
    assert trail == [
        ("user-add", "tester", "cli"),  # ada, by the fixture
        ("user-add", "ada", "console"),
        ("user-change", "ada", "console"),
        ("user-change", "ada", "console"),
        ("user-disable", "ada", "console"),
        ("user-change", "ada", "console"),
    ]


def test_every_form_needs_the_csrf_token(
    make_console: AppMaker, ada: str, store: SqlMessageStore
) -> None:
    client, _ = admin_client(make_console)
    store.add_user("bea", ["viewer"], ADMIN, password_hash=hash_password(PASSWORD))
    posts = {
        "/console/users": {"username": "cyd", "password": PASSWORD, "role": "viewer"},
        "/console/users/bea/roles": {"role": "admin"},
        "/console/users/bea/password": {"password": "another password!"},
        "/console/users/bea/disable": {},
        "/console/users/bea/enable": {},
    }
    for path, data in posts.items():
        assert client.post(path, data=data).status_code == 403, path
        assert client.post(path, data={**data, "csrf_token": "x"}).status_code == 403, path
    assert store.get_user("cyd") is None
    bea = store.get_user("bea")
    assert bea is not None and bea.roles == ("viewer",) and not bea.disabled


def test_mistakes_are_named_and_change_nothing(
    make_console: AppMaker, ada: str, store: SqlMessageStore
) -> None:
    client, token = admin_client(make_console)
    cases = [
        ("/console/users", {"username": "x", "password": "short", "role": "viewer"}, "at least 12"),
        ("/console/users", {"username": "x y", "password": PASSWORD}, "a user name is"),
        ("/console/users", {"username": "ada", "password": PASSWORD, "role": "admin"}, "exists"),
        ("/console/users", {"username": "zed", "password": PASSWORD}, "at least one role"),
        ("/console/users/ada/roles", {"role": "viewer"}, "your own admin role"),
        ("/console/users/ada/disable", {}, "cannot disable yourself"),
        ("/console/users/nobody/roles", {"role": "viewer"}, "no user nobody"),
    ]
    for path, data, words in cases:
        answer = client.post(path, data={**data, "csrf_token": token})
        assert answer.status_code == 422 and words in answer.text, (path, answer.text[:200])
    assert [u.username for u in store.list_users()] == ["ada"]


def test_only_admins_see_the_users_page(
    make_console: AppMaker, ada: str, store: SqlMessageStore
) -> None:
    store.add_user("bea", ["viewer", "integration"], ADMIN, password_hash=hash_password(PASSWORD))
    client = TestClient(make_console())
    log_in(client, "bea", PASSWORD)
    assert client.get("/console/users").status_code == 403
    assert client.post("/console/users/ada/disable", data={}).status_code == 403
