"""The console's worklist on the real app and store (SQLite and PostgreSQL), the demo's Monday
checked by the engine's eligibility service against the stub payer: who comes when in New York,
the verdict, copay, deductible left, who needs a call and why; re-check one or all (CSRF, front
desk); every view and re-check audited from the console, no patient's name in the logs."""

from __future__ import annotations

import asyncio
import html as html_text
import logging
import re
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from engine.api.auth import Role
from engine.console import days
from engine.console.days import next_business_day
from engine.jobs.eligibility import EligibilityService
from engine.store import SqlMessageStore
from engine.store.tables import eligibility_checks
from tests.api.conftest import TestClient
from tests.console.frontdesk_support import TOKEN, front_desk_app, index_demo, user
from tests.jobs.conftest import MONDAY

#: the demo's Monday as the page shows it: time (New York), patient, MRN, verdict, copay
EXPECTED = [
    ("09:00", "Rivera, Ana", "DEMO1001", "eligible", "$25.00", ""),
    ("10:00", "Okafor, Chidi", "DEMO1002", "not active", "", "call"),
    ("11:00", "Lindqvist, Maja", "DEMO1003", "needs action", "", "call"),
]


@pytest.fixture
def demo(store: SqlMessageStore, tmp_path: Path) -> EligibilityService:
    return index_demo(store, tmp_path)


def _client(
    store: SqlMessageStore, tmp_path: Path, svc: EligibilityService | None, *roles: Role
) -> TestClient:
    app, _ = front_desk_app(store, tmp_path, user(*(roles or (Role.FRONT_DESK,))), eligibility=svc)
    return TestClient(app)


def _cells(html: str) -> list[list[str]]:
    body = html[html.index("<tbody>") : html.index("</tbody>")]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)
    return [
        [
            html_text.unescape(re.sub(r"<[^>]+>", "", c)).strip()
            for c in re.findall(r"<td[^>]*>(.*?)</td>", r, re.S)
        ]
        for r in rows
    ]


def _seen(html: str) -> list[tuple[str, ...]]:
    return [(c[0], c[1], c[2], c[4], c[5], c[7]) for c in _cells(html)]


def _notice(html: str) -> str:
    found = re.search(r"data-notice>([^<]*)<", html)
    assert found, html[:2000]
    return html_text.unescape(found.group(1))


def _checks(store: SqlMessageStore) -> int:
    with store.db_engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(eligibility_checks)).scalar_one())


def test_the_days_appointments_before_and_after_they_are_checked(
    store: SqlMessageStore, tmp_path: Path, demo: EligibilityService
) -> None:
    client = _client(store, tmp_path, demo)
    before = client.get(f"/console/worklist?day={MONDAY}")
    assert before.status_code == 200, before.text
    assert [(c[0], c[2], c[4]) for c in _cells(before.text)] == [
        ("09:00", "DEMO1001", "not checked"),
        ("10:00", "DEMO1002", "not checked"),
        ("11:00", "DEMO1003", "not checked"),
    ]
    asyncio.run(demo.check_upcoming(start=MONDAY, days=1))
    page = client.get(f"/console/worklist?day={MONDAY}")
    html = page.text
    assert _seen(html) == EXPECTED
    assert "Times in America/New_York" in html and "3 appointments, 2 to call" in html
    cells = _cells(html)
    assert "covered" in cells[0][8]
    assert "ask the patient for their current insurance" in cells[1][8]
    assert "AAA" in cells[2][8]  # the payer's own reason, kept
    assert "<script>" not in html and 'style="' not in html
    # the view recorded once per patient shown (IHE BALP: one AuditEvent per patient), each
    # record the same view: action, actor, time, outcome and detail
    entries = list(reversed(store.audit_entries(limit=3)))
    assert [e.patient_key for e in entries] == ["DEMO1001", "DEMO1002", "DEMO1003"]
    for entry in entries:
        assert (entry.action, entry.actor, entry.source, entry.outcome, entry.detail) == (
            "view-worklist",
            "frida",
            "console",
            "ok",
            "day 2026-11-30: 3 appointments shown",
        )
        assert entry.at == entries[0].at
    assert store.verify_audit().ok


