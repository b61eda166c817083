"""The audit trail keyed (issue 13): ``audit_log.key_id``, the id of the audit key whose
HMAC-SHA256 a record's hash is (engine/audit/key.py, engine/audit/chain.py).

The records already written keep NULL: they were hashed with plain SHA-256 and still verify as
the chain's oldest part. Nothing is rehashed here (the migration has no key); the engine writes
an ``audit-key`` record, keyed, the first time it opens the chain with its key.

Revision ID: 0022
Revises: 0020
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("key_id", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("key_id")
