"""Each delivery attempt that did not deliver (issue 13: the message page shows "every delivery
with its attempts and errors"): when, its outcome, the HTTP status or error class, the error
(PHI-free, cut to 300 characters) and how long it took.

Only failures are written (and a success after failures), in the same transaction as the
delivery's outcome; a first-time success, by far the usual case, writes no row: the delivery row
(``attempts``, ``delivered_at``) says it. Rows go with their delivery (ON DELETE CASCADE), so
retention purges them with it.

Revision ID: 0020
Revises: 0017 (0018 and 0019 were kept for another change made at the same time, which needed
only 0017)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0017"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "delivery_attempts",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column(
            "delivery_id",
            _ID,
            sa.ForeignKey("deliveries.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("error_class", sa.String(64), nullable=True),
        sa.Column("error", sa.String(300), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
    )
    op.create_index(
        "ix_delivery_attempts_delivery", "delivery_attempts", ["delivery_id", "attempt"]
    )


def downgrade() -> None:
    op.drop_index("ix_delivery_attempts_delivery", "delivery_attempts")
    op.drop_table("delivery_attempts")
