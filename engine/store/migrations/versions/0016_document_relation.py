"""An MDM addendum's or replacement's parent document (TXA-13) and how it relates to it
(``appends``, ``replaces``: FHIR DocumentReference.relatesTo.code), kept on the document so the
relation reaches the EHR instead of only a note on the MDM.

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("documents") as batch:
        batch.add_column(sa.Column("parent_number", sa.String(199), nullable=True))
        batch.add_column(sa.Column("relation", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("documents") as batch:
        batch.drop_column("relation")
        batch.drop_column("parent_number")