def test_the_default_day_is_the_next_business_day_where_the_practice_is(
    store: SqlMessageStore, tmp_path: Path, demo: EligibilityService
) -> None:
    # 02:30 UTC on Tuesday 1 December is still Monday 30 November in New York: Tuesday there
    assert next_business_day("America/New_York", datetime(2026, 12, 1, 2, 30, tzinfo=UTC)) == (
        date(2026, 12, 1)
    )
    assert next_business_day("UTC", datetime(2026, 12, 1, 2, 30, tzinfo=UTC)) == date(2026, 12, 2)
    # after a Friday, a Saturday or a Sunday: Monday (the day the job checks and the demo books)
    for day in (27, 28, 29):
        noon = datetime(2026, 11, day, 12, tzinfo=ZoneInfo("America/New_York"))
        assert next_business_day("America/New_York", noon) == MONDAY, day
    # 03:00 UTC on Saturday is still Friday evening in New York: Monday there too
    assert next_business_day("America/New_York", datetime(2026, 11, 28, 3, tzinfo=UTC)) == MONDAY
    html = _client(store, tmp_path, demo).get("/console/worklist").text
    assert f"Worklist for {next_business_day('America/New_York'):%A %d %B %Y}" in html
    bad = _client(store, tmp_path, demo).get("/console/worklist?day=30/11/2026")
    assert bad.status_code == 422 and "is not a day (YYYY-MM-DD)" in _notice(bad.text)


@pytest.mark.parametrize(
    "now",
    [
        datetime(2026, 11, 27, 16, tzinfo=ZoneInfo("America/New_York")),  # a Friday afternoon
        datetime(2026, 11, 29, 10, tzinfo=ZoneInfo("America/New_York")),  # a Sunday morning
    ],
    ids=["friday", "sunday"],
)
def test_on_a_friday_or_a_sunday_the_worklist_opens_on_mondays_appointments(
    store: SqlMessageStore,
    tmp_path: Path,
    demo: EligibilityService,
    monkeypatch: pytest.MonkeyPatch,
    now: datetime,
) -> None:
    """Not the weekend day after it, which has no appointment; a day asked for still wins."""
    monkeypatch.setattr(days, "_now", lambda: now)
    client = _client(store, tmp_path, demo)
    html = client.get("/console/worklist").text
    assert "Worklist for Monday 30 November 2026" in html
    assert [row[:3] for row in _seen(html)] == [row[:3] for row in EXPECTED]
    saturday = client.get("/console/worklist?day=2026-11-28").text
    assert "Worklist for Saturday 28 November 2026" in saturday


def test_recheck_all_asks_the_payer_again_for_every_appointment(
    store: SqlMessageStore, tmp_path: Path, demo: EligibilityService
) -> None:
    client = _client(store, tmp_path, demo)
    response = client.post(
        "/console/worklist/recheck", data={"csrf_token": TOKEN, "day": MONDAY.isoformat()}
    )
    assert response.status_code == 200, response.text
    assert _notice(response.text) == "3 checked: 1 eligible, 1 not active, 1 needs action"
    assert _seen(response.text) == EXPECTED
    assert _checks(store) == 3
    # again: forced, the front desk asked (the schedule would reuse today's checks)
    client.post("/console/worklist/recheck", data={"csrf_token": TOKEN, "day": str(MONDAY)})
    assert _checks(store) == 6
    entry = next(e for e in store.audit_entries(limit=5) if e.action == "recheck-eligibility")
    assert (entry.source, entry.outcome) == ("console", "ok")
    assert entry.detail == "day 2026-11-30: 3 checked: 1 eligible, 1 not active, 1 needs action"


def test_recheck_one_asks_only_for_that_appointment(
    store: SqlMessageStore, tmp_path: Path, demo: EligibilityService
) -> None:
    asyncio.run(demo.check_upcoming(start=MONDAY, days=1))
    client = _client(store, tmp_path, demo)
    html = client.get(f"/console/worklist?day={MONDAY}").text
    appointments = re.findall(r'name="appointment" value="([^"]+)"', html)
    assert len(appointments) == 3
    response = client.post(
        "/console/worklist/recheck",
        data={
            "csrf_token": TOKEN,
            "day": str(MONDAY),
            "appointment": html_text.unescape(appointments[1]),
        },
    )
    assert _notice(response.text) == "1 checked: 1 not active"
    with store.db_engine.connect() as conn:
        last = conn.execute(
            select(eligibility_checks.c.appointment_url).order_by(eligibility_checks.c.id.desc())
        ).first()
    assert last is not None and last.appointment_url == html_text.unescape(appointments[1])
    assert _checks(store) == 4
    # the record names that appointment's patient (review13 L5)
    entry = next(e for e in store.audit_entries(limit=5) if e.action == "recheck-eligibility")
    assert entry.patient_key is not None and entry.patient_key.startswith("DEMO100")
    nothing = client.post(
        "/console/worklist/recheck",
        data={"csrf_token": TOKEN, "day": str(MONDAY), "appointment": "Appointment/none"},
    )
    assert _notice(nothing.text).startswith("nothing to check for that appointment")
    entry = next(e for e in store.audit_entries(limit=5) if e.action == "recheck-eligibility")
    assert (entry.outcome, entry.detail) == (
        "refused",
        "appointment Appointment/none: " + _notice(nothing.text),
    )
    assert entry.patient_key is None


