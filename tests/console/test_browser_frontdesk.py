"""The front desk in a real browser against a real ``engine serve`` (tests/console/support.py),
logged in as a front-desk user through the login form:

- Documents: a scan uploaded through the form (``set_input_files``) for an MRN the FHIR server
  does not know waits for its patient (the FHIR destination's Patient search finds nobody:
  ``needs-patient``); matched to a known MRN on the page, it is delivered there. A second scan
  dropped on the drop zone (console.js) is uploaded too and delivered.
- Worklist: the demo's appointments (sent over MLLP as an EHR sends them) on their day, not
  checked; "Re-check all" asks the payer (the engine's stub payer) and shows the verdicts.

The FHIR server is the engine's stub (engine/sim/fhir_server.py) on a free port; the demo's
registrations reach it first, so it knows DEMO1001..DEMO1003. Screenshots of each page land in
test-artifacts/console (the ``page`` fixture, and one per step here).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from engine.sim.demo import demo_messages
from engine.sim.fhir_server import StubFhirServer, running_stub_fhir
from engine.sim.pdf import synthetic_pdf
from tests.console.conftest import ARTIFACTS
from tests.console.support import ConsoleEngine, console_engine, login
from tests.serve_support import send_stream

PASSWORD = "front desk at nine sharp"


def _next_business_day(today: date) -> date:
    """The day the demo books its appointments on (engine/sim/demo.py)."""
    day = today + timedelta(days=1)
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return day


def _routes(folder: Path, fhir: StubFhirServer) -> Path:
    folder.mkdir()
    # example.yaml: in place of the built-in example's routes (to the stub Epic and others)
    (folder / "example.yaml").write_text(
        f"""
destinations:
  fhir:
    type: fhir
    base_url: {fhir.base_url}
    mode: transaction
    mrn_system: urn:engine:identifier:DEMOCLINIC
    patient_cache_ttl_s: 0
    timeout_s: 10
    retry: {{max_attempts: 5, base_delay_s: 1, max_delay_s: 2}}
routes:
  - name: registrations
    match: {{message: [ADT, SIU]}}
    mapping: fhir
    destinations: [fhir]
  - name: documents
    match: {{kind: document}}
    mapping: fhir
    destinations: [fhir]
"""
    )
    return folder


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ConsoleEngine, Any]]:
    """The engine (its FHIR server the stub), a front-desk user, the demo's patients sent."""
    tmp = tmp_path_factory.mktemp("frontdesk")
    with running_stub_fhir() as fhir:
        routes = _routes(tmp / "routes", fhir)
        with console_engine(tmp, routes=routes) as engine:
            engine.add_user("frida", PASSWORD, "front-desk")
            acked: list[str] = []
            sent = list(demo_messages())
            send_stream(engine.mllp, sent, acked)
            assert len(acked) == len(sent), acked
            deadline = time.monotonic() + 60
            while fhir.state.count("Patient") < 3:
                assert time.monotonic() < deadline, "the demo patients did not reach the stub"
                time.sleep(0.2)
            yield engine, fhir


def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"frontdesk_{name}.png"), full_page=True)


def _notice(page: Any) -> str:
    return str(page.locator("[data-notice]").inner_text())


def _until(page: Any, url: str, found: Any, what: str, timeout: float = 45.0) -> None:
    """Reload ``url`` until ``found(page)`` (the engine delivers in its worker process)."""
    deadline = time.monotonic() + timeout
    while True:
        page.goto(url)
        if found(page):
            return
        assert time.monotonic() < deadline, f"{what}: not seen in {timeout:.0f} s"
        time.sleep(0.5)


def test_a_front_desk_login_lands_on_a_page_it_may_use_with_log_out(
    page: Any, served: tuple[ConsoleEngine, Any]
) -> None:
    """Logging in goes to ``/console/``, the dashboard, which the front desk may not see: it
    lands on the first page of its menu instead (documents), not on a 403, and can log out."""
    engine, _ = served
    base = engine.base_url
    # no request of the pages fails: no /favicon.ico 404 (base.html names an empty icon), no
    # console error
    failed: list[str] = []
    page.on("requestfailed", lambda r: failed.append(f"{r.url}: {r.failure}"))
    page.on("response", lambda r: failed.append(f"{r.url}: {r.status}") if r.status >= 400 else 0)
    page.on("console", lambda m: failed.append(m.text) if m.type == "error" else 0)
    login(page, base, "frida", PASSWORD)
    assert page.url == f"{base}/console/documents"
    page.goto(f"{base}/console/worklist")
    page.goto(f"{base}/console/documents")
    page.wait_for_load_state("networkidle")
    assert failed == []
    assert page.locator("nav a.active").inner_text() == "Documents"
    assert page.locator("nav a").all_inner_texts() == ["Documents", "Worklist"]
    assert page.locator("form[data-dropzone]").count() == 1
    _shot(page, "0_landed")
    # a page it may not open says so in the console's layout, its menu and Log out still there
    answer = page.goto(f"{base}/console/routes")
    assert answer is not None and answer.status == 403
    assert page.locator("nav a").all_inner_texts() == ["Documents", "Worklist"]
    with page.expect_navigation():
        page.get_by_role("button", name="Log out").click()
    assert page.url.startswith(f"{base}/console/login")


