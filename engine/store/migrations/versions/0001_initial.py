"""The message store: messages and deliveries.

Written out column by column (not from engine/store/tables.py) so that later revisions, which change
tables.py, still find the schema this revision made.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "messages",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("received_at", _TS, nullable=False),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("peer", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("raw", sa.LargeBinary, nullable=False),
        sa.Column("control_id", sa.String(199)),
        sa.Column("message_type", sa.String(16)),
        sa.Column("trigger", sa.String(16)),
        sa.Column("structure", sa.String(16)),
        sa.Column("sending_application", sa.String(227)),
        sa.Column("sending_facility", sa.String(227)),
        sa.Column("dedupe_key", sa.String(700)),
        sa.Column("replay_of", _ID),
        sa.Column("patient_key", sa.String(255)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("claimed_by", sa.String(64)),
        sa.Column("claimed_at", _TS),
        sa.Column("updated_at", _TS, nullable=False),
    )
    op.create_index("ix_messages_state", "messages", ["state", "id"])
    op.create_index("ux_messages_dedupe", "messages", ["dedupe_key"], unique=True)
    op.create_table(
        "deliveries",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column(
            "message_id", _ID, sa.ForeignKey("messages.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("destination", sa.String(128), nullable=False),
        sa.Column("route", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("content_type", sa.String(64), nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("patient_key", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", _TS, nullable=False),
        sa.Column("claimed_until", _TS),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("delivered_at", _TS),
    )
    op.create_index("ix_deliveries_due", "deliveries", ["state", "next_attempt_at"])
    op.create_index(
        "ix_deliveries_order", "deliveries", ["destination", "patient_key", "state", "id"]
    )
    op.create_index("ix_deliveries_message", "deliveries", ["message_id"])


def downgrade() -> None:
    op.drop_table("deliveries")
    op.drop_table("messages")
