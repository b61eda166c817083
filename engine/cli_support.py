"""What the CLI's commands share: opening the store, showing a database URL safely."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["open_store", "safe_url"]


def open_store() -> Any:
    """The message store of the configured database, migrated to the current schema.

    The CLI reads the engine's store; it never makes one. A SQLite file that does not exist is
    an error naming it (an empty database would only answer "no messages"), and so is a database
    that cannot be reached (its host and port, never the password).
    """
    from sqlalchemy.exc import SQLAlchemyError

    from engine.errors import ConfigError
    from engine.settings import load_settings
    from engine.store import SqlMessageStore, create_db_engine
    from engine.store.db import connection_problem

    url = load_settings().resolved_database_url()
    database = _sqlite_file(url)
    if database is not None and not database.is_file():
        raise ConfigError(
            f"no engine database at {database}: start the engine once with `engine serve`, "
            "or set ENGINE_HOME / ENGINE_DATABASE_URL"
        )
    db_engine = create_db_engine(url)
    store = SqlMessageStore(db_engine)
    try:
        store.migrate()
    except SQLAlchemyError as exc:
        raise connection_problem(db_engine, exc) from exc
    return store


def _sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL (None for other databases and in-memory SQLite)."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # a bad URL is create_db_engine's to word
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def safe_url(url: str) -> str:
    """A database URL without its password, for display."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
