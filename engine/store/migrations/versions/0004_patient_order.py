"""Messages carry their patient from receipt, so processing keeps each patient's order.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_messages_patient", "messages", ["patient_key", "state", "id"])


def downgrade() -> None:
    op.drop_index("ix_messages_patient", "messages")