def test_upload_one_waiting_for_a_patient_match_it_and_drop_another(
    page: Any, served: tuple[ConsoleEngine, Any]
) -> None:
    engine, fhir = served
    base = engine.base_url
    login(page, base, "frida", PASSWORD)
    page.goto(f"{base}/console/documents")
    assert page.locator("nav a.active").inner_text() == "Documents"
    # a referral for a patient the FHIR server does not know
    form = page.locator("form[data-dropzone]")
    form.locator("input[name=mrn]").fill("DEMO9999")
    form.locator("select[name=document_type]").select_option("referral")
    form.locator("input[name=title]").fill("Referral from Dr. Demo")
    form.locator("input[type=file]").set_input_files(
        files=[
            {
                "name": "referral.pdf",
                "mimeType": "application/pdf",
                "buffer": synthetic_pdf("referral", "Unknown Patient", mrn="DEMO9999"),
            }
        ]
    )
    assert "referral.pdf" in form.locator("[data-dropzone-label]").inner_text()
    with page.expect_navigation():
        form.locator("button[type=submit]").click()
    notice = _notice(page)
    found = re.match(r"Stored as document (\d+) \(application/pdf\)", notice)
    assert found, notice
    doc_id = found.group(1)
    _shot(page, "1_uploaded")
    # the FHIR server finds no DEMO9999: the document waits for its patient
    row = f"#waiting tr[data-document='{doc_id}']"
    _until(
        page,
        f"{base}/console/documents",
        lambda p: p.locator(row).count() == 1,
        "the document waiting for its patient",
    )
    assert "DEMO9999" in page.locator(row).inner_text()
    assert "fhir" in page.locator(row).inner_text()
    _shot(page, "2_waiting")
    # matched to the patient the front desk found: delivered
    page.locator(f"{row} input[name=mrn]").fill("DEMO1001")
    with page.expect_navigation():
        page.locator(f"{row} button[type=submit]").click()
    assert _notice(page).startswith(f"Document {doc_id} matched: sent again as message ")
    recent = f"#recent tr[data-document='{doc_id}']"
    _until(
        page,
        f"{base}/console/documents",
        lambda p: "fhir: delivered" in p.locator(recent).inner_text(),
        "the matched document delivered",
    )
    assert page.locator(row).count() == 0
    assert fhir.state.count("DocumentReference") == 1
    # the drop zone: a file dropped on it goes into the form's file field
    pdf = synthetic_pdf("consent", "Okafor Chidi", mrn="DEMO1002")
    dropped = page.evaluate_handle(
        """(bytes) => {
            const dt = new DataTransfer();
            dt.items.add(new File([new Uint8Array(bytes)], "consent.pdf",
                                  {type: "application/pdf"}));
            return dt;
        }""",
        list(pdf),
    )
    page.dispatch_event("[data-dropzone-area]", "drop", {"dataTransfer": dropped})
    form = page.locator("form[data-dropzone]")
    assert "consent.pdf" in form.locator("[data-dropzone-label]").inner_text()
    form.locator("input[name=mrn]").fill("DEMO1002")
    form.locator("select[name=document_type]").select_option("consent")
    with page.expect_navigation():
        form.locator("button[type=submit]").click()
    found = re.match(r"Stored as document (\d+)", _notice(page))
    assert found, _notice(page)
    second = f"#recent tr[data-document='{found.group(1)}']"
    _until(
        page,
        f"{base}/console/documents",
        lambda p: "fhir: delivered" in p.locator(second).inner_text(),
        "the dropped document delivered",
    )
    assert fhir.state.count("DocumentReference") == 2


def test_the_worklist_shows_the_days_appointments_and_their_verdicts_after_a_recheck(
    page: Any, served: tuple[ConsoleEngine, Any]
) -> None:
    engine, _ = served
    base = engine.base_url
    login(page, base, "frida", PASSWORD)
    day = _next_business_day(date.today())
    _until(
        page,
        f"{base}/console/worklist?day={day.isoformat()}",
        lambda p: p.locator("table.worklist tbody tr").count() == 3,
        "the demo's three appointments",
    )
    rows = page.locator("table.worklist tbody tr")
    assert "Rivera, Ana" in rows.nth(0).inner_text() and "09:00" in rows.nth(0).inner_text()
    with page.expect_navigation():
        page.get_by_role("button", name="Re-check all").click()
    assert _notice(page) == "3 checked: 1 eligible, 1 not active, 1 needs action"
    rows = page.locator("table.worklist tbody tr")
    statuses = [rows.nth(i).get_attribute("data-status") for i in range(3)]
    assert statuses == ["eligible", "inactive", "needs_action"]
    first = rows.nth(0).inner_text()
    assert "DEMO1001" in first and "$25.00" in first
    assert "call" in rows.nth(1).inner_text() and "call" in rows.nth(2).inner_text()
    assert "2 to call" in page.locator("main").inner_text()
    # one appointment again
    with page.expect_navigation():
        rows.nth(1).get_by_role("button", name="Re-check").click()
    assert _notice(page) == "1 checked: 1 not active"
