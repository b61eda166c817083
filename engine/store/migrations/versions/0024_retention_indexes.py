"""Two indexes for retention (issue 14). ``messages.replay_of``: retention asks, for each replayed
original in a batch, whether a copy of it is still unfinished (``engine/store/messages.py``,
``purge_range``). Without an index that question read the whole table: PostgreSQL planned a
hashed subplan over every message not yet delivered, costly enough to be JIT-compiled, and a
batch of a 200,000-message bench took up to 1.3 s against its 100 ms budget. The question
now probes this index once per replayed original in the batch (its query also asks that the
copy be newer than the original, which PostgreSQL cannot hash), and the batch runs with JIT off.
Partial: only copies carry ``replay_of``, so the index is as small as the replays.

And ``ix_messages_refusals``, the refused uploads that stay: a batch that purges a document asks
which refusals still keep its bytes, and read every message in error to find them (at 10 million
messages, 100,000 rows: a third of the batches took 300-580 ms, and the purge managed 41
messages a second).

Revision ID: 0024
Revises: 0023
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_messages_replay_of",
        "messages",
        ["replay_of"],
        postgresql_where=sa.text("replay_of IS NOT NULL"),
        sqlite_where=sa.text("replay_of IS NOT NULL"),
    )
    refusals = "kind = 'document' AND state IN ('error', 'replayed')"
    op.create_index(
        "ix_messages_refusals",
        "messages",
        ["id"],
        postgresql_where=sa.text(refusals),
        sqlite_where=sa.text(refusals),
    )


def downgrade() -> None:
    op.drop_index("ix_messages_refusals", table_name="messages")
    op.drop_index("ix_messages_replay_of", table_name="messages")
