"""The message page and the API's message detail show every delivery's attempts with their
errors (issue 13): a destination that fails twice and then takes the message shows three
attempts. On the real app and store (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import update

from engine.api.auth import Role
from engine.api.auth_settings import AuthSettings
from engine.api.tokens import mint_dev_token
from engine.store import Outcome, SqlMessageStore
from engine.store.tables import deliveries
from tests.console.test_messages_page_support import cells, client_for, dead_message


def _fail_twice_then_deliver(store: SqlMessageStore, n: int) -> int:
    """A message whose ``fhir`` delivery answered 503, then timed out, then took it."""
    mid = dead_message(store, n, destinations=("folder",))  # folder: delivered at once
    with store.db_engine.begin() as conn:
        # a second destination, queued as the first: it fails twice before it delivers
        [row] = conn.execute(deliveries.select().where(deliveries.c.message_id == mid)).all()
        values = {c: getattr(row, c) for c in row._fields if c != "id"}
        values.update(destination="fhir", state="pending", attempts=0, delivered_at=None)
        values.update(next_attempt_at=datetime.now(UTC))
        conn.execute(deliveries.insert().values(**values))
    errors = [
        "fhir: transaction -> 503 (OperationOutcome: transient)",
        "fhir: timeout (ReadTimeout)",
    ]
    for attempt, error in enumerate(errors, start=1):
        [due] = store.claim_due_deliveries(10)
        later = datetime.now(UTC) + timedelta(minutes=1)
        store.record_outcomes([Outcome(due.id, False, error, later, attempt=attempt, seconds=0.5)])
        with store.db_engine.begin() as conn:
            conn.execute(update(deliveries).values(next_attempt_at=datetime.now(UTC)))
    [due] = store.claim_due_deliveries(10)
    store.record_outcomes([Outcome(due.id, True, attempt=3, seconds=0.02)])
    return mid


def test_the_message_page_shows_each_attempt_and_its_error(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    mid = _fail_twice_then_deliver(store, 31)
    client = client_for(store, tmp_path, Role.VIEWER)
    html = client.get(f"/console/messages/{mid}").text
    rows = [r[1:] for r in cells(html, "attempts")]
    # (destination, attempt, when, outcome, status / class, error, took): the time aside
    assert [r[:2] + r[3:] for r in rows] == [
        ["folder", "1", "delivered", "", "", ""],
        [
            "fhir",
            "1",
            "retry",
            "503",
            "fhir: transaction -> 503 (OperationOutcome: transient)",
            "500 ms",
        ],
        ["fhir", "2", "retry", "ReadTimeout", "fhir: timeout (ReadTimeout)", "500 ms"],
        ["fhir", "3", "delivered", "", "", "20 ms"],
    ]
    assert all(r[2] for r in rows)  # each has its time


def test_the_api_message_detail_lists_each_attempt(store: SqlMessageStore, tmp_path: Path) -> None:
    mid = _fail_twice_then_deliver(store, 32)
    client = client_for(store, tmp_path, Role.VIEWER)
    auth = AuthSettings(environment="development", dev_secret_file=tmp_path / "secret")
    token = mint_dev_token(auth, role="viewer", subject="attempts")
    answer = client.get(f"/api/messages/{mid}", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200
    fhir = next(d for d in answer.json()["deliveries"] if d["destination"] == "fhir")
    assert fhir["attempts"] == 3
    history = fhir["history"]
    assert [(a["attempt"], a["outcome"], a["status"], a["error_class"]) for a in history] == [
        (1, "retry", 503, None),
        (2, "retry", None, "ReadTimeout"),
        (3, "delivered", None, None),
    ]
    assert history[1]["error"] == "fhir: timeout (ReadTimeout)"
    assert [a["duration_ms"] for a in history] == [500, 500, 20]
