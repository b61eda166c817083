"""A document's SHA-1 (base64), computed once as its bytes are stored.

FHIR R4's Attachment.hash is the base64 SHA-1 of the data. The store hashes the bytes with
SHA-256 as it writes them (the content address) and now with SHA-1 beside it, so mapping a
document to a DocumentReference never reads its bytes back again. Blobs stored before this
revision have none: the processor computes theirs from the chunks, as before.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("document_blobs") as batch:
        batch.add_column(sa.Column("sha1", sa.String(28), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("document_blobs") as batch:
        batch.drop_column("sha1")
