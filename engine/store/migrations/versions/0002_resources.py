"""The FHIR resources the engine has mapped, by business identity (the eligibility job reads them).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "fhir_resources",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("full_url", sa.String(128), nullable=False),
        sa.Column("patient_url", sa.String(128)),
        sa.Column("start", _TS),
        sa.Column("status", sa.String(32)),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("message_id", _ID),
        sa.Column("updated_at", _TS, nullable=False),
    )
    op.create_index("ux_fhir_resources_url", "fhir_resources", ["full_url"], unique=True)
    op.create_index("ix_fhir_resources_start", "fhir_resources", ["resource_type", "start"])
    op.create_index("ix_fhir_resources_patient", "fhir_resources", ["resource_type", "patient_url"])


def downgrade() -> None:
    op.drop_table("fhir_resources")
