"""The mapping workbench on the real app and store (SQLite and PostgreSQL): HL7v2 pasted becomes
the Bundle with the file and line of each rule, the checks, the difference with an expected
Bundle; FHIR pasted becomes HL7v2; errors named by segment and line or JSON line; limits; the
use audited, never the text, and nothing pasted in the logs."""

from __future__ import annotations

import html as html_text
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from sqlalchemy import select

from engine.api.app import create_app
from engine.api.auth import Role
from engine.api.auth_settings import AuthSettings
from engine.console import pages_workbench
from engine.console.auth import ConsoleUser, current_console_user
from engine.console.pages_workbench import MAX_TEXT, bundle_diff
from engine.metrics import EngineMetrics
from engine.settings import Settings
from engine.store import SqlMessageStore
from engine.store.tables import audit_log
from tests.api.conftest import TestClient
from tests.api.fakes import FakeHealth, FakeIngest
from tests.conftest import FIXTURES

TOKEN = "csrf-token-of-the-session"
CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "hl7v2"


def _user(*roles: Role) -> ConsoleUser:
    return ConsoleUser("wanda", frozenset(roles), "session-1", TOKEN, "127.0.0.1:50000")


def _client(store: SqlMessageStore, tmp_path: Path, *roles: Role) -> TestClient:
    metrics = EngineMetrics()
    app = create_app(
        Settings(var_dir=tmp_path),
        ingest=FakeIngest(metrics),
        messages=store,
        health=FakeHealth(),
        metrics=metrics,
        auth=AuthSettings(environment="development", dev_secret_file=tmp_path / "secret"),
    )
    who = _user(*(roles or (Role.INTEGRATION,)))
    overrides: dict[Callable[..., object], Callable[..., object]] = {
        current_console_user: lambda: who
    }
    app.dependency_overrides.update(overrides)
    return TestClient(app)


def _pasted(name: str) -> str:
    """A fixture as a browser's textarea posts it: one segment a line, CR LF."""
    return (FIXTURES / "hl7" / name).read_text().replace("\r", "\r\n")


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", html_text.unescape(re.sub(r"<[^>]+>", " ", html)))


def _output(page: str) -> str:
    found = re.search(r'<pre class="output" id="output">(.*?)</pre>', page, re.S)
    assert found is not None, "no output on the page"
    return html_text.unescape(found.group(1))


def _post(client: TestClient, **fields: str) -> tuple[int, str]:
    answer = client.post("/console/workbench", data={"csrf_token": TOKEN, **fields})
    return answer.status_code, answer.text


def _audit(store: SqlMessageStore) -> list[dict[str, object]]:
    with store.db_engine.connect() as conn:
        rows = conn.execute(select(audit_log).where(audit_log.c.action == "workbench"))
        return [dict(r._mapping) for r in rows]


