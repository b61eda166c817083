"""Alembic migrations of the message store (run by ``SqlMessageStore.migrate``)."""
