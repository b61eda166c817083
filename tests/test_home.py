"""One engine home (issue 11): every file the engine uses resolves against ENGINE_HOME (default:
the directory it was started in), never against whatever the current directory is later, so the
CLI finds the same store and token secret from any folder; a CLI command pointed at a database
that does not exist says so instead of creating an empty one."""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from jose import jwt

from engine.errors import ConfigError
from engine.settings import Settings, load_settings
from engine.store import SqlMessageStore, create_db_engine
from engine.store.messages import Incoming

ENGINE = [sys.executable, "-m", "engine"]
#: a schema revision before this engine's newest
OLDER = "0026"


def engine_cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    return subprocess.run(
        [*ENGINE, *args],
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_relative_paths_resolve_against_the_home_not_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("ENGINE_HOME", str(home))
    monkeypatch.setenv("ENGINE_ROUTES_DIR", "site/routes")
    monkeypatch.setenv("ENGINE_MLLP_TLS_CERT", "tls/server.crt")
    s = load_settings()
    assert s.home == home
    assert s.var_dir == home / "var"
    assert s.routes_dir == home / "site" / "routes"
    assert s.mllp_tls_cert == home / "tls" / "server.crt"
    assert s.resolved_database_url() == f"sqlite:///{home}/var/engine.db"
    # a relative SQLite path in the URL is the home's too; absolute paths and servers stay
    assert Settings(home=home, database_url="sqlite:///db/e.db").resolved_database_url() == (
        f"sqlite:///{home}/db/e.db"
    )
    assert Settings(home=home, database_url="sqlite:////srv/e.db").resolved_database_url() == (
        "sqlite:////srv/e.db"
    )
    url = "postgresql://u@db:5432/engine"
    assert Settings(home=home, database_url=url).resolved_database_url() == url


def test_home_defaults_to_the_directory_started_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ENGINE_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    monkeypatch.chdir("/")  # later changes of directory do not move anything
    assert s.home == tmp_path and s.var_dir == tmp_path / "var"


def test_a_home_that_is_not_a_folder_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENGINE_HOME", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"^ENGINE_HOME: .*missing is not a folder"):
        load_settings()


def test_token_and_messages_work_from_any_folder(tmp_path: Path) -> None:
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    # the engine's store, as `engine serve` in the home would have made it, with one message
    store = SqlMessageStore(create_db_engine(f"sqlite:///{home}/var/engine.db"))
    store.migrate()
    [stored] = store.save_batch(
        [Incoming(raw=b"MSH|^~\\&|A|B|C|D|20260101||ADT^A01|HOME-1|P|2.5.1\r", channel="mllp")]
    )
    store.db_engine.dispose()

    minted_at_home = engine_cli("token", cwd=home, env={})
    assert minted_at_home.returncode == 0, minted_at_home.stderr
    secret = (home / "var" / "dev-jwt-secret").read_bytes().strip()
    minted_elsewhere = engine_cli("token", cwd=elsewhere, env={"ENGINE_HOME": str(home)})
    assert minted_elsewhere.returncode == 0, minted_elsewhere.stderr
    claims = jwt.decode(
        minted_elsewhere.stdout.strip(), secret.decode(), algorithms=["HS256"], audience="engine"
    )
    assert claims["roles"] == ["integration"]
    assert claims["sub"] == getpass.getuser()  # the audit trail names who, not "dev"
    named = engine_cli("token", "--subject", "alice", cwd=elsewhere, env={"ENGINE_HOME": str(home)})
    alice = jwt.decode(
        named.stdout.strip(), secret.decode(), algorithms=["HS256"], audience="engine"
    )
    assert alice["sub"] == "alice"

    listed = engine_cli("messages", "list", cwd=elsewhere, env={"ENGINE_HOME": str(home)})
    assert listed.returncode == 0, listed.stderr
    assert "HOME-1" in listed.stdout or str(stored.id) in listed.stdout
    worklist = engine_cli(
        "eligibility", "list", "--json", cwd=elsewhere, env={"ENGINE_HOME": str(home)}
    )
    assert worklist.returncode == 0, worklist.stderr
    assert not (elsewhere / "var").exists()  # nothing was made in the current folder


def test_a_missing_sqlite_database_is_named_not_created(tmp_path: Path) -> None:
    proc = engine_cli("messages", "list", cwd=tmp_path, env={})
    one_line_error(proc, f"no engine database at {tmp_path}/var/engine.db", "ENGINE_HOME")
    assert not (tmp_path / "var").exists()
    proc = engine_cli("eligibility", "list", cwd=tmp_path, env={})
    one_line_error(proc, "no engine database at")
    assert not (tmp_path / "var").exists()


def test_a_database_without_the_engine_schema_is_named_not_filled(tmp_path: Path) -> None:
    """An empty file (or another application's database) is not migrated into an engine's."""
    (tmp_path / "var").mkdir()
    empty = tmp_path / "var" / "engine.db"
    empty.write_bytes(b"")
    proc = engine_cli("messages", "list", cwd=tmp_path, env={})
    one_line_error(proc, f"{empty} is not an engine database", "engine serve")
    assert empty.stat().st_size == 0


def test_an_older_schema_is_named_and_left_as_it_is(tmp_path: Path) -> None:
    """A newer CLI installed beside nodes still running the older version does not migrate
    their database under them: the command says what to do, and the schema stays."""
    from alembic.runtime.migration import MigrationContext

    (tmp_path / "var").mkdir()
    database = tmp_path / "var" / "engine.db"
    store = SqlMessageStore(create_db_engine(f"sqlite:///{database}"))
    store.migrate(OLDER)  # as the older version left it

    def revision() -> str | None:
        with store.db_engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    try:
        for command in (("messages", "list"), ("users", "list")):
            proc = engine_cli(*command, cwd=tmp_path, env={})
            one_line_error(proc, f"revision {OLDER}, older than this engine's", "engine serve")
            assert revision() == OLDER
        store.migrate()  # what `engine serve` of this version does as it starts
        proc = engine_cli("messages", "list", cwd=tmp_path, env={})
        assert proc.returncode == 0, proc.stderr
    finally:
        store.db_engine.dispose()


def test_an_unreachable_postgresql_is_named_without_its_password(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    url = f"postgresql://engine:hunter2@127.0.0.1:{port}/engine"
    proc = engine_cli("messages", "list", cwd=tmp_path, env={"ENGINE_DATABASE_URL": url})
    line = one_line_error(proc, f"127.0.0.1:{port}", "ENGINE_DATABASE_URL")
    assert "hunter2" not in line
