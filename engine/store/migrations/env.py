"""Alembic environment: the engine passes its own connection (no alembic.ini, no URL here).

The upgrade runs under the migration lock (:func:`engine.store.db.hold_migration_lock`): of
several nodes starting together, one applies the steps and the others find them applied.
"""

from __future__ import annotations

from alembic import context

from engine.store.db import hold_migration_lock
from engine.store.tables import metadata

connection = context.config.attributes["connection"]
hold_migration_lock(connection)  # until the upgrade's transaction ends
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
