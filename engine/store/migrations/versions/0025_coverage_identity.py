"""A Coverage mapped from IN1 is its member ID for its beneficiary at its payer (not the member ID
alone): the index rows of the old identity move to the new one.

Before, the fullUrl of a Coverage was derived from its member ID (IN1-36) only, so a dependent
sent with the subscriber's member ID (common: the family shares one) took over the subscriber's
row in ``fhir_resources``, and the subscriber's appointments were no longer checked with that
payer. The mapping files now say ``identity_within: {beneficiary, payor}``
(engine/mappings/entries.py): the fullUrl is derived from the member ID, the beneficiary's fullUrl
and the payer's. Each row still under the old fullUrl (derived from its first identifier, the way
the mapper did) is given the new one, from the beneficiary and payer its body refers to, and the
eligibility checks that name it follow. A row that never had the old fullUrl (a Coverage read
from an EHR by a pull source, or a self-pay one) is left as it is. What the old identity merged
cannot be split here: the subscriber's Coverage comes back with their next message.

The derivation is written out here, not imported, so this revision does the same whatever the
mapper later becomes.

Revision ID: 0025
Revises: 0024
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None

#: the mapper's namespace for fullUrls (engine/mappings/entries.py ``_NS``)
_NS = uuid.UUID("6f1c0e52-2f43-4b8e-9a57-3c1e2a3f5b10")

_resources = sa.table(
    "fhir_resources",
    sa.column("id", sa.Integer),
    sa.column("resource_type", sa.String),
    sa.column("full_url", sa.String),
    sa.column("body", sa.Text),
)
_checks = sa.table("eligibility_checks", sa.column("coverage_url", sa.String))


def _url(key: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_NS, f'Coverage|{key}')}"


def _reference(value: Any) -> str:
    if isinstance(value, list):
        value = value[0] if value else None
    ref = value.get("reference") if isinstance(value, dict) else None
    return ref if isinstance(ref, str) else ""


def new_url(full_url: str, body: dict[str, Any]) -> str | None:
    """The Coverage's fullUrl under the new identity, or None when ``full_url`` is not the one
    the old identity gave it."""
    ids = body.get("identifier")
    first = ids[0] if isinstance(ids, list) and ids else None
    if not isinstance(first, dict) or not first.get("value"):
        return None
    key = f"{first.get('system', '')}|{first['value']}"
    if _url(key) != full_url:
        return None
    beneficiary = _reference(body.get("beneficiary"))
    payor = _reference(body.get("payor"))
    return _url(f"{key}|beneficiary={beneficiary}|payor={payor}")


def upgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(_resources.c.id, _resources.c.full_url, _resources.c.body).where(
            _resources.c.resource_type == "Coverage"
        )
    ).all()
    moves = []
    for rid, full_url, body in rows:
        try:
            target = new_url(full_url, json.loads(body))
        except (ValueError, TypeError):
            continue
        if target is not None and target != full_url:
            moves.append((rid, full_url, target))
    for rid, old, new in moves:
        conn.execute(sa.update(_resources).where(_resources.c.id == rid).values(full_url=new))
        conn.execute(
            sa.update(_checks).where(_checks.c.coverage_url == old).values(coverage_url=new)
        )


def downgrade() -> None:
    """Nothing to undo that the old identity could use: under it the rows merge again as the
    next messages come."""
