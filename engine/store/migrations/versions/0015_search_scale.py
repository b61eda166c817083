"""Indexes for search at scale (issue 13): a bare MRN's search on a million messages.

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
    op.drop_index("ix_messages_mrn", "messages")
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE messages DROP COLUMN patient_mrn")
