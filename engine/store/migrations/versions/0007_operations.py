"""Operations (issue 11): who holds a claim, resends, the audit trail, singleton job runs.

- ``nodes``: each running worker or receiver process (``host:pid:random``) with a heartbeat;
  a claim whose owner's heartbeat is older than the takeover limit is taken back at once,
  instead of waiting for the claim's own time-out (a kill -9 no longer stalls a backlog).
- ``deliveries.claimed_by``: the owner of a delivery's lease (the messages had ``claimed_by``).
- ``deliveries.resend_of``: a delivery made by ``engine messages resend``, linked to the failed
  or dead delivery it replaces (which becomes ``resent``).
- ``audit_log``: replays, resends and payload views, with the user (token subject or OS user).
- ``job_runs``: one row per scheduled job and fire time, inserted by the one process that runs
  it (the primary key decides; the other processes skip that run).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(64), nullable=True))
        batch.add_column(sa.Column("resend_of", _ID, nullable=True))
    op.create_table(
        "audit_log",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("message_id", _ID, nullable=True),
        sa.Column("patient_key", sa.String(255), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("peer", sa.String(255), nullable=True),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at", "id"])
    op.create_index("ix_audit_log_message", "audit_log", ["message_id"])
    op.create_table(
        "job_runs",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("run_at", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("node", sa.String(64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(200), nullable=True),
    )
    op.create_index("ix_messages_received", "messages", ["received_at", "id"])
    op.create_index("ix_messages_control", "messages", ["control_id"])


def downgrade() -> None:
    op.drop_index("ix_messages_control", "messages")
    op.drop_index("ix_messages_received", "messages")
    op.drop_table("job_runs")
    op.drop_index("ix_audit_log_message", "audit_log")
    op.drop_index("ix_audit_log_at", "audit_log")
    op.drop_table("audit_log")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("resend_of")
        batch.drop_column("claimed_by")
    op.drop_table("nodes")
