"""The message store: SQLAlchemy tables and the repository that holds every query."""

from engine.store.repository import (
    DestinationBacklog,
    MessageRecord,
    SqlMessageStore,
    create_db_engine,
)

__all__ = ["DestinationBacklog", "MessageRecord", "SqlMessageStore", "create_db_engine"]