def test_an_adt_becomes_a_bundle_with_the_rules_that_made_it(
    store: SqlMessageStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = _client(store, tmp_path, Role.VIEWER)
    with caplog.at_level(logging.DEBUG):
        status, page = _post(client, direction="to-fhir", message=_pasted("adt_a01.hl7"))
    assert status == 200, page
    text = _text(page)
    assert "HL7v2 → FHIR: ADT^A01" in text
    bundle = orjson.loads(_output(page))
    assert bundle["entry"][0]["resource"]["name"][0]["family"] == "Testpatient"
    # the family name's row names PID-5's rule and XPN's first component, with their lines
    row = re.search(
        r"<tr><td>0</td><td><code>Patient\.name\[0\]\.family</code></td>(.*?)</tr>", page, re.S
    )
    assert row is not None
    made_by = _text(row.group(1))
    assert "(built-in) segments/PID.yaml , line 21: PID-5 → name[] (XPN)" in made_by
    assert "(built-in) datatypes/XPN.yaml , line 7: XPN.1 → family" in made_by
    # checks ran: hl7apy's and the FHIR model's
    assert "valid" in _text(page[page.index("<h3>Checks</h3>") :])
    # audited without the payload; nothing pasted in the logs
    (entry,) = _audit(store)
    assert entry["source"] == "console" and entry["outcome"] == "ok"
    assert entry["detail"] == "HL7v2 to FHIR, ADT^A01" and entry["patient_key"] is None
    assert entry["actor"] == "wanda" and entry["message_id"] is None
    logged = " ".join(r.getMessage() + repr(r.__dict__) for r in caplog.records)
    assert "Testpatient" not in logged and "MRN20001" not in logged


def test_a_message_from_outside_converts_and_says_what_no_map_takes(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    raw = (CORPUS / "google-healthcare-data-harmonization" / "adt_a01.hl7").read_text()
    status, page = _post(_client(store, tmp_path), direction="to-fhir", message=raw)
    assert status == 200
    text = _text(page)
    assert (
        "ADT^A01" in text
        and "Made by" in text
        and '"resourceType": "Patient"' in html_text.unescape(page)
    )
    assert "Not mapped" in text


def test_an_unreadable_value_is_named_by_field_and_line(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    bad = _pasted("adt_a01.hl7").replace("19840229", "19841399")
    status, page = _post(_client(store, tmp_path), direction="to-fhir", message=bad)
    assert status == 200
    text = _text(page)
    assert "Not converted" in text
    assert "PID-7, line 3" in text and "month" in text
    assert _audit(store)[0]["outcome"] == "error"
    status, page = _post(_client(store, tmp_path), direction="to-fhir", message="hello\r\nworld")
    assert "no HL7v2 message found" in _text(page)


def test_the_difference_with_an_expected_bundle(store: SqlMessageStore, tmp_path: Path) -> None:
    client = _client(store, tmp_path)
    _status, first = _post(client, direction="to-fhir", message=_pasted("adt_a01.hl7"))
    made = orjson.loads(_output(first))
    status, page = _post(
        client,
        direction="to-fhir",
        message=_pasted("adt_a01.hl7"),
        expected=orjson.dumps(made).decode(),
    )
    assert status == 200 and "No difference" in _text(page)
    expected = orjson.loads(orjson.dumps(made))
    patient = expected["entry"][0]["resource"]
    patient["name"][0]["family"] = "Someone"
    del patient["birthDate"]
    patient["multipleBirthBoolean"] = False
    _status, page = _post(
        client,
        direction="to-fhir",
        message=_pasted("adt_a01.hl7"),
        expected=orjson.dumps(expected, option=orjson.OPT_INDENT_2).decode(),
    )
    text = _text(page)
    assert "1 added, 1 removed, 1 changed" in text
    assert re.search(
        r"changed\s+entry\[0\]\.resource\.name\[0\]\.family\s+Someone\s+Testpatient", text
    )
    assert re.search(r"added\s+entry\[0\]\.resource\.birthDate\s+1984-02-29", text)
    assert re.search(r"removed\s+entry\[0\]\.resource\.multipleBirthBoolean\s+false", text)
    _status, page = _post(
        client,
        direction="to-fhir",
        message=_pasted("adt_a01.hl7"),
        expected='{\n  "resourceType": Bundle\n}',
    )
    assert "expected Bundle, line 2, column" in _text(page) and "not valid JSON" in _text(page)


def test_the_difference_compares_on_meaning() -> None:
    assert (
        bundle_diff(
            {"a": "2026-01-02T03:04:05-05:00", "n": 1}, {"a": "2026-01-02T08:04:05Z", "n": 1.0}
        )
        == []
    )
    changes = bundle_diff({"l": [1, 2]}, {"l": [1, 3, 4]})
    assert [(c.kind, c.path) for c in changes] == [("changed", "l[1]"), ("added", "l[2]")]
    assert [(c.kind, c.path) for c in bundle_diff({"b": True}, {"b": 1})] == [("changed", "b")]


def test_fhir_becomes_hl7v2_checked_both_ways(store: SqlMessageStore, tmp_path: Path) -> None:
    doc = (FIXTURES / "fhir" / "outbound_siu_bundle.json").read_text()
    status, page = _post(_client(store, tmp_path), direction="to-hl7", fhir=doc, event="new")
    assert status == 200, page
    text = _text(page)
    out = _output(page)
    assert out.startswith("MSH|") and "\nSCH|" in out and "\nPID|" in out
    assert "FHIR → HL7v2: SIU^S12" in text
    assert _audit(store)[0]["detail"] == "FHIR to HL7v2, SIU^S12"
    status, page = _post(
        _client(store, tmp_path),
        direction="to-hl7",
        fhir='{"resourceType": "Patient",\n "name": [}',
    )
    assert "FHIR, line 2, column" in _text(page)
    status, page = _post(
        _client(store, tmp_path),
        direction="to-hl7",
        fhir='{"resourceType": "Patient", "gender": 7}',
    )
    assert "invalid FHIR Patient" in _text(page)


def test_limits_roles_and_csrf(store: SqlMessageStore, tmp_path: Path) -> None:
    client = _client(store, tmp_path)
    big = "MSH|^~\\&|A|B|C|D|20260101||ADT^A01|1|P|2.5.1\r\nPID|" + "x" * MAX_TEXT
    status, page = _post(client, direction="to-fhir", message=big)
    assert status == 413 and "larger than 1 MiB" in _text(page)
    answer = client.post(
        "/console/workbench",
        content=b"a=" + b"b" * (9 * MAX_TEXT),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert answer.status_code == 413
    answer = client.post("/console/workbench", data={"direction": "to-fhir", "message": "MSH|"})
    assert answer.status_code == 403
    assert _client(store, tmp_path, Role.FRONT_DESK).get("/console/workbench").status_code == 403
    page = _client(store, tmp_path, Role.VIEWER).get("/console/workbench")
    assert page.status_code == 200 and 'name="csrf_token"' in page.text
    # the refusal of the text too large is recorded (review13 L5), never the text
    assert [(a["outcome"], a["detail"]) for a in _audit(store)] == [
        ("refused", "HL7v2 to FHIR; the message is larger than 1 MiB")
    ]


def test_a_busy_workbench_says_so(store: SqlMessageStore, tmp_path: Path) -> None:
    held = [pages_workbench._slots.acquire(blocking=False) for _ in range(pages_workbench.SLOTS)]
    try:
        assert all(held)
        status, page = _post(
            _client(store, tmp_path), direction="to-fhir", message=_pasted("adt_a01.hl7")
        )
        assert status == 503 and "busy" in _text(page)
        assert [(a["actor"], a["outcome"], a["detail"]) for a in _audit(store)] == [
            ("wanda", "error", "HL7v2 to FHIR; busy")
        ]
    finally:
        for _ in held:
            pages_workbench._slots.release()


def test_a_conversion_that_takes_too_long_is_given_up_and_audited(
    store: SqlMessageStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pages_workbench, "TIMEOUT_S", 0.0)
    status, page = _post(
        _client(store, tmp_path), direction="to-fhir", message=_pasted("adt_a01.hl7")
    )
    assert status == 503 and "took longer than 0 s" in _text(page)
    assert [(a["outcome"], a["detail"]) for a in _audit(store)] == [
        ("error", "HL7v2 to FHIR; took too long")
    ]
    # the conversion ends on its own and gives its slot back
    deadline = time.monotonic() + 30
    while True:
        held = [
            pages_workbench._slots.acquire(blocking=False) for _ in range(pages_workbench.SLOTS)
        ]
        for ok in held:
            if ok:
                pages_workbench._slots.release()
        if all(held) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert all(held)
