"""The console's message actions and figures (issue 13, ops pages).

- ``message_handled``: an error or dead message an operator has acknowledged ("mark handled"):
  who, when, and a short note. A row of its own, not a column of ``messages``: marking never
  rewrites a message row (nor its indexes) and the list reads the marks of one page by key.
- ``destination_breakers``: each worker node's circuit breaker per destination, written by the
  dispatcher only when it opens or closes (engine/flow/deliver.py), so the dashboard can show a
  state that otherwise lives in the worker process's memory.
- ``ix_deliveries_created (created_at, route, destination, state)``: the dashboard's counts per
  route and destination over the last hour and day read this index alone (no table rows).

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "message_handled",
        sa.Column(
            "message_id",
            _ID,
            sa.ForeignKey("messages.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("handled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("handled_by", sa.String(255), nullable=False),
        sa.Column("note", sa.String(500), nullable=True),
    )
    op.create_table(
        "destination_breakers",
        sa.Column("destination", sa.String(128), primary_key=True),
        sa.Column("node", sa.String(64), primary_key=True),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.String(500), nullable=True),
    )
    op.create_index(
        "ix_deliveries_created", "deliveries", ["created_at", "route", "destination", "state"]
    )


def downgrade() -> None:
    op.drop_index("ix_deliveries_created", "deliveries")
    op.drop_table("destination_breakers")
    op.drop_table("message_handled")
