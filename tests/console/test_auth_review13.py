"""Console login fixes of issue 13's review: a session replaced by a new login is audited (L9),
the users page's self-protection guards see the stored name and the store keeps one enabled admin
(L2), an OIDC role map grants only what it names (M5), and the dashboard's auto-refresh does not
keep a session from its idle log-off (L4)."""

from __future__ import annotations

from typing import Any

import pytest

from engine.console.pages_auth import Oidc
from engine.settings import Settings
from engine.store import SqlMessageStore
from engine.store.users import UserProblem, hash_password
from tests.api.conftest import TestClient
from tests.console.test_auth_sessions import (  # noqa: F401 (fixtures)
    ADMIN,
    PASSWORD,
    AppMaker,
    ada,
    age_sessions,
    form_token,
    log_in,
    make_console,
)


def test_a_session_replaced_by_a_new_login_is_audited(
    make_console: AppMaker,  # noqa: F811
    ada: str,  # noqa: F811
    store: SqlMessageStore,
) -> None:
    store.add_user("fd", ["front-desk"], ADMIN, password_hash=hash_password(PASSWORD))
    client = TestClient(make_console())
    assert log_in(client, "fd", PASSWORD)[0] == 303
    assert log_in(client, "ada", PASSWORD)[0] == 303
    trail = [(e.action, e.actor, e.detail) for e in reversed(store.audit_entries(limit=20))]
    assert trail[-3:] == [
        ("login", "fd", "by password"),
        ("logout", "fd", "replaced by a new login"),
        ("login", "ada", "by password"),
    ]


def _users_token(client: TestClient) -> str:
    page = client.get("/console/users")
    assert page.status_code == 200
    return form_token(page.text)


@pytest.mark.parametrize("name", ["ada%20", "ADA", "%20ada"])
def test_a_padded_own_name_does_not_pass_the_self_guards(
    make_console: AppMaker,  # noqa: F811
    ada: str,  # noqa: F811
    store: SqlMessageStore,
    name: str,
) -> None:
    store.add_user("bea", ["admin"], ADMIN, password_hash=hash_password(PASSWORD))
    client = TestClient(make_console())
    assert log_in(client, "ada", PASSWORD)[0] == 303
    token = _users_token(client)
    answer = client.post(
        f"/console/users/{name}/roles", data={"csrf_token": token, "role": ["viewer"]}
    )
    assert answer.status_code == 422 and "own admin role" in answer.text
    answer = client.post(f"/console/users/{name}/disable", data={"csrf_token": token})
    assert answer.status_code == 422 and "disable yourself" in answer.text
    user = store.get_user("ada")
    assert user is not None and user.roles == ("admin",) and not user.disabled


def test_the_store_keeps_one_enabled_admin_for_the_users_page(store: SqlMessageStore) -> None:
    store.add_user("ada", ["admin"], ADMIN, password_hash=None)
    store.add_user("bea", ["admin", "viewer"], ADMIN, password_hash=None)
    store.set_roles("bea", ["viewer"], ADMIN, keep_admin=True)
    with pytest.raises(UserProblem, match="last enabled admin"):
        store.set_roles("ada", ["viewer"], ADMIN, keep_admin=True)
    with pytest.raises(UserProblem, match="last enabled admin"):
        store.set_disabled(" ADA ", True, ADMIN, keep_admin=True)
    store.set_roles("bea", ["admin"], ADMIN, keep_admin=True)
    store.set_disabled("ada", True, ADMIN, keep_admin=True)  # another admin is left
    with pytest.raises(UserProblem, match="last enabled admin"):
        store.set_roles("bea", ["viewer"], ADMIN, keep_admin=True)
    store.set_roles("bea", ["viewer"], ADMIN)  # the command line may (recovery)


def test_a_role_map_grants_only_the_roles_it_names() -> None:
    mapped = Oidc(
        Settings(
            oidc_issuer="https://idp.example",
            oidc_client_id="engine",
            oidc_role_map={"engine-admins": "admin", "clinic-frontdesk": "front-desk"},
        )
    )
    assert mapped.roles({"roles": ["admin"]}) == []
    assert mapped.roles({"roles": ["admin", "clinic-frontdesk"]}) == ["front-desk"]
    assert mapped.roles({"roles": "engine-admins viewer"}) == ["admin"]
    unmapped = Oidc(Settings(oidc_issuer="https://idp.example", oidc_client_id="engine"))
    assert unmapped.roles({"roles": ["viewer", "other"]}) == ["viewer"]


def test_the_dashboards_auto_refresh_does_not_keep_a_session_alive(
    make_console: AppMaker,  # noqa: F811
    store: SqlMessageStore,
) -> None:
    store.add_user("vw", ["viewer"], ADMIN, password_hash=hash_password(PASSWORD))
    client = TestClient(make_console(console_idle_minutes=1.0))
    assert log_in(client, "vw", PASSWORD)[0] == 303
    age_sessions(store, seen=50)  # idle 50 s of 60: the refresh answers...
    assert client.get("/console/dashboard/live", follow_redirects=False).status_code == 200
    age_sessions(store, seen=50)  # ...but did not restart the clock: 100 s idle now
    assert client.get("/console/dashboard/live", follow_redirects=False).status_code == 303
    expired = [e for e in store.audit_entries(limit=20) if e.action == "session-expired"]
    assert [e.actor for e in expired] == ["vw"]


def test_the_session_cookie_is_secure_when_the_public_address_is_https(
    make_console: AppMaker,  # noqa: F811
    ada: str,  # noqa: F811
) -> None:
    client = TestClient(make_console(public_base_url="https://engine.example"))
    page = client.get("/console/login")
    login_cookie = page.headers["set-cookie"]
    assert "Secure" in login_cookie  # (so the client does not send it back over http)
    answer = client.post(
        "/console/login",
        data={"username": "ada", "password": PASSWORD, "csrf_token": form_token(page.text)},
        headers={"Cookie": login_cookie.split(";")[0]},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    session = [v for k, v in answer.headers.multi_items() if k == "set-cookie"]
    assert any(v.startswith("engine_session=") and "Secure" in v for v in session)


def test_anonymous_oidc_requests_cost_no_audit_record_and_one_discovery(
    make_console: AppMaker,  # noqa: F811
    store: SqlMessageStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[str] = []
    real = Oidc._json

    async def counting(self: Oidc, url: str, what: str) -> dict[str, Any]:
        asked.append(what)
        return await real(self, url, what)

    monkeypatch.setattr(Oidc, "_json", counting)
    client = TestClient(make_console(oidc_issuer="https://127.0.0.1:9", oidc_client_id="engine"))
    before = len(store.audit_entries(limit=1000))
    for _ in range(5):
        answer = client.get("/console/login/oidc/callback?state=x&code=y")
        assert answer.status_code == 401 and "began elsewhere" in answer.text
        answer = client.get("/console/login/oidc", follow_redirects=False)
        assert answer.status_code == 401 and "did not answer" in answer.text
    assert len(store.audit_entries(limit=1000)) == before
    assert asked == ["discovery"]  # a failed discovery is remembered for a while
