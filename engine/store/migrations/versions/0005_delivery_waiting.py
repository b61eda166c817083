"""A delivery queued behind an earlier one for the same patient and destination is ``waiting``.

Only the head of each (destination, patient) queue is ``pending`` and claimable, so claiming due
deliveries is an index range scan that stops at its limit, however deep the queue; before, every
pending delivery was checked against the ones before it on each claim.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "UPDATE deliveries SET state = 'waiting' WHERE state = 'pending' AND EXISTS ("
        "SELECT 1 FROM deliveries AS earlier WHERE earlier.destination = deliveries.destination"
        " AND earlier.patient_key = deliveries.patient_key AND earlier.state = 'pending'"
        " AND earlier.id < deliveries.id)"
    )


def downgrade() -> None:
    op.execute("UPDATE deliveries SET state = 'pending' WHERE state = 'waiting'")
