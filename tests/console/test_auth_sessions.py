"""Logging in and out of the console over HTTP (the app on a real store, SQLite and PostgreSQL):
the form's own CSRF, one answer for every refusal, lock-out, no open redirect, a new session id
at each login, idle and absolute expiry, logout, CSRF on state-changing requests."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from sqlalchemy import select

from engine.api.app import create_app
from engine.api.auth_settings import AuthSettings
from engine.api.tokens import mint_dev_token
from engine.console.auth import ConsoleUserDep, CsrfDep
from engine.console.pages_auth import REFUSED
from engine.metrics import EngineMetrics
from engine.settings import Settings
from engine.store import SqlMessageStore, Who
from engine.store.tables import console_sessions, console_users
from engine.store.users import hash_password
from tests.api.conftest import TestClient
from tests.api.fakes import FakeHealth, FakeIngest

PASSWORD = "correct horse battery"
ADMIN = Who("tester", "cli")


def whoami_router() -> APIRouter:
    """A page and a form post standing in for the console's pages."""
    router = APIRouter()

    @router.get("/console/_whoami")
    async def whoami(user: ConsoleUserDep) -> dict[str, Any]:
        return {"user": user.username, "roles": sorted(r.value for r in user.roles)}

    @router.post("/console/_poke")
    async def poke(user: CsrfDep) -> dict[str, str]:
        return {"poked": user.username}

    return router


AppMaker = Callable[..., FastAPI]


@pytest.fixture
def make_console(store: SqlMessageStore, tmp_path: Path) -> AppMaker:
    def build(**overrides: Any) -> FastAPI:
        settings = Settings(var_dir=tmp_path, **overrides)
        metrics = EngineMetrics()
        app = create_app(
            settings,
            ingest=FakeIngest(metrics),
            messages=store,
            health=FakeHealth(),
            metrics=metrics,
            auth=AuthSettings(environment="development", dev_secret_file=tmp_path / "dev"),
        )
        app.include_router(whoami_router())
        return app

    return build


@pytest.fixture
def ada(store: SqlMessageStore) -> str:
    store.add_user("ada", ["admin"], ADMIN, password_hash=hash_password(PASSWORD))
    return "ada"