def test_recheck_needs_the_front_desk_and_the_csrf_token(
    store: SqlMessageStore, tmp_path: Path, demo: EligibilityService
) -> None:
    form = {"csrf_token": TOKEN, "day": str(MONDAY)}
    viewer = _client(store, tmp_path, demo, Role.VIEWER)
    html = viewer.get(f"/console/worklist?day={MONDAY}").text
    assert "DEMO1001" in html and "/console/worklist/recheck" not in html
    assert viewer.post("/console/worklist/recheck", data=form).status_code == 403
    desk = _client(store, tmp_path, demo)
    assert desk.post("/console/worklist/recheck", data={"day": str(MONDAY)}).status_code == 403
    forged = {**form, "csrf_token": "forged"}
    assert desk.post("/console/worklist/recheck", data=forged).status_code == 403
    assert _checks(store) == 0
    assert (
        _client(store, tmp_path, demo, Role.INTEGRATION).get("/console/worklist").status_code == 403
    )


def test_without_an_eligibility_service_the_list_shows_and_recheck_says_why(
    store: SqlMessageStore, tmp_path: Path, demo: EligibilityService
) -> None:
    client = _client(store, tmp_path, None)
    html = client.get(f"/console/worklist?day={MONDAY}").text
    assert "DEMO1002" in html and "Re-check" not in html
    response = client.post(
        "/console/worklist/recheck", data={"csrf_token": TOKEN, "day": str(MONDAY)}
    )
    assert response.status_code == 503
    assert "not configured" in _notice(response.text)


def test_no_patient_name_is_logged(
    store: SqlMessageStore,
    tmp_path: Path,
    demo: EligibilityService,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = _client(store, tmp_path, demo)
    with caplog.at_level(logging.DEBUG):
        client.post("/console/worklist/recheck", data={"csrf_token": TOKEN, "day": str(MONDAY)})
        html = client.get(f"/console/worklist?day={MONDAY}").text
    assert "Rivera, Ana" in html
    logged = " ".join(f"{r.getMessage()} {sorted(vars(r).items())}" for r in caplog.records)
    assert "re-checked from the console" in logged
    for phi in ("Rivera", "Okafor", "Lindqvist", "DEMO1001"):
        assert phi not in logged


def test_a_patient_without_coverage_is_a_call_and_a_cancelled_visit_is_left_out(
    store: SqlMessageStore, tmp_path: Path, demo: EligibilityService
) -> None:
    """As the job sees them: no Coverage with a payer, nothing to ask (the front desk calls);
    a cancelled appointment is not checked and not listed."""
    import orjson
    from sqlalchemy import delete, update

    from engine.store.tables import fhir_resources

    with store.db_engine.begin() as conn:
        appointments = conn.execute(
            select(fhir_resources.c.id, fhir_resources.c.body)
            .where(fhir_resources.c.resource_type == "Appointment")
            .order_by(fhir_resources.c.start)
        ).all()
        assert len(appointments) == 3
        cancelled = {**orjson.loads(appointments[1].body), "status": "cancelled"}
        conn.execute(
            update(fhir_resources)
            .where(fhir_resources.c.id == appointments[1].id)
            .values(body=orjson.dumps(cancelled).decode(), status="cancelled")
        )
        patient = next(
            ref
            for part in orjson.loads(appointments[2].body)["participant"]
            if (ref := part["actor"]["reference"])
            and (store.resource(ref) or {}).get("resourceType") == "Patient"
        )
        conn.execute(
            delete(fhir_resources).where(
                fhir_resources.c.resource_type == "Coverage",
                fhir_resources.c.patient_url == patient,
            )
        )
    client = _client(store, tmp_path, demo)
    cells = _cells(client.get(f"/console/worklist?day={MONDAY}").text)
    assert [(c[0], c[2], c[4], c[7]) for c in cells] == [
        ("09:00", "DEMO1001", "not checked", ""),
        ("11:00", "DEMO1003", "no coverage on file", "call"),
    ]
    assert "confirm self-pay or get the card" in cells[1][8]
    response = client.post(
        "/console/worklist/recheck", data={"csrf_token": TOKEN, "day": str(MONDAY)}
    )
    assert _notice(response.text) == "1 checked: 1 eligible"
