"""The reports' rollup (issue 13): each closed day's figures, kept (engine/store/rollups.py).

``report_rollups``   one row per report and day of the practice: the figures as JSON, and the
                     time zone they were cut in
``report_changes``   a late change to a day that may already be rolled up, written by the
                     triggers below in the writer's own transaction; the reports drop the
                     rollups it touches before they read any
``report_rollup_epoch``  one row; its generation moves each time changes are taken, so a rollup
                     computed before them is never written after them

The triggers note only what can change a closed day, and only when it is old enough that its
day may be closed (an hour after a day ends, engine/store/rollups.py): an Appointment inserted
or changed (start, status, patient, type) whose start has passed; a DFT message that becomes
refused or replayed (or stops being one) more than 30 minutes after it was received; a message
whose patient key changes that late (the new patients of its day and every later day); an
eligibility check inserted or changed for a service day up to today (UTC: any zone's closed
day). A change notes its instant (``at``: the reports cut it into their zone's day) or, for a
check, its service day (``day``). Deletes (retention) note nothing: a purge must not change a
report.

Revision ID: 0023
Revises: 0022
"""

from __future__ import annotations

from typing import NamedTuple

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


class _Trigger(NamedTuple):
    name: str
    table: str
    event: str  # INSERT, or UPDATE OF columns
    when: str
    #: INSERT ... SELECT statements into report_changes, in {placeholders}
    body: tuple[str, ...]


#: the dialects' spellings of the placeholders in the triggers' text
_SQLITE = {
    "now": "datetime('now')",
    "half_hour_ago": "datetime('now', '-30 minutes')",
    "today": "date('now')",
    "least": "min",
    "true": "1",
    "false": "0",
}
_POSTGRESQL = {
    "now": "now()",
    "half_hour_ago": "(now() - interval '30 minutes')",
    "today": "(now() AT TIME ZONE 'UTC')::date",
    "least": "LEAST",
    "true": "true",
    "false": "false",
}


def _ne(dialect: str, a: str, b: str) -> str:
    return f"{a} IS NOT {b}" if dialect == "sqlite" else f"{a} IS DISTINCT FROM {b}"


def _mark(report: str, at: str, onward: str, where: str, column: str = "at") -> str:
    return (
        f"INSERT INTO report_changes (report, {column}, onward) "
        f"SELECT '{report}', {at}, {onward} WHERE {where}"
    )


