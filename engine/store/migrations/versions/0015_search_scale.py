"""Indexes for search at scale (issue 13): a bare MRN's search and the dashboard's queue and
dead letters, on a million messages.

``ix_messages_mrn``: the MRN part of the patient key (what follows the first ``|`` of
``AUTHORITY|MRN``) and the id. A search by a bare MRN — the front desk knows the MRN, not the
assigning authority — matched ``patient_key LIKE '%|MRN'``, which no index can serve (a leading
wildcard): it read all of ``ix_messages_patient``, 0.6–1.1 s on 1,000,000 messages (the console
bench). With this index it reads that MRN's entries only, newest first.

PostgreSQL indexes the expression itself (``substr(patient_key, strpos(patient_key, '|') + 1)``).
SQLite indexes a virtual generated column ``patient_mrn`` of the same expression (``instr`` for
``strpos``; computed when read, nothing stored in the rows), not the expression: SQLAlchemy
cannot reflect an expression index on SQLite and warns, which would break every later batch
migration that reflects ``messages`` (any table with a foreign key to it).
:class:`engine.store.tables.patient_mrn` spells the query's side to match: the column on SQLite,
the expression on PostgreSQL.

``ix_deliveries_state_dest (state, destination, message_id, created_at)``: the dashboard counts
the deliveries queued (pending, waiting) and dead (not marked handled) per destination, with the
oldest queued one's age. ``ix_deliveries_due (state, next_attempt_at)`` found them, then read
each one's row for its destination, message and time: 220-280 ms for the dashboard's
destination figures on 1,000,000 messages (5,000 dead, 12,000 queued), 30-70 ms from this index
alone. One more index on deliveries, written as ``ix_deliveries_due`` is (insert, state change).

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_deliveries_state_dest",
        "deliveries",
        ["state", "destination", "message_id", "created_at"],
    )
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "ALTER TABLE messages ADD COLUMN patient_mrn VARCHAR(255) GENERATED ALWAYS AS "
            "(substr(patient_key, instr(patient_key, '|') + 1)) VIRTUAL"
        )
        op.execute("CREATE INDEX ix_messages_mrn ON messages (patient_mrn, id)")
    else:
        op.execute(
            "CREATE INDEX ix_messages_mrn ON messages "
            "(substr(patient_key, strpos(patient_key, '|') + 1), id)"
        )


def downgrade() -> None:
    op.drop_index("ix_deliveries_state_dest", "deliveries")
    op.drop_index("ix_messages_mrn", "messages")
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE messages DROP COLUMN patient_mrn")
