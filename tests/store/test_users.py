"""The console's users and sessions in the store (SQLite and PostgreSQL): argon2id hashes
re-hashed when the parameters change, lock-out, sessions ended by disable and password change,
every change audited, the migration up and down."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from sqlalchemy import inspect, select

from engine.store import SqlMessageStore, Who, create_db_engine
from engine.store.db import utcnow
from engine.store.tables import console_users
from engine.store.users import (
    LoginPolicy,
    UserProblem,
    hash_password,
    normal_username,
    password_problem,
)

PASSWORD = "correct horse battery"
CLI = Who("root", "cli")


def audit_trail(store: SqlMessageStore) -> list[tuple[str, str, str, str | None]]:
    return [
        (e.action, e.actor, e.source, e.detail) for e in reversed(store.audit_entries(limit=100))
    ]


def test_a_user_is_stored_with_an_argon2id_hash_and_audited(store: SqlMessageStore) -> None:
    user = store.add_user("Ada", ["viewer", "admin"], CLI, password_hash=hash_password(PASSWORD))
    assert (user.username, user.roles, user.origin) == ("ada", ("admin", "viewer"), "local")
    with store.db_engine.connect() as conn:
        stored = conn.execute(select(console_users.c.password_hash)).scalar_one()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert audit_trail(store) == [
        ("user-add", "root", "cli", "user ada roles admin viewer (local)")
    ]
    with pytest.raises(UserProblem, match="exists already"):
        store.add_user("ADA", ["viewer"], CLI, password_hash=None)


def test_names_and_passwords_that_are_refused() -> None:
    for bad in ("", " ", "-ada", "a b", "a" * 65, "ada<script>"):
        with pytest.raises(UserProblem):
            normal_username(bad)
    assert normal_username(" Ada.Lovelace@x ") == "ada.lovelace@x"
    assert password_problem("short") == "a password needs at least 12 characters"
    assert password_problem("x" * 2000) is not None
    assert password_problem("twelve chars") is None


def test_login_checks_and_rehashes_old_parameters(store: SqlMessageStore) -> None:
    weak = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(PASSWORD)
    store.add_user("ada", ["admin"], CLI, password_hash=weak)
    result = store.check_login("ada", PASSWORD, "127.0.0.1:5")
    assert result.reason == "ok" and result.user is not None
    assert result.user.last_login_at is not None
    with store.db_engine.connect() as conn:
        rehashed = conn.execute(select(console_users.c.password_hash)).scalar_one()
    assert rehashed != weak and not PasswordHasher().check_needs_rehash(rehashed)
    assert store.check_login("ada", PASSWORD, None).user is not None


def test_failures_lock_then_the_lock_lifts(store: SqlMessageStore) -> None:
    store.add_user("ada", ["admin"], CLI, password_hash=hash_password(PASSWORD))
    policy = LoginPolicy(max_failed=2, lockout=timedelta(seconds=60))
    assert store.check_login("ada", "wrong password 1", None, policy).reason == "wrong password"
    assert store.check_login("ada", "wrong password 2", None, policy).reason == "wrong password"
    locked = store.get_user("ada")
    assert locked is not None and locked.locked(utcnow())
    assert store.check_login("ada", PASSWORD, None, policy).reason == "locked"
    store.set_disabled("ada", False, CLI)  # enabling lifts a lock-out
    assert store.check_login("ada", PASSWORD, None, policy).reason == "ok"
    assert store.check_login("nobody", PASSWORD, None, policy).reason == "unknown user"
    trail = [(a, actor, d) for a, actor, _, d in audit_trail(store) if a == "login-failed"]
    assert trail == [
        ("login-failed", "ada", "wrong password"),
        ("login-failed", "ada", "wrong password; locked after 2 failures"),
        ("login-failed", "ada", "locked"),
        ("login-failed", "nobody", "unknown user"),
    ]


def test_a_long_password_never_matches(store: SqlMessageStore) -> None:
    long = "x" * 1025
    store.add_user("ada", ["admin"], CLI, password_hash=hash_password("x" * 1024))
    assert store.check_login("ada", long, None).reason == "wrong password"


def test_sessions_end_on_disable_and_password_change(store: SqlMessageStore) -> None:
    user = store.add_user("ada", ["admin"], CLI, password_hash=hash_password(PASSWORD))
    life = timedelta(hours=1)
    store.create_session(user, "h1", "t1", method="password", peer=None, lifetime=life)
    store.create_session(user, "h2", "t2", method="password", peer=None, lifetime=life)
    session = store.session("h1")
    assert session is not None and (session.username, session.csrf_token) == ("ada", "t1")
    store.set_password("ada", hash_password("another password"), CLI)
    assert store.session("h1") is None and store.session("h2") is None
    store.create_session(user, "h3", "t3", method="password", peer=None, lifetime=life)
    store.set_disabled("ada", True, CLI)
    assert store.session("h3") is None
    assert store.check_login("ada", "another password", None).reason == "disabled"


def test_ending_a_session_is_audited_once(store: SqlMessageStore) -> None:
    user = store.add_user("ada", ["admin"], CLI, password_hash=None)
    store.create_session(
        user, "h1", "t1", method="oidc", peer="10.0.0.1:1", lifetime=timedelta(hours=1)
    )
    assert store.end_session("h1", action="logout", actor="ada", peer=None)
    assert not store.end_session("h1", action="logout", actor="ada", peer=None)
    actions = [(a, actor, d) for a, actor, _, d in audit_trail(store)]
    assert actions[-2:] == [("login", "ada", "by oidc"), ("logout", "ada", "logout")]


def test_sweeping_ends_idle_and_old_sessions(store: SqlMessageStore) -> None:
    user = store.add_user("ada", ["admin"], CLI, password_hash=None)
    store.create_session(user, "old", "t", method="password", peer=None, lifetime=timedelta(0))
    store.create_session(
        user, "fresh", "t", method="password", peer=None, lifetime=timedelta(hours=1)
    )
    assert store.sweep_sessions(utcnow(), timedelta(minutes=15)) == 1
    assert store.session("old") is None and store.session("fresh") is not None
    later = utcnow() + timedelta(minutes=16)
    assert store.sweep_sessions(later, timedelta(minutes=15)) == 1
    expired = [a for a in audit_trail(store) if a[0] == "session-expired"]
    assert len(expired) == 2


def test_an_identity_providers_user_cannot_take_a_local_one_over(store: SqlMessageStore) -> None:
    store.add_user("ada", ["admin"], CLI, password_hash=hash_password(PASSWORD))
    who = Who("oidc", "console")
    with pytest.raises(UserProblem, match="local user"):
        store.upsert_oidc_user("ada", ["viewer"], who)
    bea = store.upsert_oidc_user("bea", ["viewer"], who)
    assert (bea.origin, bea.roles, bea.has_password) == ("oidc", ("viewer",), False)
    again = store.upsert_oidc_user("bea", ["viewer", "front-desk"], who)
    assert again.roles == ("front-desk", "viewer") and again.id == bea.id
    assert store.check_login("bea", "", None).reason == "no password (identity provider user)"


def test_the_migration_goes_down_and_up_again(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config

    import engine.store

    db = create_db_engine(f"sqlite:///{tmp_path / 'engine.db'}")
    SqlMessageStore(db).migrate()
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(engine.store.__file__).parent / "migrations"))
    with db.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0010")
    assert "console_users" not in inspect(db).get_table_names()
    SqlMessageStore(db).migrate()
    assert {"console_users", "console_sessions"} <= set(inspect(db).get_table_names())
    db.dispose()
