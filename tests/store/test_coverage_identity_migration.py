"""Revision 0025: index rows of a Coverage under its old identity (member ID alone) move to the
fullUrl the mapper now derives (member ID, beneficiary, payer), and the eligibility checks that
name them follow; rows that never had the old identity stay as they are."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

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


def test_old_coverage_rows_take_the_new_identity(tmp_path: Path) -> None:
    db = sa.create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    _upgrade(db, "0024")
    (_, adt), *_ = demo_messages(date(2026, 11, 27))
    bundle = load_mappings().to_fhir(parse_message(adt))
    (entry,) = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "Coverage"]
    member = entry["resource"]["identifier"][0]["value"]
    old = full_url("Coverage", f"|{member}")  # how 0024's mapper named it
    assert old != entry["fullUrl"]
    now = datetime.now(UTC)
    pulled = dict(entry["resource"], id="epic-cov-1")
    with db.begin() as conn:
        conn.execute(
            sa.insert(tables.fhir_resources),
            [
                {
                    "resource_type": "Coverage",
                    "full_url": url,
                    "patient_url": entry["resource"]["beneficiary"]["reference"],
                    "body": orjson.dumps(body).decode(),
                    "updated_at": now,
                }
                for url, body in [(old, entry["resource"]), ("https://ehr/Coverage/1", pulled)]
            ],
        )
        conn.execute(
            sa.insert(tables.eligibility_checks),
            {
                "patient_url": entry["resource"]["beneficiary"]["reference"],
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
        urls = set(conn.scalars(sa.select(tables.fhir_resources.c.full_url)))
        checks = list(conn.scalars(sa.select(tables.eligibility_checks.c.coverage_url)))
    db.dispose()
    assert urls == {entry["fullUrl"], "https://ehr/Coverage/1"}
    assert checks == [entry["fullUrl"]]
