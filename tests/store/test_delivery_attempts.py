"""Each delivery attempt that failed is kept with its outcome, status, error class and error;
a first-time success writes no attempt row; the rows go with their delivery. On SQLite and
PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, event, func, select, update

from engine.store import Incoming, NewDelivery, Outcome, Processed, SqlMessageStore
from engine.store.attempts import attempt_fields
from engine.store.tables import deliveries, delivery_attempts, messages
from tests.conftest import a_newer_message


def _routed(store: SqlMessageStore, patient: str = "A") -> int:
    [stored] = store.save_batch([Incoming(raw=b"MSH|", channel="test")])
    delivery = NewDelivery("dest", "r", "hl7v2", "text/plain", b"x", patient)
    store.finish_batch([Processed(stored.id, "routed", None, patient, [delivery])])
    return stored.id


def _attempt_rows(store: SqlMessageStore) -> int:
    with store.db_engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(delivery_attempts)).scalar_one())


def _due_now(store: SqlMessageStore) -> None:
    with store.db_engine.begin() as conn:
        conn.execute(update(deliveries).values(next_attempt_at=datetime.now(UTC)))


def test_two_failures_then_a_success_are_three_attempts_with_their_errors(
    store: SqlMessageStore,
) -> None:
    mid = _routed(store)
    soon = datetime.now(UTC) + timedelta(seconds=1)
    [first] = store.claim_due_deliveries(10, owner=None)
    store.record_outcomes(
        [Outcome(first.id, False, "fhir: transaction -> 503", soon, attempt=1, seconds=0.25)]
    )
    _due_now(store)
    [second] = store.claim_due_deliveries(10)
    store.record_outcomes(
        [Outcome(second.id, False, "fhir: timeout (ReadTimeout)", soon, attempt=2, seconds=5.0)]
    )
    _due_now(store)
    [third] = store.claim_due_deliveries(10)
    store.record_outcomes([Outcome(third.id, True, attempt=3, seconds=0.012)])

    [view] = store.get(mid).deliveries  # type: ignore[union-attr]
    assert view.state == "delivered" and view.attempts == 3
    history = view.history
    assert [a.attempt for a in history] == [1, 2, 3]
    assert [a.outcome for a in history] == ["retry", "retry", "delivered"]
    assert (history[0].status, history[0].error_class) == (503, None)
    assert history[0].error == "fhir: transaction -> 503"
    assert (history[1].status, history[1].error_class) == (None, "ReadTimeout")
    assert [a.duration_ms for a in history] == [250, 5000, 12]
    assert history[2].error is None and history[2].at >= history[1].at


def test_a_first_time_success_writes_no_attempt_row_but_shows_one(store: SqlMessageStore) -> None:
    mid = _routed(store)
    [due] = store.claim_due_deliveries(10)
    store.record_outcomes([Outcome(due.id, True, attempt=1, seconds=0.01)])
    assert _attempt_rows(store) == 0
    [view] = store.get(mid).deliveries  # type: ignore[union-attr]
    [only] = view.history
    assert (only.attempt, only.outcome, only.duration_ms) == (1, "delivered", None)
    assert only.at == view.delivered_at


def test_dead_and_needs_patient_attempts_are_kept(store: SqlMessageStore) -> None:
    dead_mid, waits_mid = _routed(store, "A"), _routed(store, "B")
    claimed = {d.message_id: d for d in store.claim_due_deliveries(10)}
    store.record_outcomes(
        [
            Outcome(claimed[dead_mid].id, False, "mllp: AR (0357 207)", None, attempt=1),
            Outcome(
                claimed[waits_mid].id, False, "epic: no patient", needs_patient=True, attempt=1
            ),
        ]
    )
    dead = store.get(dead_mid).deliveries[0].history  # type: ignore[union-attr]
    waits = store.get(waits_mid).deliveries[0].history  # type: ignore[union-attr]
    assert [(a.outcome, a.error_class) for a in dead] == [("dead", "AR")]
    assert [(a.outcome, a.error) for a in waits] == [("needs-patient", "epic: no patient")]


def test_an_outcome_that_no_longer_counts_leaves_no_attempt(store: SqlMessageStore) -> None:
    """A node whose claim was taken over records nothing late: not the outcome, not the
    attempt."""
    _routed(store)
    [due] = store.claim_due_deliveries(10, owner="node-a")
    later = datetime.now(UTC) + timedelta(seconds=1)
    store.record_outcomes([Outcome(due.id, False, "boom", later, attempt=1)], owner="node-b")
    assert _attempt_rows(store) == 0
    store.record_outcomes([Outcome(due.id, False, "boom", later, attempt=1)], owner="node-a")
    assert _attempt_rows(store) == 1


def test_attempts_go_with_their_delivery(store: SqlMessageStore) -> None:
    """Retention deletes deliveries; their attempts follow (ON DELETE CASCADE)."""
    _routed(store)
    [due] = store.claim_due_deliveries(10)
    store.record_outcomes([Outcome(due.id, False, "refused", None, attempt=1)])
    assert _attempt_rows(store) == 1
    with store.db_engine.begin() as conn:
        conn.execute(delete(deliveries))
    assert _attempt_rows(store) == 0


def test_an_error_keeps_no_credential_nor_query_and_is_cut() -> None:
    status, kind, text = attempt_fields(
        "fhir: POST https://ehr.example.org/fhir?patient=123&token=abc -> 401 "
        "Bearer eyJhbGciOi access_token=s3cret \x00 " + "x" * 400
    )
    assert status == 401 and kind is None
    assert text is not None and len(text) == 300
    for leaked in ("123", "abc", "eyJhbGciOi", "s3cret", "\x00"):
        assert leaked not in text
    assert text.startswith("fhir: POST https://ehr.example.org/fhir?… -> 401 Bearer …")
    assert attempt_fields("") == (None, None, None)
    assert attempt_fields("adapter error (KeyError)")[1] == "KeyError"


def test_retention_purges_attempts_with_their_delivered_message(store: SqlMessageStore) -> None:
    mid = _routed(store)
    soon = datetime.now(UTC) + timedelta(seconds=1)
    [due] = store.claim_due_deliveries(10)
    store.record_outcomes([Outcome(due.id, False, "fhir: transaction -> 503", soon, attempt=1)])
    _due_now(store)
    [due] = store.claim_due_deliveries(10)
    store.record_outcomes([Outcome(due.id, True, attempt=2, seconds=0.1)])
    assert _attempt_rows(store) == 2 and store.get(mid).state == "delivered"  # type: ignore[union-attr]
    with store.db_engine.begin() as conn:
        conn.execute(update(messages).values(updated_at=datetime.now(UTC) - timedelta(days=40)))
    a_newer_message(store)
    assert store.purge_range(timedelta(days=30)).rows == 1
    assert _attempt_rows(store) == 0


def test_a_batch_of_first_time_successes_sends_no_statement_for_attempts(
    store: SqlMessageStore,
) -> None:
    """The delivery path's usual case costs nothing extra: no INSERT, not even an empty one."""
    for patient in ("A", "B", "C"):
        _routed(store, patient)
    claimed = store.claim_due_deliveries(10)
    sent: list[str] = []
    event.listen(store.db_engine, "before_cursor_execute", lambda *a: sent.append(str(a[2])))
    store.record_outcomes([Outcome(d.id, True, attempt=1, seconds=0.01) for d in claimed])
    assert sent and not [s for s in sent if "delivery_attempts" in s]