def form_token(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "no csrf_token in the page"
    return found[1]


def log_in(
    client: TestClient, username: str, password: str, next_path: str = ""
) -> tuple[int, str]:
    page = client.get("/console/login")
    assert page.status_code == 200
    answer = client.post(
        "/console/login",
        data={
            "username": username,
            "password": password,
            "csrf_token": form_token(page.text),
            "next": next_path,
        },
        follow_redirects=False,
    )
    return answer.status_code, answer.headers.get("location", answer.text)


def actions(store: SqlMessageStore) -> list[tuple[str, str, str]]:
    return [(e.action, e.actor, e.outcome) for e in reversed(store.audit_entries(limit=100))]


def test_a_stranger_is_sent_to_the_login_page_and_json_gets_401(make_console: AppMaker) -> None:
    client = TestClient(make_console())
    answer = client.get("/console/_whoami?x=1", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/console/login?next=%2Fconsole%2F_whoami%3Fx%3D1"
    answer = client.get("/console/_whoami", headers={"Accept": "application/json"})
    assert answer.status_code == 401


def test_logging_in_sets_a_signed_httponly_cookie_and_goes_to_next(
    make_console: AppMaker, ada: str, store: SqlMessageStore
) -> None:
    client = TestClient(make_console())
    status, location = log_in(client, "Ada", PASSWORD, "/console/_whoami")
    assert (status, location) == (303, "/console/_whoami")
    cookie = next(c for c in client.cookies.jar if c.name == "engine_session")
    assert cookie.path == "/" and not cookie.secure
    assert cookie.has_nonstandard_attr("HttpOnly")
    me = client.get("/console/_whoami")
    assert me.json() == {"user": "ada", "roles": ["admin"]}
    # only a hash of the id is stored: the cookie's value names no row
    with store.db_engine.connect() as conn:
        hashes = [row.id_hash for row in conn.execute(select(console_sessions.c.id_hash))]
    assert len(hashes) == 1 and hashes[0] not in cookie.value
    assert ("login", "ada", "ok") in actions(store)


def test_set_cookie_attributes(make_console: AppMaker, ada: str) -> None:
    client = TestClient(make_console())
    page = client.get("/console/login")
    assert "SameSite=lax" in page.headers["set-cookie"]
    answer = client.post(
        "/console/login",
        data={"username": "ada", "password": PASSWORD, "csrf_token": form_token(page.text)},
        follow_redirects=False,
    )
    session = [v for k, v in answer.headers.multi_items() if k == "set-cookie"][0]
    assert session.startswith("engine_session=")
    for attribute in ("HttpOnly", "Path=/", "SameSite=lax"):
        assert attribute in session
    assert "Secure" not in session  # plain HTTP here; under TLS it is (test_auth_tls)
    assert answer.headers["location"] == "/console/"


def test_every_refusal_reads_the_same(
    make_console: AppMaker, ada: str, store: SqlMessageStore
) -> None:
    client = TestClient(make_console())
    wrong = client.post(
        "/console/login",
        data={
            "username": "ada",
            "password": "wrong password!",
            "csrf_token": form_token(client.get("/console/login").text),
        },
    )
    unknown = client.post(
        "/console/login",
        data={
            "username": "nobody",
            "password": "wrong password!",
            "csrf_token": form_token(client.get("/console/login").text),
        },
    )
    assert wrong.status_code == unknown.status_code == 401
    assert REFUSED in wrong.text and REFUSED in unknown.text
    assert "engine_session" not in client.cookies
    failed = [a for a in actions(store) if a[0] == "login-failed"]
    assert failed == [("login-failed", "ada", "refused"), ("login-failed", "nobody", "refused")]


def test_the_login_form_needs_its_own_csrf_token(make_console: AppMaker, ada: str) -> None:
    client = TestClient(make_console())
    client.get("/console/login")
    answer = client.post(
        "/console/login",
        data={"username": "ada", "password": PASSWORD, "csrf_token": "forged"},
        follow_redirects=False,
    )
    assert answer.status_code == 403
    assert "engine_session" not in client.cookies
    # nor does a token work without the cookie that signs it (another browser's form)
    token = form_token(client.get("/console/login").text)
    stranger = TestClient(make_console())
    answer = stranger.post(
        "/console/login",
        data={"username": "ada", "password": PASSWORD, "csrf_token": token},
        follow_redirects=False,
    )
    assert answer.status_code == 403


def test_repeated_failures_lock_the_account_even_for_the_right_password(
    make_console: AppMaker, ada: str, store: SqlMessageStore
) -> None:
    client = TestClient(make_console(console_max_failed_logins=3, console_lockout_minutes=4 / 60))
    for _ in range(3):
        assert log_in(client, "ada", "not the password")[0] == 401
    status, text = log_in(client, "ada", PASSWORD)
    assert status == 401 and REFUSED in text
    user = store.get_user("ada")
    assert user is not None and user.locked_until is not None
    details = [e.detail for e in store.audit_entries(limit=20) if e.action == "login-failed"]
    assert any("locked after 3 failures" in (d or "") for d in details)
    assert details[0] == "locked"
    with store.db_engine.begin() as conn:  # the lock-out's 4 s gone by
        conn.execute(
            console_users.update()
            .where(console_users.c.username == "ada")
            .values(locked_until=user.locked_until - timedelta(seconds=4.1))
        )
    assert log_in(client, "ada", PASSWORD) == (303, "/console/")


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example/",
        "//evil.example/x",
        "/\\evil.example",
        "javascript:alert(1)",
        "/console/\nSet-Cookie: x=1",
        "console/",
    ],
)
def test_next_is_only_ever_a_local_path(make_console: AppMaker, ada: str, target: str) -> None:
    client = TestClient(make_console())
    assert log_in(client, "ada", PASSWORD, target) == (303, "/console/")


