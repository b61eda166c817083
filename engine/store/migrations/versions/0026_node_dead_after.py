"""Each node's takeover limit (``ENGINE_NODE_DEAD_AFTER_S``) in its row: a node judges whether its
own claims are still surely its own by its own limit, so a node taking over must not use a
shorter one. The takeover and the resumption of job runs wait for the longest limit any node
has registered (``engine/store/nodes.py``). NULL: a node started before this revision (the
default, 10 s, was then everyone's).

Revision ID: 0026
Revises: 0025
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("nodes", sa.Column("dead_after_s", sa.Float(), nullable=True))


def downgrade() -> None:
    op.drop_column("nodes", "dead_after_s")