def _triggers(dialect: str) -> list[_Trigger]:
    def ne(a: str, b: str) -> str:
        return _ne(dialect, a, b)

    appointment_changed = " OR ".join(
        ne(f"OLD.{c}", f"NEW.{c}") for c in ("resource_type", "start", "status", "patient_url")
    )
    excluded = "IN ('error', 'replayed')"
    dft_changed = (
        "(OLD.message_type = 'DFT' OR NEW.message_type = 'DFT') AND ("
        f"{ne(f'(OLD.state {excluded})', f'(NEW.state {excluded})')}"
        f" OR {ne('OLD.message_type', 'NEW.message_type')}"
        f" OR {ne('OLD.received_at', 'NEW.received_at')})"
    )
    patient_changed = (
        f"{ne('OLD.patient_key', 'NEW.patient_key')} OR {ne('OLD.received_at', 'NEW.received_at')}"
    )
    check_changed = " OR ".join(
        ne(f"OLD.{c}", f"NEW.{c}")
        for c in (
            "service_date",
            "status",
            "payer_id",
            "payer_name",
            "appointment_url",
            "patient_url",
        )
    )
    return [
        _Trigger(
            "report_appointment_added",
            "fhir_resources",
            "INSERT",
            "NEW.resource_type = 'Appointment' AND NEW.start < {now}",
            (_mark("appointments", "NEW.start", "{false}", "1 = 1"),),
        ),
        _Trigger(
            "report_appointment_changed",
            "fhir_resources",
            "UPDATE OF resource_type, start, status, patient_url",
            "(OLD.resource_type = 'Appointment' OR NEW.resource_type = 'Appointment')"
            " AND (OLD.start < {now} OR NEW.start < {now})"
            f" AND ({appointment_changed})",
            (
                _mark("appointments", "OLD.start", "{false}", "OLD.start IS NOT NULL"),
                _mark(
                    "appointments",
                    "NEW.start",
                    "{false}",
                    f"NEW.start IS NOT NULL AND ({ne('OLD.start', 'NEW.start')})",
                ),
            ),
        ),
        _Trigger(
            "report_message_changed",
            "messages",
            "UPDATE OF state, patient_key, message_type, received_at",
            "{least}(OLD.received_at, NEW.received_at) < {half_hour_ago}"
            f" AND (({dft_changed}) OR {patient_changed})",
            (
                _mark("charges", "OLD.received_at", "{false}", f"({dft_changed})"),
                _mark(
                    "charges",
                    "NEW.received_at",
                    "{false}",
                    f"({dft_changed}) AND ({ne('OLD.received_at', 'NEW.received_at')})",
                ),
                _mark(
                    "new-patients",
                    "{least}(OLD.received_at, NEW.received_at)",
                    "{true}",
                    f"({patient_changed})",
                ),
            ),
        ),
        _Trigger(
            "report_eligibility_added",
            "eligibility_checks",
            "INSERT",
            "NEW.service_date <= {today}",
            (_mark("eligibility", "NEW.service_date", "{false}", "1 = 1", "day"),),
        ),
        _Trigger(
            "report_eligibility_changed",
            "eligibility_checks",
            "UPDATE OF service_date, status, payer_id, payer_name, appointment_url, patient_url",
            "(OLD.service_date <= {today} OR NEW.service_date <= {today})"
            f" AND ({check_changed})",
            (
                _mark("eligibility", "OLD.service_date", "{false}", "1 = 1", "day"),
                _mark(
                    "eligibility",
                    "NEW.service_date",
                    "{false}",
                    ne("OLD.service_date", "NEW.service_date"),
                    "day",
                ),
            ),
        ),
    ]


def _create_trigger(dialect: str, t: _Trigger) -> list[str]:
    words = _SQLITE if dialect == "sqlite" else _POSTGRESQL
    when = t.when.format(**words)
    body = [s.format(**words) for s in t.body]
    if dialect == "sqlite":
        statements = "".join(f"  {s};\n" for s in body)
        return [
            f"CREATE TRIGGER {t.name} AFTER {t.event} ON {t.table} FOR EACH ROW\n"
            f"WHEN {when}\nBEGIN\n{statements}END"
        ]
    statements = "".join(f"  {s};\n" for s in body)
    return [
        f"CREATE OR REPLACE FUNCTION {t.name}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
        f"BEGIN\n{statements}  RETURN NULL;\nEND\n$$",
        f"CREATE TRIGGER {t.name} AFTER {t.event} ON {t.table} FOR EACH ROW\n"
        f"WHEN ({when}) EXECUTE FUNCTION {t.name}()",
    ]


def upgrade() -> None:
    op.create_table(
        "report_rollups",
        sa.Column("report", sa.String(24), primary_key=True),
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("zone", sa.String(64), nullable=False),
        sa.Column("figures", sa.Text, nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "report_changes",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("report", sa.String(24), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("day", sa.Date, nullable=True),
        sa.Column("onward", sa.Boolean, nullable=False),
    )
    epoch = op.create_table(
        "report_rollup_epoch",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("generation", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(epoch, [{"id": 1, "generation": 0}])
    dialect = op.get_bind().dialect.name
    for trigger in _triggers(dialect):
        for statement in _create_trigger(dialect, trigger):
            op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for trigger in _triggers(dialect):
        if dialect == "sqlite":
            op.execute(f"DROP TRIGGER IF EXISTS {trigger.name}")
        else:
            op.execute(f"DROP TRIGGER IF EXISTS {trigger.name} ON {trigger.table}")
            op.execute(f"DROP FUNCTION IF EXISTS {trigger.name}()")
    op.drop_table("report_rollup_epoch")
    op.drop_table("report_changes")
    op.drop_table("report_rollups")
