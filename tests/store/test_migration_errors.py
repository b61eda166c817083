"""A schema migration that fails says what failed, through the entry points users meet (the
start of ``engine serve``; the CLI's commands, which never migrate, name a schema older than
theirs): a step the database refuses names its revision and the database's reason, not "cannot
connect"; a database a newer engine migrated says so and what to do, not "internal error
(CommandError)". On SQLite and PostgreSQL."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from engine.errors import ConfigError, EngineError
from engine.settings import load_settings
from engine.store import SqlMessageStore, create_db_engine
from tests.conftest import fresh_schema


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """An empty database's URL, which the CLI's commands are pointed at too."""
    monkeypatch.setenv("ENGINE_HOME", str(tmp_path))
    monkeypatch.setenv("ENGINE_TIMEZONE", "UTC")
    if request.param == "sqlite":
        found = f"sqlite:///{tmp_path / 'engine.db'}"
        monkeypatch.setenv("ENGINE_DATABASE_URL", found)
        yield found
        return
    with fresh_schema("migerr") as found:
        monkeypatch.setenv("ENGINE_DATABASE_URL", found)
        yield found


def _at(url: str, revision: str, *statements: str) -> None:
    """The database migrated to ``revision``, then ``statements`` run on it."""
    db = create_db_engine(url)
    try:
        SqlMessageStore(db).migrate(revision)
        with db.begin() as conn:
            for statement in statements:
                conn.execute(text(statement))
    finally:
        db.dispose()


def _open_database() -> None:
    from engine.startup import open_database

    db_engine, _ = open_database(load_settings())
    db_engine.dispose()


def _cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str]:
    """``engine ...`` as a user runs it (main: errors as one line): exit code, stderr."""
    from engine.cli import main

    monkeypatch.setattr(sys, "argv", ["engine", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    return int(exited.value.code or 0), capsys.readouterr().err


# 0027 adds messages.digest: a column already there makes the database refuse that step (as a
# unique index on duplicated rows, a table of another owner or a full disk would)
REFUSED = "ALTER TABLE messages ADD COLUMN digest VARCHAR(64)"


@pytest.mark.parametrize("start", ["0026", "0025"])  # 0027 the first step, or after 0026
def test_a_step_the_database_refuses_names_its_revision_not_the_connection(
    url: str, start: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _at(url, start, REFUSED)
    with pytest.raises(EngineError) as raised:
        _open_database()
    said = str(raised.value)
    assert said.startswith("database schema migration to 0027 failed: "), said
    assert "digest" in said and "cannot connect" not in said, said
    assert "\n" not in said

    # a command does not migrate (the nodes running may be older): it names the schema's age
    code, err = _cli(monkeypatch, capsys, "messages", "list")
    assert code == 1 and "Traceback" not in err, err
    [line] = err.strip().splitlines()
    assert line.startswith(f"error: the database's schema is at revision {start}, older"), line


def test_a_database_a_newer_engine_migrated_says_so(
    url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # an upgrade rolled back, or one node still on the older version: Alembic cannot find the
    # database's revision among this engine's
    _at(url, "head", "UPDATE alembic_version SET version_num = '0999'")
    with pytest.raises(ConfigError) as raised:
        _open_database()
    said = str(raised.value)
    assert re.fullmatch(
        r"the database's schema \(revision 0999\) is newer than this engine knows \(its newest "
        r"is \d{4}\): run the newer engine, or restore a backup taken before the upgrade",
        said,
    ), said

    code, err = _cli(monkeypatch, capsys, "messages", "list")
    assert code == 1 and "Traceback" not in err, err
    assert err.strip().splitlines() == [f"error: {said}"]


def test_a_database_that_cannot_be_opened_is_still_a_connection_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENGINE_HOME", str(tmp_path))
    monkeypatch.setenv("ENGINE_DATABASE_URL", f"sqlite:///{tmp_path / 'engine.db'}")
    (tmp_path / "engine.db").mkdir()  # a folder where the file should be: cannot be opened
    with pytest.raises(ConfigError, match="ENGINE_DATABASE_URL: cannot connect to the SQLite"):
        _open_database()


@pytest.mark.postgres
def test_the_reason_carries_no_values_from_rows() -> None:
    """PostgreSQL names the duplicated key of a unique index in its DETAIL, and the value a
    conversion refused after a colon: neither is in the reason given."""
    from engine.store.repository import _short_reason

    with fresh_schema("migerr") as found:
        db = create_db_engine(found)
        try:
            reasons = []
            for statements in (
                [
                    "CREATE TABLE t (x text)",
                    "INSERT INTO t VALUES ('MRN-4411'), ('MRN-4411')",
                    "CREATE UNIQUE INDEX ux_t ON t (x)",
                ],
                [
                    "CREATE TABLE t (x text)",
                    "INSERT INTO t VALUES ('MRN-4411')",
                    "SELECT x::int FROM t",
                ],
            ):
                with pytest.raises(DBAPIError) as raised, db.begin() as conn:
                    for statement in statements:
                        conn.execute(text(statement))
                reasons.append(_short_reason(raised.value))
        finally:
            db.dispose()
    assert reasons == [
        'could not create unique index "ux_t"',
        "invalid input syntax for type integer",
    ]
