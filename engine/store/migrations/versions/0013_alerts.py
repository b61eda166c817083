"""Alerts raised and their notices (issue 13, alerts): ``alerts`` holds each rule's alert (per
subject: a destination, a payer) with its state and the notice it still owes; ``alert_events``
the history of raises, recoveries and notices shown on the console.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("rule", sa.String(64), primary_key=True),
        sa.Column("subject", sa.String(255), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("raised_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recovered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("notice", sa.String(16), nullable=True),
        sa.Column("sent_to", sa.Text, nullable=False, server_default=""),
        sa.Column("notified_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sending_by", sa.String(64), nullable=True),
        sa.Column("sending_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_alerts_state", "alerts", ["state", "raised_at"])
    op.create_table(
        "alert_events",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text, nullable=True),
    )
    op.create_index("ix_alert_events_at", "alert_events", ["at", "id"])


def downgrade() -> None:
    op.drop_index("ix_alert_events_at", table_name="alert_events")
    op.drop_table("alert_events")
    op.drop_index("ix_alerts_state", table_name="alerts")
    op.drop_table("alerts")
