"""What the CLI's commands share: opening the store, showing a database URL safely."""

from __future__ import annotations

from typing import Any

__all__ = ["open_store", "safe_url"]


def open_store() -> Any:
    """The message store of the configured database, migrated to the current schema."""
    from engine.settings import load_settings
    from engine.store import SqlMessageStore, create_db_engine

    settings = load_settings()
    store = SqlMessageStore(create_db_engine(settings.resolved_database_url()))
    store.migrate()
    return store


def safe_url(url: str) -> str:
    """A database URL without its password, for display."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
