"""Revision 0025: index rows of a Coverage under its old identity (member ID alone) move to the
fullUrl the mapper now derives (member ID, beneficiary, payer: each when it has a business
identity); rows that never had the old identity stay as they are, and so does the eligibility
history."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from engine.hl7v2.codec import parse_message
from engine.mappings import load_mappings
from engine.mappings.entries import full_url
from engine.sim.demo import demo_messages
from engine.store import tables

MIGRATIONS = Path(tables.__file__).parent / "migrations"


def _upgrade(db: sa.Engine, revision: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with db.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def _indexed_as_before(raw: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The message's Coverage entry as the mapper makes it now, and the index rows of its
    Bundle as revision 0024's mapper wrote them (the Coverage under its member ID alone)."""
    bundle = load_mappings().to_fhir(parse_message(raw))
    (coverage,) = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "Coverage"]
    member = coverage["resource"]["identifier"][0]["value"]
    old = full_url("Coverage", f"|{member}")
    assert old != coverage["fullUrl"]
    rows = [
        {
            "resource_type": e["resource"]["resourceType"],
            "full_url": old if e is coverage else e["fullUrl"],
            "body": orjson.dumps(e["resource"]).decode(),
            "updated_at": datetime.now(UTC),
        }
        for e in bundle["entry"]
    ]
    return coverage, rows


def test_old_coverage_rows_take_the_new_identity(tmp_path: Path) -> None:
    db = sa.create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    _upgrade(db, "0024")
    (_, adt), *_ = demo_messages(date(2026, 11, 27))
    coverage, rows = _indexed_as_before(adt)
    # the same patient's Coverage with a payer that has no ID (named after its message)
    no_id = adt.replace(b"|DEMOPAY^^^^NIIP|", b"||").replace(b"DEMO100001", b"NOPAYID7")
    bare, bare_rows = _indexed_as_before(no_id)
    assert bare["request"]["url"].count("&") == 1  # beneficiary only
    old = rows[[r["resource_type"] for r in rows].index("Coverage")]["full_url"]
    pulled = dict(coverage["resource"], id="epic-cov-1")
    now = datetime.now(UTC)
    with db.begin() as conn:
        extra = [r for r in bare_rows if r["resource_type"] in ("Coverage", "Organization")]
        conn.execute(sa.insert(tables.fhir_resources), rows + extra)
        conn.execute(
            sa.insert(tables.fhir_resources),
            {
                "resource_type": "Coverage",
                "full_url": "https://ehr/Coverage/1",
                "body": orjson.dumps(pulled).decode(),
                "updated_at": now,
            },
        )
        conn.execute(
            sa.insert(tables.eligibility_checks),
            {
                "patient_url": coverage["resource"]["beneficiary"]["reference"],
                "coverage_url": old,
                "payer_id": "DEMOPAY",
                "service_date": date(2026, 11, 30),
                "checked_at": now,
                "status": "eligible",
                "attempts": 1,
            },
        )
    _upgrade(db, "head")
    with db.connect() as conn:
        urls = set(
            conn.scalars(
                sa.select(tables.fhir_resources.c.full_url).where(
                    tables.fhir_resources.c.resource_type == "Coverage"
                )
            )
        )
        checks = list(conn.scalars(sa.select(tables.eligibility_checks.c.coverage_url)))
    db.dispose()
    # each as the mapper names it now, whether its payer has an ID or not
    assert urls == {coverage["fullUrl"], bare["fullUrl"], "https://ehr/Coverage/1"}
    assert checks == [old]
