"""Many nodes on one database (issue 14): what a scheduled run has done, item by item, so a run
interrupted on a node that died is finished by the next leader without doing an item twice
(``job_run_items``, written in the transaction of the item's result); and the configuration's
generation, bumped by a reload on any node and followed by every other (``config_generation``,
one row), with what each node runs (``config_applied``).

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "job_run_items",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("run_at", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("item", sa.String(64), primary_key=True),
        sa.Column("result_id", _ID, nullable=True),
        sa.Column("node", sa.String(64), nullable=False),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "config_generation",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("generation", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("node", sa.String(64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "config_applied",
        sa.Column("node", sa.String(64), primary_key=True),
        sa.Column("generation", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text, nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("config_applied")
    op.drop_table("config_generation")
    op.drop_table("job_run_items")
