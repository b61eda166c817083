"""The reports' statements on a real store (SQLite and PostgreSQL): days of the practice's zone
(across the end of daylight saving time), appointments by status and patient, new patients,
DFT charges, eligibility outcomes by payer, closed days stored and today kept briefly."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import orjson
import pytest
from sqlalchemy import insert

from engine.store import IndexedResource, SqlMessageStore
from engine.store import reports as reports_module
from engine.store.index import upsert_resources
from engine.store.reports import Reports, clear_kept, offset_spans
from engine.store.tables import messages

NY = ZoneInfo("America/New_York")
#: New York leaves daylight saving time on Sunday 1 November 2026 at 02:00 (06:00 UTC)
OCT31, NOV1, NOV2 = date(2026, 10, 31), date(2026, 11, 1), date(2026, 11, 2)


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    clear_kept()
    yield
    clear_kept()


def local(day: date, hh: int, mm: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, tzinfo=NY).astimezone(UTC)


def add_message(
    store: SqlMessageStore,
    at: datetime,
    *,
    patient: str | None,
    mtype: str = "ADT",
    raw: bytes = b"MSH|^~\\&|A|B|C|D|20261101||ADT^A08|1|P|2.5.1\r",
    state: str = "delivered",
) -> None:
    with store.db_engine.begin() as conn:
        conn.execute(
            insert(messages).values(
                received_at=at,
                channel="mllp",
                peer="127.0.0.1:1",
                kind="hl7v2",
                size=len(raw),
                raw=raw,
                message_type=mtype,
                trigger="P03" if mtype == "DFT" else "A08",
                patient_key=patient,
                state=state,
                updated_at=at,
            )
        )


def add_appointment(
    store: SqlMessageStore, n: int, start: datetime, status: str, patient: str | None
) -> None:
    body = {"resourceType": "Appointment", "status": status, "start": start.isoformat()}
    row = IndexedResource(
        "Appointment", f"urn:uuid:appt-{n}", orjson.dumps(body), patient, start, status
    )
    with store.db_engine.begin() as conn:
        upsert_resources(conn, [(n, row)], datetime.now(UTC))


def test_spans_split_where_the_offset_changes() -> None:
    spans = offset_spans(OCT31, NOV2, NY)
    assert [(s.start, s.end, s.offset) for s in spans] == [
        (local(OCT31, 0), datetime(2026, 11, 1, 6, tzinfo=UTC), -240),
        (datetime(2026, 11, 1, 6, tzinfo=UTC), local(NOV2 + timedelta(days=1), 0), -300),
    ]
    assert [s.offset for s in offset_spans(NOV2, NOV2 + timedelta(days=30), NY)] == [-300]


def test_appointments_by_day_status_and_patient(store: SqlMessageStore) -> None:
    # 23:30 on 31 October (EDT) is 03:30 UTC on 1 November: still the 31st where the practice is
    add_appointment(store, 1, local(OCT31, 23, 30), "booked", "urn:uuid:p1")
    add_appointment(store, 2, local(OCT31, 9), "fulfilled", "urn:uuid:p1")  # the same patient
    add_appointment(store, 3, local(OCT31, 10), "noshow", "urn:uuid:p2")
    add_appointment(store, 4, local(OCT31, 11), "cancelled", "urn:uuid:p3")
    # 00:30 on 1 November (EDT, before the change) and 23:30 (EST, after it)
    add_appointment(store, 5, local(NOV1, 0, 30), "arrived", "urn:uuid:p4")
    add_appointment(store, 6, local(NOV1, 23, 30), "noshow", "urn:uuid:p5")
    got = Reports(store.db_engine, "America/New_York").appointments(OCT31, NOV2)
    assert got[OCT31].by_status == {"booked": 1, "fulfilled": 1, "noshow": 1, "cancelled": 1}
    assert got[OCT31].patients == 1  # p1 twice; p2 did not come, p3 cancelled
    assert got[OCT31].visits == 3 and got[OCT31].noshow_rate == pytest.approx(100 / 3)
    assert got[NOV1].by_status == {"arrived": 1, "noshow": 1} and got[NOV1].patients == 1
    assert got[NOV1].noshow_rate == 50.0
    assert got[NOV2].by_status == {} and got[NOV2].noshow_rate is None


def test_new_patients_are_those_first_seen_that_day(store: SqlMessageStore) -> None:
    add_message(store, local(OCT31, 8) - timedelta(days=10), patient="OAK|OLD")
    add_message(store, local(OCT31, 23, 30), patient="OAK|A")  # 03:30 UTC on the 1st
    add_message(store, local(NOV1, 9), patient="OAK|A")
    add_message(store, local(NOV1, 9), patient="OAK|OLD")
    add_message(store, local(NOV1, 23, 45), patient="OAK|B")  # 04:45 UTC on the 2nd (EST)
    add_message(store, local(NOV2, 8), patient=None)
    got = Reports(store.db_engine, "America/New_York").new_patients(OCT31, NOV2)
    assert got == {OCT31: 1, NOV1: 1, NOV2: 0}


DFT = (
    b"MSH|^~\\&|BILL|OAK|ENGINE|HUB|20261101||DFT^P03|D1|P|2.5.1\r"
    b"PID|1||MRN1^^^OAK^MR||Doe^Jan\r"
    b"FT1|1|||20261101||CG|99213|||1|100.00\r"
    b"FT1|2|||20261101||CG|90471|||2||25.00\r"
    b"FT1|3|||20261101||PY|CASH|||1|40.00\r"
)


def test_charges_count_dft_lines_and_amounts(store: SqlMessageStore) -> None:
    add_message(store, local(NOV1, 10), patient="OAK|MRN1", mtype="DFT", raw=DFT)
    add_message(store, local(NOV1, 11), patient="OAK|MRN1", mtype="DFT", raw=DFT, state="error")
    add_message(store, local(NOV1, 12), patient="OAK|MRN1", mtype="DFT", raw=DFT, state="replayed")
    add_message(store, local(NOV2, 12), patient="OAK|MRN1", mtype="DFT", raw=b"MSH|garbage")
    add_message(store, local(NOV2, 13), patient="OAK|MRN1")
    got = Reports(store.db_engine, "America/New_York").charges(OCT31, NOV2)
    assert got[NOV1].messages == 1 and got[NOV1].lines == 2 and got[NOV1].amount == 150.0
    assert got[NOV2].messages == 1 and got[NOV2].lines == 0
    assert got[OCT31].messages == 0


def test_eligibility_takes_the_latest_check_of_each_appointment(store: SqlMessageStore) -> None:
    def check(appt: str | None, payer: str, status: str, day: date = NOV2) -> None:
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

    check("a1", "Aetna", "inactive")
    check("a1", "Aetna", "eligible")  # asked again: this one counts
    check("a2", "Aetna", "eligible")
    check("a3", "Cigna", "needs_action")
    check(None, "Cigna", "payer_unavailable")
    check("a4", "Cigna", "eligible", day=NOV2 + timedelta(days=40))  # outside the range
    got = Reports(store.db_engine, "America/New_York").eligibility(OCT31, NOV2)
    assert got[OCT31] == got[NOV1] == {}
    assert got[NOV2] == {
        ("Aetna", "eligible"): 2,
        ("Cigna", "needs_action"): 1,
        ("Cigna", "payer_unavailable"): 1,
    }


def test_closed_days_are_stored_and_today_kept_only_briefly(
    store: SqlMessageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    reports = Reports(store.db_engine, "America/New_York")
    today = datetime.now(NY).date()
    add_message(store, local(NOV1, 9), patient="OAK|A")
    add_message(store, datetime.now(UTC) - timedelta(seconds=5), patient="OAK|T1")
    assert reports.new_patients(NOV1, NOV1) == {NOV1: 1}
    assert reports.new_patients(today, today) == {today: 1}
    # written straight into the table, as no engine would (a new message arrives today)
    add_message(store, local(NOV1, 10), patient="OAK|B")
    add_message(store, datetime.now(UTC) - timedelta(seconds=1), patient="OAK|T2")
    assert reports.new_patients(NOV1, NOV1) == {NOV1: 1}  # stored
    assert reports.new_patients(today, today) == {today: 1}  # kept for a minute
    monkeypatch.setattr(reports_module, "KEEP_TODAY_S", 0.0)
    clear_kept()
    assert reports.new_patients(NOV1, NOV1) == {NOV1: 1}  # stored in the database, not kept
    assert reports.new_patients(today, today) == {today: 2}
    add_message(store, datetime.now(UTC), patient="OAK|T3")
    assert reports.new_patients(today, today) == {today: 3}  # not kept: read again
    with pytest.raises(ValueError, match="366"):
        reports.new_patients(NOV1, NOV1 + timedelta(days=400))
