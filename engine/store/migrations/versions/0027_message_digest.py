"""A large HL7v2 message's content digest (engine/store/resends.py, ``content_digest``) in its
row: a resend of it is compared with the digest stored, not with the original's bytes read back
and hashed again (a 100 MB MDM: 0.4 s of CPU, under SQLite's writers' lock every ACK waits
on). NULL: a smaller message (hashed when compared: a few microseconds), another kind, or one
stored before this revision.

Revision ID: 0027
Revises: 0026
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("digest", sa.String(64), nullable=True))


def downgrade() -> None:
    op.drop_column("messages", "digest")
