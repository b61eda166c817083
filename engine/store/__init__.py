"""The message store: SQLAlchemy tables and the repository that holds every query."""

from engine.store.repository import MessageRecord, SqlMessageStore, create_db_engine

__all__ = ["MessageRecord", "SqlMessageStore", "create_db_engine"]
