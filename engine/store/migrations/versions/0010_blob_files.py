"""Where a document's bytes are: ``document_blobs.stored`` is ``db`` (in ``document_chunks``, as
before; PostgreSQL) or ``file`` (a file named by the SHA-256 beside the SQLite database:
engine/store/blobs.py). Bytes stored before this revision stay where they are.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("document_blobs") as batch:
        batch.add_column(sa.Column("stored", sa.String(8), nullable=False, server_default="db"))


def downgrade() -> None:
    with op.batch_alter_table("document_blobs") as batch:
        batch.drop_column("stored")
