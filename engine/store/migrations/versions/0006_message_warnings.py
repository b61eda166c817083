"""Messages keep the warnings of their mapping: what they carried that no mapping took.

A message is never mapped with less than it carried without a word: the lines are stored with
the message (``engine messages show``, ``GET /api/messages/{id}``).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("warnings", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("warnings")
