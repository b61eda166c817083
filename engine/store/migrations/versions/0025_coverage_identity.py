"""A Coverage mapped from IN1 is its member ID for its beneficiary at its payer (not the member ID
alone): the index rows of the old identity move to the new one.

Before, the fullUrl of a Coverage was derived from its member ID (IN1-36) only, so a dependent
sent with the subscriber's member ID (common: the family shares one) took over the subscriber's
row in ``fhir_resources``, and the subscriber's appointments were no longer checked with that
payer. The built-in mapping files now say ``identity_within: {beneficiary, payor}``
(engine/mappings/entries.py): the fullUrl is derived from the member ID and the fullUrls of the
beneficiary and the payer, each when it has a business identity of its own (a payer without an
ID is named after the message that carried it, and is left out). Each row still under the old
fullUrl (derived from its first identifier, the way the mapper did) is given the new one, from
the beneficiary and payer its body refers to: a reference counts when the row it names has a
fullUrl derived from one of its identifiers. A row that never had the old fullUrl (a Coverage read
from an EHR by a pull source, or a self-pay one) is left as it is. What the old identity merged
cannot be split here: the subscriber's Coverage comes back with their next message. The
eligibility history keeps the Coverage fullUrl it was checked under (nothing reads it back).

It assumes the built-in ``identity_within``: a site whose own messages/ADT.yaml or DFT.yaml
leaves it out keeps the old identity, and its rows are indexed again under it by the next
message (docs/MAPPINGS.md).

The derivation is written out here, not imported, so this revision does the same whatever the
mapper later becomes. Rows are read 500 at a time.

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
_BATCH = 500


def _url(rtype: str, key: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_NS, f'{rtype}|{key}')}"


def _key(ident: Any) -> str | None:
    if not isinstance(ident, dict) or not ident.get("value"):
        return None
    return f"{ident.get('system', '')}|{ident['value']}"


def _reference(value: Any) -> str:
    if isinstance(value, list):
        value = value[0] if value else None
    ref = value.get("reference") if isinstance(value, dict) else None
    return ref if isinstance(ref, str) else ""


def _has_identity(full_url: str, body: dict[str, Any]) -> bool:
    """Whether the resource's fullUrl was derived from one of its identifiers (not from the
    control ID of the message that made it)."""
    rtype = str(body.get("resourceType", ""))
    ids = body.get("identifier")
    return any(
        _url(rtype, key) == full_url
        for key in (_key(i) for i in (ids if isinstance(ids, list) else []))
        if key is not None
    )


def new_url(full_url: str, body: dict[str, Any], stable: set[str]) -> str | None:
    """The Coverage's fullUrl under the new identity, or None when ``full_url`` is not the one
    the old identity gave it; ``stable``: the referenced fullUrls with a business identity."""
    ids = body.get("identifier")
    key = _key(ids[0]) if isinstance(ids, list) and ids else None
    if key is None or _url("Coverage", key) != full_url:
        return None
    scope = [
        ("beneficiary", _reference(body.get("beneficiary"))),
        ("payor", _reference(body.get("payor"))),
    ]
    return _url("Coverage", key + "".join(f"|{p}={r if r in stable else ''}" for p, r in scope))


def _bodies(conn: sa.Connection, urls: set[str]) -> dict[str, dict[str, Any]]:
    if not urls:
        return {}
    rows = conn.execute(
        sa.select(_resources.c.full_url, _resources.c.body).where(_resources.c.full_url.in_(urls))
    )
    out = {}
    for url, body in rows:
        try:
            out[url] = json.loads(body)
        except ValueError:
            continue
    return out


def upgrade() -> None:
    conn = op.get_bind()
    last = 0
    while True:
        rows = conn.execute(
            sa.select(_resources.c.id, _resources.c.full_url, _resources.c.body)
            .where(_resources.c.resource_type == "Coverage", _resources.c.id > last)
            .order_by(_resources.c.id)
            .limit(_BATCH)
        ).all()
        if not rows:
            return
        last = rows[-1].id
        coverages = []
        for rid, full_url, body in rows:
            try:
                parsed = json.loads(body)
            except ValueError:
                continue
            if isinstance(parsed, dict):
                coverages.append((rid, full_url, parsed))
        named = {
            ref
            for _rid, _old, c in coverages
            for ref in (_reference(c.get("beneficiary")), _reference(c.get("payor")))
            if ref
        }
        stable = {u for u, b in _bodies(conn, named).items() if _has_identity(u, b)}
        for rid, full_url, parsed in coverages:
            target = new_url(full_url, parsed, stable)
            if target is not None and target != full_url:
                conn.execute(
                    sa.update(_resources).where(_resources.c.id == rid).values(full_url=target)
                )


def downgrade() -> None:
    """Nothing to undo that the old identity could use: under it the rows merge again as the
    next messages come."""
