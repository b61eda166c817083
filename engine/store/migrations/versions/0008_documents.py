"""Documents (issue 12): metadata, and the bytes content-addressed in chunks.

- ``documents``: one row per accepted document (patient, type, date, sender, practice, ...),
  linked to the ``messages`` row of kind ``document`` that routes it; ``dedupe_key`` (sha256 and
  patient) makes a second upload of the same bytes for the same patient the first one.
- ``document_blobs`` / ``document_chunks``: the bytes, once per SHA-256, in chunks of at most
  1 MiB.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "documents",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "message_id",
            _ID,
            sa.ForeignKey("messages.id", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("media_type", sa.String(64), nullable=False),
        sa.Column("patient_mrn", sa.String(64), nullable=False),
        sa.Column("patient_authority", sa.String(64), nullable=False, server_default=""),
        sa.Column("document_type", sa.String(64), nullable=False),
        sa.Column("document_date", sa.String(10), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("sender", sa.String(255), nullable=False),
        sa.Column("practice", sa.String(64), nullable=True),
        sa.Column("department", sa.String(64), nullable=True),
        sa.Column("appointment", sa.String(128), nullable=True),
        sa.Column("encounter", sa.String(128), nullable=True),
        sa.Column("author", sa.String(255), nullable=True),
        sa.Column("title", sa.String(255), nullable=True),
        sa.Column("file_name", sa.String(255), nullable=True),
        sa.Column("unique_number", sa.String(199), nullable=True),
        sa.Column("dedupe_key", sa.String(200), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ux_documents_dedupe", "documents", ["dedupe_key"], unique=True)
    op.create_index("ix_documents_sha256", "documents", ["sha256"])
    op.create_index("ix_documents_patient", "documents", ["patient_authority", "patient_mrn", "id"])
    op.create_index("ix_documents_message", "documents", ["message_id"])
    op.create_table(
        "document_blobs",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("chunks", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "document_chunks",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("seq", sa.Integer(), primary_key=True),
        sa.Column("data", sa.LargeBinary(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("document_chunks")
    op.drop_table("document_blobs")
    op.drop_index("ix_documents_message", "documents")
    op.drop_index("ix_documents_patient", "documents")
    op.drop_index("ix_documents_sha256", "documents")
    op.drop_index("ux_documents_dedupe", "documents")
    op.drop_table("documents")
