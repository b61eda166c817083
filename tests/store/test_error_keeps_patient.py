"""A message that fails processing keeps the patient it was received for (found by a review on
7 December): before, its ``error`` outcome (no patient: the message did not parse or map)
cleared the row's patient key, so its replay's copy had none, and the patient's next message
was processed and delivered beside or before it, out of order."""

from __future__ import annotations

from sqlalchemy import select

from engine.store import Incoming, Processed, SqlMessageStore, Who
from engine.store.tables import messages

PATIENT = "CLINIC|MRN-77"


def _message(n: int) -> Incoming:
    raw = f"MSH|^~\\&|FRONTDESK|CLINIC|ENGINE|HUB|20261207||ADT^A08|C{n}|P|2.5.1\r".encode()
    return Incoming(raw=raw, channel="mllp", control_id=f"C{n}", patient_key=PATIENT)


def _patient_of(store: SqlMessageStore, mid: int) -> str | None:
    with store.db_engine.connect() as conn:
        query = select(messages.c.patient_key).where(messages.c.id == mid)
        return conn.execute(query).scalar_one()


def test_an_error_keeps_the_patient_and_its_replay_comes_before_the_next(
    store: SqlMessageStore,
) -> None:
    [first] = store.save_batch([_message(1)])
    assert [m[0] for m in store.claim_received("w1")] == [first.id]
    store.finish_batch([Processed(first.id, "error", "mapping failed", worker="w1")])
    assert _patient_of(store, first.id) == PATIENT

    copy = store.replay_message(first.id, Who("admin", "cli"))
    [second] = store.save_batch([_message(2)])
    # one worker takes the copy; another, at the same moment, must not take the next one
    assert [m[0] for m in store.claim_received("A", 1)] == [copy.message_id]
    assert store.claim_received("B", 10) == []
    store.finish_batch([Processed(copy.message_id, "routed", worker="A", patient_key=PATIENT)])
    assert [m[0] for m in store.claim_received("B", 10)] == [second.id]