def test_a_login_gets_a_new_session_id_and_ends_the_old_one(
    make_console: AppMaker, ada: str
) -> None:
    client = TestClient(make_console())
    log_in(client, "ada", PASSWORD)
    first = client.cookies["engine_session"]
    log_in(client, "ada", PASSWORD)
    second = client.cookies["engine_session"]
    assert first != second
    replay = TestClient(make_console(), cookies={"engine_session": first})
    assert replay.get("/console/_whoami", follow_redirects=False).status_code == 303
    assert client.get("/console/_whoami").json()["user"] == "ada"


def test_logout_needs_the_csrf_token_and_ends_the_session(
    make_console: AppMaker, ada: str, store: SqlMessageStore
) -> None:
    client = TestClient(make_console())
    log_in(client, "ada", PASSWORD)
    cookie = client.cookies["engine_session"]
    assert client.post("/console/logout", follow_redirects=False).status_code == 403
    page = client.get("/console/login")  # any page with the session's token: the form's is not
    forged = client.post("/console/logout", data={"csrf_token": form_token(page.text)})
    assert forged.status_code == 403
    token = _session_token(client)
    answer = client.post("/console/logout", data={"csrf_token": token}, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/console/login"
    again = TestClient(make_console(), cookies={"engine_session": cookie})
    assert again.get("/console/_whoami", follow_redirects=False).status_code == 303
    assert ("logout", "ada", "ok") in actions(store)


def _session_token(client: TestClient) -> str:
    """The session's CSRF token, as a page shows it (the users page's forms)."""
    page = client.get("/console/users")
    assert page.status_code == 200, page.text
    return form_token(page.text)


def test_a_state_changing_request_needs_the_session_token(make_console: AppMaker, ada: str) -> None:
    client = TestClient(make_console())
    log_in(client, "ada", PASSWORD)
    assert client.post("/console/_poke").status_code == 403
    assert client.post("/console/_poke", data={"csrf_token": "nope"}).status_code == 403
    token = _session_token(client)
    assert client.post("/console/_poke", data={"csrf_token": token}).json() == {"poked": "ada"}
    assert client.post("/console/_poke", headers={"X-CSRF-Token": token}).status_code == 200
    big = client.post("/console/_poke", data={"csrf_token": token, "x": "y" * 70_000})
    assert big.status_code == 413


def age_sessions(store: SqlMessageStore, *, seen: float = 0.0, expires: float = 0.0) -> None:
    """Move every session's idle clock ``seen`` seconds and its end ``expires`` seconds into the
    past, as if that much time had gone by (a test that slept instead raced a loaded machine's
    clock: a 2-second idle limit could pass between logging in and the first request)."""
    with store.db_engine.begin() as conn:
        for row in conn.execute(select(console_sessions)).all():
            conn.execute(
                console_sessions.update()
                .where(console_sessions.c.id_hash == row.id_hash)
                .values(
                    last_seen_at=row.last_seen_at - timedelta(seconds=seen),
                    expires_at=row.expires_at - timedelta(seconds=expires),
                )
            )


def whoami(client: TestClient) -> int:
    return client.get("/console/_whoami", follow_redirects=False).status_code


def test_an_idle_session_ends_and_is_audited(
    make_console: AppMaker, ada: str, store: SqlMessageStore
) -> None:
    client = TestClient(make_console(console_idle_minutes=1.0))
    log_in(client, "ada", PASSWORD)
    assert whoami(client) == 200
    age_sessions(store, seen=50)
    assert whoami(client) == 200  # idle for 50 s of the 60 allowed: still open, clock restarted
    age_sessions(store, seen=50)
    assert whoami(client) == 200
    age_sessions(store, seen=61)
    answer = client.get("/console/_whoami", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/console/login?next=")
    assert 'engine_session=""' in answer.headers["set-cookie"]
    expired = [e for e in store.audit_entries(limit=20) if e.action == "session-expired"]
    assert [(e.actor, e.detail) for e in expired] == [("ada", "idle for 1 min")]
    assert whoami(client) == 303


def test_a_session_ends_at_its_lifetime_however_busy(
    make_console: AppMaker, ada: str, store: SqlMessageStore
) -> None:
    client = TestClient(make_console(console_session_hours=1.0))
    log_in(client, "ada", PASSWORD)
    for _ in range(4):
        assert whoami(client) == 200
    # 30 seconds of its hour left, and in use (one second left raced a loaded machine: the
    # login and four requests took more than that once, on PostgreSQL under the full suite)
    age_sessions(store, expires=3570)
    assert whoami(client) == 200
    age_sessions(store, expires=60)  # its hour ended half a minute ago, busy or not
    assert whoami(client) == 303
    expired = [e for e in store.audit_entries(limit=20) if e.action == "session-expired"]
    assert [(e.actor, e.detail) for e in expired] == [("ada", "lifetime of 1 h reached")]


def test_a_forged_cookie_is_refused_and_cleared(make_console: AppMaker, ada: str) -> None:
    client = TestClient(make_console())
    log_in(client, "ada", PASSWORD)
    value = client.cookies["engine_session"]
    forged = TestClient(make_console(), cookies={"engine_session": "x" + value})
    answer = forged.get("/console/_whoami", follow_redirects=False)
    assert answer.status_code == 303 and 'engine_session=""' in answer.headers["set-cookie"]


def test_disabling_a_user_ends_their_sessions_and_refuses_their_login(
    make_console: AppMaker, ada: str, store: SqlMessageStore
) -> None:
    client = TestClient(make_console())
    log_in(client, "ada", PASSWORD)
    store.set_disabled("ada", True, ADMIN)
    assert client.get("/console/_whoami", follow_redirects=False).status_code == 303
    assert log_in(client, "ada", PASSWORD)[0] == 401
    store.set_disabled("ada", False, ADMIN)
    assert log_in(client, "ada", PASSWORD)[0] == 303


def test_roles_changed_apply_to_an_open_session(
    make_console: AppMaker, ada: str, store: SqlMessageStore
) -> None:
    client = TestClient(make_console())
    log_in(client, "ada", PASSWORD)
    store.set_roles("ada", ["viewer", "front-desk"], ADMIN)
    assert client.get("/console/_whoami").json()["roles"] == ["front-desk", "viewer"]


def test_the_signing_key_is_a_private_file_made_once(tmp_path: Path) -> None:
    import stat

    from engine.console.sessions import console_secret

    settings = Settings(var_dir=tmp_path / "var")
    key = console_secret(settings)
    path = tmp_path / "var" / "console-secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(key) == 64 and console_secret(settings) == key
    shared = tmp_path / "shared-secret"
    shared.write_text("k" * 40 + "\n")
    assert console_secret(Settings(var_dir=tmp_path, console_secret_file=shared)) == b"k" * 40
    short = tmp_path / "short-secret"
    short.write_text("tiny")
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match="fewer than 32 bytes"):
        console_secret(Settings(var_dir=tmp_path, console_secret_file=short))


def test_a_user_without_the_role_gets_403_and_a_json_client_a_json_body(
    make_console: AppMaker, store: SqlMessageStore
) -> None:
    """A JSON client (``Accept: application/json``, as for the 401 above) that is logged in
    without the role an endpoint needs gets 403 with ``{"detail": "requires the X role"}``:
    FastAPI's own answer to the ``HTTPException`` of ``sessions.forbidden``, whether the page
    takes ``require_console`` (messages, users) or checks the role itself (audit, alerts). A
    browser gets 403 too, as a page of the console (engine/console/refused.py), not the login
    page."""
    store.add_user("fay", ["front-desk"], ADMIN, password_hash=hash_password(PASSWORD))
    client = TestClient(make_console())
    assert log_in(client, "fay", PASSWORD)[0] == 303
    for path, role in (
        ("/console/messages", "viewer"),
        ("/console/users", "admin"),
        ("/console/audit", "admin"),
        ("/console/alerts", "viewer"),
        ("/console/routes", "viewer"),
        ("/console/dashboard/live", "viewer"),
        ("/console/", "viewer"),
    ):
        answer = client.get(path, headers={"Accept": "application/json"})
        assert answer.status_code == 403, path
        assert answer.headers["content-type"] == "application/json", path
        assert answer.json() == {"detail": f"requires the {role} role"}, path
        browser = client.get(path, headers={"Accept": "text/html"}, follow_redirects=False)
        if path == "/console/":  # where a login lands: a browser goes to a page it may open
            assert browser.status_code == 303, path
            assert browser.headers["location"] == "/console/documents", path
            continue
        assert browser.status_code == 403, path  # refused, not sent to the login page
        assert browser.headers["content-type"].startswith("text/html"), path
        assert f"This page needs the <strong>{role}</strong> role" in browser.text, path
        assert "fay</strong>, with the role <strong>front-desk</strong>." in browser.text, path
        # the page is the logged-in user's: the menu of the pages they may open, and Log out
        assert '<a href="/console/documents">Documents</a>' in browser.text, path
        assert '<button type="submit">Log out</button>' in browser.text, path
    # logging in lands on that page, not on a 403
    client.cookies.clear()
    status, location = log_in(client, "fay", PASSWORD)[:2]
    assert (status, location) == (303, "/console/")
    landing = client.get("/console/", headers={"Accept": "text/html"})
    assert landing.status_code == 200 and str(landing.url).endswith("/console/documents")
    assert '<button type="submit">Log out</button>' in landing.text
    assert client.get("/console/_whoami").json() == {"user": "fay", "roles": ["front-desk"]}


def test_the_403_page_names_the_role_needed_and_held_and_links_what_the_user_may_open(
    make_console: AppMaker, store: SqlMessageStore, tmp_path: Path
) -> None:
    """The page is the console's layout (navigation, log-out form, no inline script under the
    CSP) and says which role the page needs, which roles the user holds, and links the pages
    the user may open; a browser's ``Accept`` (HTML and ``*/*``) and a form post get it, the
    API under ``/api`` keeps its JSON."""
    store.add_user(
        "gil", ["front-desk", "integration"], ADMIN, password_hash=hash_password(PASSWORD)
    )
    client = TestClient(make_console())
    assert log_in(client, "gil", PASSWORD)[0] == 303
    browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    for accept in (browser, "*/*"):
        page = client.get("/console/audit", headers={"Accept": accept})
        assert page.status_code == 403
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        html = page.text
        assert "<title>Not allowed · engine</title>" in html
        assert "This page needs the <strong>admin</strong> role." in html
        held = "with the roles <strong>front-desk, integration</strong>"
        assert f"logged in as <strong>gil</strong>, {held}" in html
        allowed = re.findall(r'<li><a href="([^"]+)">([^<]+)</a></li>', html)
        assert allowed == [
            ("/console/", "Dashboard"),
            ("/console/routes", "Routes"),
            ("/console/workbench", "Workbench"),
            ("/console/documents", "Documents"),
            ("/console/worklist", "Worklist"),
            ("/console/alerts", "Alerts"),
        ]
        assert 'action="/console/logout"' in html and form_token(html)
        assert "<script>" not in html and "onclick" not in html
        assert "default-src" in page.headers["content-security-policy"]
    # a form post of an admin's action: the page too, the refusal audited as before
    token = form_token(client.get("/console/workbench").text)
    posted = client.post("/console/routes/reload", data={"csrf_token": token})
    assert posted.status_code == 403
    assert "This action needs the <strong>admin</strong> role." in posted.text
    assert ("reload", "gil", "refused") in actions(store)
    # a JSON client still gets JSON, a viewer's page needs viewer
    answer = client.get("/console/reports", headers={"Accept": "application/json"})
    assert (answer.status_code, answer.json()) == (403, {"detail": "requires the viewer role"})
    # the API is not the console: its 403 stays JSON, whatever the Accept header
    auth = AuthSettings(environment="development", dev_secret_file=tmp_path / "dev")
    viewer = mint_dev_token(auth, role="viewer", subject="gil")
    api = client.get(
        "/api/audit", headers={"Accept": "text/html", "Authorization": f"Bearer {viewer}"}
    )
    assert (api.status_code, api.json()) == (403, {"detail": "requires the admin role"})
