"""``engine users`` as an admin uses it from a script (no terminal): passwords from stdin or a
file, never echoed; short ones refused; every change audited with the OS user. On SQLite and
PostgreSQL, and on a fresh home where the engine never ran."""

from __future__ import annotations

import getpass
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.store import SqlMessageStore, create_db_engine

runner = CliRunner()
PASSWORD = "correct horse battery"


@pytest.fixture
def cli(store: SqlMessageStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Run ``engine ...`` on the test's store; returns (exit code, stdout, stderr)."""
    monkeypatch.setenv("ENGINE_DATABASE_URL", store.db_engine.url.render_as_string(False))
    monkeypatch.setenv("ENGINE_HOME", str(tmp_path))

    def run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
        result = runner.invoke(app, list(args), input=stdin)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result.exit_code, result.stdout, result.stderr

    return run


def test_add_from_stdin_then_log_in(cli, store: SqlMessageStore) -> None:  # type: ignore[no-untyped-def]
    code, out, err = cli(
        "users", "add", "Ada", "--role", "admin", "--role", "viewer", "--password-stdin",
        stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert code == 0, err
    assert out == "added user ada (admin, viewer)\n"
    assert PASSWORD not in out + err
    assert store.check_login("ada", PASSWORD, None).reason == "ok"
    [entry] = [e for e in store.audit_entries() if e.action == "user-add"]
    assert (entry.actor, entry.source) == (getpass.getuser(), "cli")
    assert PASSWORD not in (entry.detail or "")


def test_add_from_a_file(cli, store: SqlMessageStore, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\r\nsecond line ignored\n")
    code, _, err = cli(
        "users", "add", "bea", "--role", "front-desk", "--password-file", str(secret)
    )
    assert code == 0, err
    assert store.check_login("bea", PASSWORD, None).reason == "ok"


def test_refusals(cli, store: SqlMessageStore, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, _, err = cli(
        "users", "add", "ada", "--role", "admin", "--password-stdin", stdin="short\n"
    )
    assert code == 1 and "at least 12 characters" in err and "short" not in err.split(";")[1]
    code, _, err = cli("users", "add", "ada", "--role", "boss", "--password-stdin", stdin=PASSWORD)
    assert code == 2 and "'boss' is not a role" in err
    code, _, err = cli("users", "add", "ada", "--password-stdin", stdin=PASSWORD)
    assert code == 2 and "Missing option" in err
    code, _, err = cli("users", "add", "ada", "--role", "admin")  # CliRunner's stdin: no TTY
    assert code == 2 and "no terminal to ask on" in err
    code, _, err = cli("users", "add", "a b", "--role", "admin", "--password-stdin", stdin=PASSWORD)
    assert code == 1 and "a user name is 1-64 characters" in err
    missing = str(tmp_path / "nope")
    code, _, err = cli("users", "add", "ada", "--role", "admin", "--password-file", missing)
    assert code == 2 and "cannot read" in err
    assert store.list_users() == []
    assert cli("users", "add", "ada", "--role", "admin", "--password-stdin", stdin=PASSWORD)[0] == 0
    code, _, err = cli("users", "add", "ada", "--role", "admin", "--password-stdin", stdin=PASSWORD)
    assert code == 1 and "user ada exists already" in err
    assert cli("users", "disable", "nobody")[0:3:2] == (1, "no user nobody\n")


def test_passwd_roles_disable_enable_and_list(cli, store: SqlMessageStore) -> None:  # type: ignore[no-untyped-def]
    cli("users", "add", "ada", "--role", "viewer", "--password-stdin", stdin=PASSWORD)
    new = "an even better password"
    assert cli("users", "passwd", "ada", "--password-stdin", stdin=new)[0] == 0
    assert store.check_login("ada", new, None).reason == "ok"
    assert cli("users", "roles", "ada", "--role", "integration")[1] == "roles of ada: integration\n"
    assert cli("users", "disable", "ada")[1] == "user ada disabled\n"
    code, out, _ = cli("users", "list", "--json")
    row = json.loads(out)
    assert code == 0 and (row["roles"], row["state"]) == ("integration", "disabled")
    assert row["last_login"]  # logged in above
    assert cli("users", "enable", "ada")[0] == 0
    code, out, _ = cli("users", "list")
    assert code == 0 and "ada" in out and "active" in out
    actions = [e.action for e in reversed(store.audit_entries(limit=50))]
    assert [a for a in actions if a.startswith("user-")] == [
        "user-add",
        "user-change",
        "user-change",
        "user-disable",
        "user-change",
    ]


def test_add_on_a_home_where_the_engine_never_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ENGINE_DATABASE_URL", raising=False)
    monkeypatch.setenv("ENGINE_HOME", str(tmp_path))
    result = runner.invoke(
        app, ["users", "add", "ada", "--role", "admin", "--password-stdin"], input=PASSWORD
    )
    assert result.exit_code == 0, result.stderr
    db = create_db_engine(f"sqlite:///{tmp_path / 'var' / 'engine.db'}")
    try:
        assert [u.username for u in SqlMessageStore(db).list_users()] == ["ada"]
    finally:
        db.dispose()


def test_a_database_locked_elsewhere_is_not_taken_for_one_without_engine_tables(
    tmp_path: Path,
) -> None:
    """Whether a SQLite file holds the engine's tables is read without writing; a file locked
    by another process gives no answer, and is not taken for a new database (``engine users``
    would then migrate it while its nodes run): the store's own connection says what is
    wrong."""
    import contextlib
    import sqlite3

    from engine.cli_support import _has_schema

    path = tmp_path / "engine.db"
    store = SqlMessageStore(create_db_engine(f"sqlite:///{path}"))
    store.migrate()
    store.db_engine.dispose()  # (its pooled connection would keep the lock below from us)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("PRAGMA locking_mode=EXCLUSIVE")
        other.execute("BEGIN EXCLUSIVE")  # held: no reader gets in
        assert _has_schema(store.db_engine) is True
        other.execute("ROLLBACK")
    (tmp_path / "other.db").write_bytes(b"not a database file, not even close" * 10)
    assert _has_schema(create_db_engine(f"sqlite:///{tmp_path / 'other.db'}")) is False
