"""The store's identity (engine/store/identity.py): one tag for every node of one PostgreSQL
database and schema, another for any other schema, database or cluster; none on SQLite (the
engine's own tag, host and home, stays)."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from engine.store import create_db_engine
from engine.store.identity import database_tag
from tests.conftest import POSTGRES_URL


def with_search_path(url: str, schema: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}"


def tag_of(url: str) -> str | None:
    db = create_db_engine(url)
    try:
        return database_tag(db)
    finally:
        db.dispose()


def test_sqlite_names_no_tag(tmp_path: Path) -> None:
    assert tag_of(f"sqlite:///{tmp_path / 'engine.db'}") is None


@pytest.mark.postgres
def test_two_stores_on_one_database_and_schema_share_the_tag(postgres_schema_url: str) -> None:
    first, second = tag_of(postgres_schema_url), tag_of(postgres_schema_url)
    assert first is not None and len(first) == 8 and int(first, 16) >= 0
    assert second == first


@pytest.fixture
def admin() -> Iterator[Engine]:
    db = create_engine(
        make_url(POSTGRES_URL).set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT"
    )
    yield db
    db.dispose()


@pytest.mark.postgres
def test_another_schema_or_database_has_another_tag(
    postgres_schema_url: str, admin: Engine
) -> None:
    name = f"ftag_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    other_db = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    try:
        here = tag_of(postgres_schema_url)
        other_schema = tag_of(with_search_path(POSTGRES_URL, name))
        other_database = tag_of(with_search_path(other_db, "public"))
        assert None not in (here, other_schema, other_database)
        assert len({here, other_schema, other_database}) == 3
        assert tag_of(with_search_path(other_db, "public")) == other_database  # stable
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{name}" CASCADE'))
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))


@pytest.mark.postgres
def test_no_schema_of_the_search_path_exists_no_tag() -> None:
    assert tag_of(with_search_path(POSTGRES_URL, f"absent_{secrets.token_hex(4)}")) is None


@pytest.mark.postgres
def test_an_unreadable_cluster_identity_gives_no_tag_and_says_so(
    admin: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """A role that may not call pg_control_system() (a provider that revokes it): no shared tag
    (each node its own, at least once) rather than a tag that could name another database."""
    name = f"ftag_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
        conn.execute(text(f'CREATE ROLE "{name}" LOGIN'))
    in_db = make_url(POSTGRES_URL).set(database=name)
    try:
        owner = create_engine(in_db.set(drivername="postgresql+psycopg"))
        with owner.begin() as conn:
            conn.execute(text("REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC"))
        owner.dispose()
        as_role = in_db.set(username=name).render_as_string(hide_password=False)
        as_owner = in_db.render_as_string(hide_password=False)
        assert tag_of(with_search_path(as_owner, "public")) is not None  # a superuser reads it
        with caplog.at_level(logging.WARNING, logger="engine.store.identity"):
            assert tag_of(with_search_path(as_role, "public")) is None
        assert [r.getMessage() for r in caplog.records] == [
            "the PostgreSQL cluster's identity cannot be read: each node names its files with "
            "its own tag (a redelivery across nodes may write a second copy)"
        ]
        assert caplog.records[0].error == "InsufficientPrivilege"  # type: ignore[attr-defined]
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
            conn.execute(text(f'DROP ROLE "{name}"'))
