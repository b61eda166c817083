"""The reports' rollup (engine/store/rollups.py, migration 0023), on SQLite and PostgreSQL:
every report read through its stored days equals the same report read from every row, before
and after late changes to closed days (a no-show, a cancellation and a reschedule recorded
after the day, an appointment pulled late, a DFT replayed or refused late, a patient key
changed, an eligibility check for a past day); a second view of closed days reads no message,
appointment or check; retention's deletes leave the stored days as they were; a rollup computed
before changes were taken is not stored after them; the migration goes down and up again."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from sqlalchemy import Engine, delete, event, func, insert, select, text, update

from engine.store import IndexedResource, SqlMessageStore
from engine.store import reports as reports_module
from engine.store.index import upsert_resources
from engine.store.operator import Who
from engine.store.reports import AppointmentDay, ChargeDay, Reports, clear_kept
from engine.store.rollups import CLOSE_AFTER, Rollups
from engine.store.tables import (
    eligibility_checks,
    fhir_resources,
    messages,
    report_changes,
    report_rollups,
)

ZONE = "America/New_York"
NY = ZoneInfo(ZONE)
TODAY = datetime.now(NY).date()
FIRST, LAST = TODAY - timedelta(days=45), TODAY + timedelta(days=5)
STATUSES = ("booked", "fulfilled", "arrived", "noshow", "cancelled", "entered-in-error")
PAYERS = ("Aetna", "Cigna", "=cmd", "Humana")
VERDICTS = ("eligible", "inactive", "needs_action", "payer_unavailable")
READS_ROWS = re.compile(r"\b(messages|fhir_resources|eligibility_checks)\b", re.IGNORECASE)


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(reports_module, "KEEP_TODAY_S", 0.0)  # open days: read every time
    clear_kept()
    yield
    clear_kept()


def at(day: date, hh: int, mm: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, tzinfo=NY).astimezone(UTC)


def dft(rng: random.Random) -> bytes:
    lines = [b"MSH|^~\\&|BILL|OAK|ENGINE|HUB|20261101||DFT^P03|D1|P|2.5.1"]
    for i in range(rng.randint(0, 4)):
        kind = rng.choice(("CG", "CG", "PY", "AJ"))
        amount = f"{rng.randint(1, 50000) / 100:.2f}"
        quantity = rng.choice(("", "1", "3"))
        unit = rng.random() < 0.5
        ext, per = ("", amount) if unit else (amount, "")
        lines.append(f"FT1|{i + 1}|||20261101||{kind}|99213|||{quantity}|{ext}|{per}".encode())
    return b"\r".join(lines) + b"\r"


def add_message(
    conn: Any, when: datetime, patient: str | None, mtype: str, raw: bytes, state: str
) -> int:
    return int(
        conn.execute(
            insert(messages)
            .values(
                received_at=when,
                channel="mllp",
                peer="127.0.0.1:1",
                kind="hl7v2",
                size=len(raw),
                raw=raw,
                message_type=mtype,
                trigger="P03" if mtype == "DFT" else "A08",
                patient_key=patient,
                state=state,
                updated_at=when,
            )
            .returning(messages.c.id)
        ).scalar_one()
    )


def appointment(
    conn: Any, mid: int, n: int, start: datetime, status: str, patient: str | None
) -> None:
    body = {"resourceType": "Appointment", "status": status, "start": start.isoformat()}
    url = f"urn:uuid:appt-{n}"
    row = IndexedResource("Appointment", url, orjson.dumps(body), patient, start, status)
    upsert_resources(conn, [(mid, row)], datetime.now(UTC))


def check(store: SqlMessageStore, appt: str | None, payer: str, status: str, day: date) -> None:
    store.save_eligibility(
        {
            "appointment_url": appt,
            "patient_url": f"urn:uuid:patient-of-{appt}",
            "payer_id": payer[:5].upper(),
            "payer_name": payer,
            "service_date": day,
            "checked_at": datetime.now(UTC),
            "status": status,
        }
    )


def seed(store: SqlMessageStore) -> None:
    """Six weeks of a small practice, today and the days ahead."""
    rng = random.Random(13)
    days = (LAST - FIRST).days + 1
    with store.db_engine.begin() as conn:
        received: list[tuple[datetime, str | None, str, bytes, str]] = []
        adt = b"MSH|^~\\&|A|B|C|D|1||ADT^A08|1|P|2.5.1\r"
        for i in range(330):
            when = at(FIRST + timedelta(days=rng.randrange(days - 5)), rng.randrange(24))
            when = min(when, datetime.now(UTC) - timedelta(minutes=rng.randint(1, 90)))
            if i < 240:
                patient = rng.choice([None, *(f"OAK|P{i}" for i in range(60))])
                received.append((when, patient, "ADT", adt, "delivered"))
            else:
                state = rng.choice(("delivered", "delivered", "error", "replayed", "dead"))
                received.append((when, f"OAK|P{rng.randrange(60)}", "DFT", dft(rng), state))
        for row in sorted(received, key=lambda r: r[0]):  # ids in the order received, as ever
            add_message(conn, *row)
        for n in range(200):
            start = at(FIRST + timedelta(days=rng.randrange(days)), rng.randrange(7, 19), 30)
            patient = rng.choice([None, *(f"urn:uuid:p{i}" for i in range(50))])
            appointment(conn, n, n, start, rng.choice(STATUSES), patient)
    for _ in range(120):
        day = FIRST + timedelta(days=rng.randrange(days))
        appt = rng.choice([None, *(f"urn:uuid:appt-{i}" for i in range(40))])
        check(store, appt, rng.choice(PAYERS), rng.choice(VERDICTS), day)


def viewed(store: SqlMessageStore, first: date = FIRST, last: date = LAST) -> dict[str, Any]:
    """Every report as the console reads it (stored days, then rows)."""
    r = Reports(store.db_engine, ZONE)
    return {
        "appointments": r.appointments(first, last),
        "new_patients": r.new_patients(first, last),
        "charges": r.charges(first, last),
        "eligibility": r.eligibility(first, last),
    }


def live(store: SqlMessageStore, first: date = FIRST, last: date = LAST) -> dict[str, Any]:
    """Every report read from every row of the range (the statements alone, nothing stored)."""
    r = Reports(store.db_engine, ZONE)
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    with store.db_engine.connect() as conn:
        got = {
            "appointments": (r._appointments(conn, first, last), AppointmentDay({}, 0)),
            "new_patients": (r._new_patients(conn, first, last), 0),
            "charges": (r._charges(conn, first, last), ChargeDay()),
            "eligibility": (r._eligibility(conn, first, last), {}),
        }
    return {
        name: {d: per_day.get(d, empty) for d in days} for name, (per_day, empty) in got.items()
    }


def stored_days(db: Engine) -> int:
    with db.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(report_rollups)).scalar_one())


def late_changes(store: SqlMessageStore) -> None:
    """What can still change a closed day, as the engine records it."""
    db = store.db_engine
    past = [TODAY - timedelta(days=d) for d in (3, 9, 20, 33)]
    with db.begin() as conn:
        rows = conn.execute(
            select(fhir_resources.c.full_url, fhir_resources.c.start, fhir_resources.c.patient_url)
            .where(fhir_resources.c.start < at(TODAY - timedelta(days=2), 0))
            .order_by(fhir_resources.c.id)
            .limit(3)
        ).all()
        for i, (url, start, patient) in enumerate(rows):
            n = int(url.rsplit("-", 1)[1])
            start = start if start.tzinfo else start.replace(tzinfo=UTC)
            if i == 0:  # a no-show (SIU S26) the day after
                appointment(conn, 10_000 + i, n, start, "noshow", patient)
            elif i == 1:  # cancelled late
                appointment(conn, 10_000 + i, n, start, "cancelled", patient)
            else:  # moved to another past day
                appointment(conn, 10_000 + i, n, at(past[2], 11), "booked", patient)
        appointment(conn, 10_010, 900, at(past[0], 9), "fulfilled", "urn:uuid:p-late")  # pulled
        dfts = (
            conn.execute(
                select(messages.c.id)
                .where(messages.c.message_type == "DFT", messages.c.state == "delivered")
                .order_by(messages.c.id)
                .limit(2)
            )
            .scalars()
            .all()
        )
        conn.execute(update(messages).where(messages.c.id == dfts[1]).values(state="error"))
        adts = conn.execute(
            select(messages.c.id, messages.c.patient_key)
            .where(messages.c.message_type == "ADT")
            .order_by(messages.c.received_at)
        ).all()
        with_key = [mid for mid, key in adts if key is not None]
        no_key = [mid for mid, key in adts if key is None]
        assert with_key and no_key
        conn.execute(
            update(messages).where(messages.c.id == with_key[0]).values(patient_key="OAK|P7")
        )
        conn.execute(update(messages).where(messages.c.id == no_key[0]).values(patient_key="msg:1"))
        conn.execute(
            update(eligibility_checks)
            .where(
                eligibility_checks.c.id
                == select(func.min(eligibility_checks.c.id)).scalar_subquery()
            )
            .values(status="inactive", payer_name="Late Payer")
        )
    # replayed: the original leaves its day, its copy is received today
    store.replay_message(dfts[0], Who("alice", "cli"))
    check(store, "urn:uuid:appt-late", "Aetna", "needs_action", past[1])
    check(store, "urn:uuid:appt-1", "Cigna", "eligible", past[3])


def test_every_report_through_its_rollup_equals_reading_every_row(
    store: SqlMessageStore,
) -> None:
    seed(store)
    expected = live(store)
    assert viewed(store) == expected  # the first view: closed days read and stored
    closed_before = (datetime.now(NY) - CLOSE_AFTER).date()
    assert stored_days(store.db_engine) == 4 * (closed_before - FIRST).days
    assert viewed(store) == expected  # from the stored days
    late_changes(store)
    with store.db_engine.connect() as conn:
        noted = set(conn.execute(select(report_changes.c.report).distinct()).scalars())
    assert noted == {"appointments", "charges", "new-patients", "eligibility"}
    after = live(store)
    assert after != expected  # the late changes moved figures of closed days
    assert viewed(store) == after
    assert viewed(store) == after  # and stored again
    # a part of the range, and a range across the stored days and today
    middle = (TODAY - timedelta(days=30), TODAY - timedelta(days=10))
    assert viewed(store, *middle) == live(store, *middle)
    around = (TODAY - timedelta(days=5), TODAY + timedelta(days=1))
    assert viewed(store, *around) == live(store, *around)


def test_a_second_view_of_closed_days_reads_no_row(
    store: SqlMessageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(store)
    first, last = TODAY - timedelta(days=40), TODAY - timedelta(days=2)
    before = viewed(store, first, last)
    statements: list[str] = []

    def spy(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(store.db_engine, "before_cursor_execute", spy)
    try:
        assert viewed(store, first, last) == before
    finally:
        event.remove(store.db_engine, "before_cursor_execute", spy)
    assert statements, "the rollups are read from the database"
    assert not [s for s in statements if READS_ROWS.search(s)]
    # with today in the range only the days not closed are read from the rows
    asked: list[tuple[date, date]] = []
    real = Reports._charges

    def charges(self: Reports, conn: Any, a: date, b: date) -> dict[date, ChargeDay]:
        asked.append((a, b))
        return real(self, conn, a, b)

    monkeypatch.setattr(Reports, "_charges", charges)
    Reports(store.db_engine, ZONE).charges(first, TODAY + timedelta(days=2))
    assert asked and all(a >= TODAY - timedelta(days=1) for a, _ in asked), asked


def test_retention_purging_old_messages_changes_no_stored_day(store: SqlMessageStore) -> None:
    seed(store)
    shown = viewed(store)
    cut = at(TODAY - timedelta(days=15), 0)
    with store.db_engine.begin() as conn:
        conn.execute(delete(messages).where(messages.c.received_at < cut))
        conn.execute(delete(fhir_resources).where(fhir_resources.c.start < cut))
        conn.execute(
            delete(eligibility_checks).where(eligibility_checks.c.service_date < cut.date())
        )
    assert live(store) != shown  # read from the rows the purge shows...
    closed_before = (datetime.now(NY) - CLOSE_AFTER).date()

    def closed(figures: dict[str, Any]) -> dict[str, Any]:
        return {k: {d: v for d, v in f.items() if d < closed_before} for k, f in figures.items()}

    # ...but not in the closed days (today's new patients are those the store has not seen:
    # one whose older messages were purged is new again, as before the rollup)
    assert closed(viewed(store)) == closed(shown) != closed(live(store))


def test_a_rollup_computed_before_changes_are_taken_is_not_stored(
    store: SqlMessageStore,
) -> None:
    rollups = Rollups(store.db_engine, ZONE)
    day = TODAY - timedelta(days=10)
    generation = rollups.settle()
    # meanwhile a late no-show is recorded and another view takes it
    with store.db_engine.begin() as conn:
        appointment(conn, 1, 1, at(day, 10), "noshow", "urn:uuid:p1")
    assert Rollups(store.db_engine, ZONE).settle() == generation + 1
    assert not rollups.store("appointments", {day: '{"by_status": {}, "patients": 0}'}, generation)
    assert stored_days(store.db_engine) == 0
    assert rollups.store("appointments", {day: "{}"}, generation + 1)
    assert rollups.read("appointments", day, day) == {day: "{}"}
    assert Rollups(store.db_engine, "Europe/Paris").read("appointments", day, day) == {}


def test_days_cut_in_another_zone_are_read_again(store: SqlMessageStore) -> None:
    seed(store)
    first, last = TODAY - timedelta(days=20), TODAY - timedelta(days=3)
    viewed(store, first, last)
    paris = Reports(store.db_engine, "Europe/Paris")
    with store.db_engine.connect() as conn:
        expected = paris._appointments(conn, first, last)
    got = paris.appointments(first, last)
    assert {d: v for d, v in got.items() if v != AppointmentDay({}, 0)} == expected


def _triggers(db: Engine) -> set[str]:
    with db.connect() as conn:
        if db.dialect.name == "sqlite":
            sql = "SELECT name FROM sqlite_master WHERE type = 'trigger'"
        else:
            sql = (
                "SELECT t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
                " WHERE NOT t.tgisinternal AND c.relnamespace = current_schema()::regnamespace"
            )
        return {n for n in conn.execute(text(sql)).scalars() if n.startswith("report_")}


def test_the_migration_goes_down_and_up(store: SqlMessageStore) -> None:
    from alembic import command
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    import engine.store

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(engine.store.__file__).parent / "migrations"))
    assert ScriptDirectory.from_config(cfg).get_heads() == ["0027"]
    assert len(_triggers(store.db_engine)) == 5
    with store.db_engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0022")
    assert _triggers(store.db_engine) == set()
    with store.db_engine.connect() as conn:
        names = set(
            conn.execute(
                text(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                    if store.db_engine.dialect.name == "sqlite"
                    else "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                )
            ).scalars()
        )
    assert not {"report_rollups", "report_changes", "report_rollup_epoch"} & names
    store.migrate()
    assert len(_triggers(store.db_engine)) == 5
    with store.db_engine.begin() as conn:  # and they note a late change again
        appointment(conn, 1, 1, at(TODAY - timedelta(days=4), 10), "noshow", None)
        assert conn.execute(select(func.count()).select_from(report_changes)).scalar_one() == 1
    seed(store)
    assert viewed(store) == live(store)


def test_what_happens_every_minute_notes_nothing(store: SqlMessageStore) -> None:
    """Messages received and processed now, appointments booked ahead, checks for the days
    ahead: no closed day is touched, and nothing is written beside them."""
    now = datetime.now(UTC)
    with store.db_engine.begin() as conn:
        mid = add_message(conn, now, None, "DFT", dft(random.Random(2)), "received")
        conn.execute(
            update(messages).where(messages.c.id == mid).values(state="error", patient_key="A|1")
        )
        appointment(conn, 1, 1, now + timedelta(days=2), "booked", "urn:uuid:p1")
        appointment(conn, 2, 1, now + timedelta(days=3), "cancelled", "urn:uuid:p1")
    check(store, "urn:uuid:appt-1", "Aetna", "eligible", TODAY + timedelta(days=3))
    with store.db_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(report_changes)).scalar_one() == 0


def test_a_late_change_drops_only_its_own_day(store: SqlMessageStore) -> None:
    """A no-show at 23:30 in New York (the next day in UTC) drops that day's appointments and
    nothing else; a check for a past service day drops that day's eligibility."""
    x = TODAY - timedelta(days=10)
    first, last = x - timedelta(days=3), x + timedelta(days=3)
    with store.db_engine.begin() as conn:
        appointment(conn, 1, 1, at(x, 23, 30), "booked", "urn:uuid:p1")
    viewed(store, first, last)

    def stored(report: str) -> set[date]:
        return set(Rollups(store.db_engine, ZONE).read(report, first, last))

    every = {first + timedelta(days=i) for i in range(7)}
    assert stored("appointments") == stored("eligibility") == every
    with store.db_engine.begin() as conn:
        appointment(conn, 2, 1, at(x, 23, 30), "noshow", "urn:uuid:p1")
    check(store, "urn:uuid:appt-1", "Aetna", "eligible", x - timedelta(days=2))
    Rollups(store.db_engine, ZONE).settle()
    assert stored("appointments") == every - {x}
    assert stored("eligibility") == every - {x - timedelta(days=2)}
    assert stored("charges") == stored("new-patients") == every
    assert viewed(store, first, last) == live(store, first, last)
    assert viewed(store, first, last)["appointments"][x].by_status == {"noshow": 1}


