"""The audit trail's hash chain (issue 13): append-only and tamper-evident.

- ``audit_log.seq``, ``prev_hash``, ``hash``: each record's place in the chain, the previous
  record's hash and its own (SHA-256 over the previous hash and every field:
  engine/audit/chain.py); ``seq`` unique, so two appends can never take the same place.
- ``audit_chain``: one row, the chain's head (newest seq and hash: deleting the newest records is
  found) and its anchor (what the first record kept after retention chains to).
- Indexes for the trail's filters (actor, action, patient), newest first by seq.

The records already there are chained in the order they were written (by id).

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from engine.audit.chain import FIELDS, GENESIS, record_hash

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

_log = sa.table(
    "audit_log",
    sa.column("id", _ID),
    sa.column("at", sa.DateTime(timezone=True)),
    sa.column("actor", sa.String()),
    sa.column("source", sa.String()),
    sa.column("action", sa.String()),
    sa.column("message_id", _ID),
    sa.column("patient_key", sa.String()),
    sa.column("detail", sa.Text()),
    sa.column("outcome", sa.String()),
    sa.column("peer", sa.String()),
    sa.column("seq", sa.BigInteger()),
    sa.column("prev_hash", sa.String()),
    sa.column("hash", sa.String()),
)
_chain = sa.table(
    "audit_chain",
    sa.column("id", sa.Integer()),
    sa.column("head_seq", sa.BigInteger()),
    sa.column("head_hash", sa.String()),
    sa.column("anchor_seq", sa.BigInteger()),
    sa.column("anchor_hash", sa.String()),
)


def upgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("prev_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("hash", sa.String(64), nullable=True))
    op.create_table(
        "audit_chain",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("head_seq", sa.BigInteger(), nullable=False),
        sa.Column("head_hash", sa.String(64), nullable=False),
        sa.Column("anchor_seq", sa.BigInteger(), nullable=False),
        sa.Column("anchor_hash", sa.String(64), nullable=False),
        sa.Column("pruned_at", sa.DateTime(timezone=True), nullable=True),
    )
    seq, prev = _chain_existing()
    op.bulk_insert(
        _chain,
        [{"id": 1, "head_seq": seq, "head_hash": prev, "anchor_seq": 0, "anchor_hash": GENESIS}],
    )
    with op.batch_alter_table("audit_log") as batch:
        batch.alter_column("seq", existing_type=sa.BigInteger(), nullable=False)
        batch.alter_column("prev_hash", existing_type=sa.String(64), nullable=False)
        batch.alter_column("hash", existing_type=sa.String(64), nullable=False)
    op.create_index("ux_audit_log_seq", "audit_log", ["seq"], unique=True)
    op.create_index("ix_audit_log_actor", "audit_log", ["actor", "seq"])
    op.create_index("ix_audit_log_action", "audit_log", ["action", "seq"])
    op.create_index("ix_audit_log_patient", "audit_log", ["patient_key", "seq"])


def _chain_existing() -> tuple[int, str]:
    """Chain the records already written, oldest first; the head's seq and hash."""
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(*(_log.c[name] for name in FIELDS if name != "seq")).order_by(_log.c.id)
    ).all()
    seq, prev = 0, GENESIS
    update = (
        sa.update(_log)
        .where(_log.c.id == sa.bindparam("rid"))
        .values(seq=sa.bindparam("s"), prev_hash=sa.bindparam("p"), hash=sa.bindparam("h"))
    )
    for row in rows:
        seq += 1
        own = record_hash(prev, {**row._asdict(), "seq": seq})
        conn.execute(update, {"rid": row.id, "s": seq, "p": prev, "h": own})
        prev = own
    return seq, prev


def downgrade() -> None:
    op.drop_index("ix_audit_log_patient", "audit_log")
    op.drop_index("ix_audit_log_action", "audit_log")
    op.drop_index("ix_audit_log_actor", "audit_log")
    op.drop_index("ux_audit_log_seq", "audit_log")
    op.drop_table("audit_chain")
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("hash")
        batch.drop_column("prev_hash")
        batch.drop_column("seq")
