"""Alembic environment: the engine passes its own connection (no alembic.ini, no URL here).

The upgrade runs under the migration lock (:func:`engine.store.db.hold_migration_lock`): of
several nodes starting together, one applies the steps and the others find them applied.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from alembic import context
from alembic.runtime.migration import MigrationContext, MigrationInfo

from engine.store.db import hold_migration_lock
from engine.store.tables import metadata

connection = context.config.attributes["connection"]
#: the revision of each step once it is done, in order: when one fails, the next is the one
#: that failed, which the error names (engine/store/repository.py, ``migrate``)
applied: list[str] = context.config.attributes.setdefault("applied", [])


def _done(
    ctx: MigrationContext, step: MigrationInfo, heads: Collection[Any], run_args: Mapping[str, Any]
) -> None:
    if step.up_revision_id is not None:
        applied.append(step.up_revision_id)


hold_migration_lock(connection)  # until the upgrade's transaction ends
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=True,
    on_version_apply=_done,
)
with context.begin_transaction():
    context.run_migrations()