def test_changes_not_taken_leave_every_day_read_from_the_rows(
    store: SqlMessageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A settle the database refuses (SQLite's writer busy too long) reads no stored day and
    stores none: the figures are still right, and the changes wait for the next view."""
    from sqlalchemy.exc import OperationalError

    seed(store)
    viewed(store)
    late_changes(store)

    def busy(self: Rollups, changes: Any) -> None:
        raise OperationalError("DELETE", {}, Exception("database is locked"))

    take = Rollups._take
    monkeypatch.setattr(Rollups, "_take", busy)
    with store.db_engine.begin() as conn:
        conn.execute(delete(report_rollups).where(report_rollups.c.report == "charges"))
    assert viewed(store) == live(store)
    with store.db_engine.connect() as conn:
        charges = select(func.count()).where(report_rollups.c.report == "charges")
        assert conn.execute(charges).scalar_one() == 0  # nothing stored
        assert conn.execute(select(func.count()).select_from(report_changes)).scalar_one() > 0
    monkeypatch.setattr(Rollups, "_take", take)
    assert viewed(store) == live(store)
    with store.db_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(report_changes)).scalar_one() == 0


def test_one_late_change_is_one_note(store: SqlMessageStore) -> None:
    """A status change notes its day once; a reschedule both days; a DFT refused late once."""
    old = datetime.now(UTC) - timedelta(days=3)
    with store.db_engine.begin() as conn:
        mid = add_message(conn, old, "OAK|P1", "DFT", dft(random.Random(3)), "delivered")
        appointment(conn, 1, 1, old, "booked", "urn:uuid:p1")
        conn.execute(delete(report_changes))
        appointment(conn, 2, 1, old, "noshow", "urn:uuid:p1")
        appointment(conn, 3, 1, old - timedelta(days=1), "noshow", "urn:uuid:p1")
        conn.execute(update(messages).where(messages.c.id == mid).values(state="error"))
        notes = conn.execute(
            select(report_changes.c.report, func.count()).group_by(report_changes.c.report)
        ).all()
    assert dict(notes) == {"appointments": 3, "charges": 1}
