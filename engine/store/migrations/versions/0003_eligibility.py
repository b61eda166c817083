"""Eligibility checks: one row per check, kept as history and attached to the appointment.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "eligibility_checks",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("appointment_url", sa.String(128)),
        sa.Column("appointment_start", _TS),
        sa.Column("patient_url", sa.String(128), nullable=False),
        sa.Column("coverage_url", sa.String(128)),
        sa.Column("payer_id", sa.String(80), nullable=False),
        sa.Column("payer_name", sa.String(200)),
        sa.Column("service_date", sa.Date, nullable=False),
        sa.Column("checked_at", _TS, nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("copay", sa.String(32)),
        sa.Column("deductible", sa.String(32)),
        sa.Column("deductible_remaining", sa.String(32)),
        sa.Column("plan", sa.String(200)),
        sa.Column("reason", sa.Text),
        sa.Column("trace", sa.String(80)),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("response", sa.Text),
    )
    op.create_index("ix_eligibility_day", "eligibility_checks", ["service_date", "id"])
    op.create_index(
        "ix_eligibility_dedupe", "eligibility_checks", ["patient_url", "payer_id", "checked_at"]
    )


def downgrade() -> None:
    op.drop_table("eligibility_checks")
