"""A delivery the EHR refuses because it does not know the patient waits in state
``needs-patient``: neither retried nor dead, visible in the message list, and it does not block
the patient's later deliveries to that destination. An operator resends it once the EHR knows the
patient. On SQLite and PostgreSQL, through the store and through the real dispatcher."""

from __future__ import annotations

import asyncio

import pytest

from engine.adapters.destination import DeliveryResult, Payload
from engine.adapters.registry import load_routes
from engine.flow.deliver import Dispatcher
from engine.routes.loader import RouteSet
from engine.store import (
    MESSAGE_STATES,
    Incoming,
    MessageQuery,
    NewDelivery,
    Outcome,
    Processed,
    SqlMessageStore,
    Who,
)

CLI = Who("alice", "cli")
PATIENT = "CLINIC|MRN404"


class KnowsOnePatient:
    """An EHR that knows one MRN: any other patient's payload is refused as unknown."""

    def __init__(self, name: str, mrn: str) -> None:
        self.name = name
        self.mrn = mrn.encode()
        self.attempts: list[Payload] = []
        self.delivered: list[Payload] = []

    async def deliver(self, payload: Payload) -> DeliveryResult:
        self.attempts.append(payload)
        if self.mrn not in payload.body:
            return DeliveryResult.unknown_patient("Patient?identifier: no match")
        self.delivered.append(payload)
        return DeliveryResult.success("201 Created")

    async def close(self) -> None:
        return None


def _routed(
    store: SqlMessageStore, *destinations: str, patient: str = PATIENT, body: bytes = b"MRN404"
) -> int:
    [stored] = store.save_batch([Incoming(raw=b"MSH|", channel="test", patient_key=patient)])
    new = [NewDelivery(d, "r", "hl7v2", "text/plain", body, patient) for d in destinations]
    store.finish_batch([Processed(stored.id, "routed", None, patient, new)])
    return stored.id


def _states(store: SqlMessageStore, mid: int) -> dict[str, str]:
    view = store.get(mid)
    assert view is not None
    return {d.destination: d.state for d in view.deliveries}


def _state(store: SqlMessageStore, mid: int) -> str:
    view = store.get(mid)
    assert view is not None
    return view.state


def test_needs_patient_is_a_message_state() -> None:
    assert "needs-patient" in MESSAGE_STATES
    assert MessageQuery(state="NEEDS-PATIENT").state == "needs-patient"


def test_unknown_patient_waits_neither_retried_nor_dead(store: SqlMessageStore) -> None:
    mid = _routed(store, "epic", "files")
    due = {d.destination: d for d in store.claim_due_deliveries(10)}
    store.record_outcomes(
        [
            Outcome(due["epic"].id, False, "Patient?identifier: no match", needs_patient=True),
            Outcome(due["files"].id, True),
        ]
    )
    assert _states(store, mid) == {"epic": "needs-patient", "files": "delivered"}
    assert _state(store, mid) == "needs-patient"
    [epic] = [d for d in store.get(mid).deliveries if d.destination == "epic"]  # type: ignore[union-attr]
    assert (epic.attempts, epic.last_error) == (1, "Patient?identifier: no match")
    # not claimable again (no retry), not a dead letter, not counted as queued
    assert store.claim_due_deliveries(10) == []
    assert store.ids_in_state("dead") == []
    assert store.counts()["deliveries_pending"] == 0
    assert store.backlog() == []
    assert store.repair_queues() == 0
    assert _states(store, mid)["epic"] == "needs-patient"
    # the message list finds it, and says why
    [line] = store.search(MessageQuery(state="needs-patient"))
    assert line.id == mid
    assert line.failing == ("epic (needs patient): Patient?identifier: no match",)


def test_the_message_waits_for_its_other_deliveries_first(store: SqlMessageStore) -> None:
    mid = _routed(store, "epic", "files")
    due = {d.destination: d for d in store.claim_due_deliveries(10)}
    store.record_outcomes([Outcome(due["epic"].id, False, "unknown", needs_patient=True)])
    assert _state(store, mid) == "routed"  # files is still pending
    store.record_outcomes([Outcome(due["files"].id, True)])
    assert _state(store, mid) == "needs-patient"


def test_the_patients_later_deliveries_to_that_destination_still_flow(
    store: SqlMessageStore,
) -> None:
    """A document for a patient the EHR does not know must not hold back the patient's next
    messages to it (an ADT that may well register the patient): the next one is promoted."""
    first = _routed(store, "epic")
    second = _routed(store, "epic")  # queued behind the first
    assert _states(store, second) == {"epic": "waiting"}
    [head] = store.claim_due_deliveries(10)
    store.record_outcomes([Outcome(head.id, False, "unknown", needs_patient=True)])
    assert _states(store, second) == {"epic": "pending"}
    third = _routed(store, "epic")  # queued after: the head of the queue is the second
    assert _states(store, third) == {"epic": "waiting"}
    [nxt] = store.claim_due_deliveries(10)
    assert nxt.message_id == second
    store.record_outcomes([Outcome(nxt.id, True)])
    assert (_state(store, first), _state(store, second)) == ("needs-patient", "delivered")
    # once nothing else is queued, a new delivery for the patient is the head at once
    [last] = store.claim_due_deliveries(10)
    store.record_outcomes([Outcome(last.id, True)])
    fourth = _routed(store, "epic")
    assert _states(store, fourth) == {"epic": "pending"}


def test_resend_sends_the_same_payload_again_and_settles(store: SqlMessageStore) -> None:
    mid = _routed(store, "epic", "files")
    due = {d.destination: d for d in store.claim_due_deliveries(10)}
    store.record_outcomes(
        [
            Outcome(due["epic"].id, False, "unknown", needs_patient=True),
            Outcome(due["files"].id, True),
        ]
    )
    done = store.resend(mid, CLI)  # by default: what is dead or waits for its patient
    [(dest, new_id, old_id)] = done.queued
    assert (dest, old_id) == ("epic", due["epic"].id)
    assert _state(store, mid) == "routed"
    view = store.get(mid)
    assert view is not None
    assert [d.state for d in view.deliveries] == ["resent", "delivered", "pending"]
    [again] = store.claim_due_deliveries(10)
    assert (again.id, again.payload) == (new_id, b"MRN404")
    store.record_outcomes([Outcome(again.id, True)])
    assert _state(store, mid) == "delivered"
    [entry] = store.audit_entries(limit=1)
    assert (entry.action, entry.outcome, entry.patient_key) == ("resend", "ok", PATIENT)


def test_resend_to_the_named_destination_that_needs_its_patient(store: SqlMessageStore) -> None:
    mid = _routed(store, "epic")
    [due] = store.claim_due_deliveries(10)
    store.record_outcomes([Outcome(due.id, False, "unknown", needs_patient=True)])
    done = store.resend(mid, CLI, destination="epic")
    assert [d for d, _, _ in done.queued] == ["epic"]
    assert _states(store, mid) == {"epic": "pending"}  # the old row is resent, the new pending


@pytest.fixture
def routes(tmp_path) -> RouteSet:  # type: ignore[no-untyped-def]
    folder = tmp_path / "routes"
    folder.mkdir()
    (folder / "r.yaml").write_text(
        f"""
destinations:
  epic:
    type: file
    directory: {tmp_path}/epic
    retry: {{max_attempts: 5, base_delay_s: 0, max_delay_s: 0}}
routes:
  - name: adt
    match: {{message: [ADT]}}
    mapping: none
    destinations: [epic]
"""
    )
    return load_routes(defaults=folder)


def _dispatch(store: SqlMessageStore, routes: RouteSet, epic: KnowsOnePatient) -> None:
    """Run the real dispatcher until nothing is due (or 3 s)."""

    async def main() -> None:
        stop = asyncio.Event()
        dispatcher = Dispatcher(store, routes, {"epic": epic}, idle_s=0.02)
        task = asyncio.create_task(dispatcher.run(stop))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3.0
        while loop.time() < deadline:
            await asyncio.sleep(0.1)
            if not (await asyncio.to_thread(store.counts)).get("deliveries_pending"):
                break
        await asyncio.sleep(0.2)  # a retry, were there one, would be claimed by now
        stop.set()
        await task

    asyncio.run(main())


def test_the_dispatcher_stops_at_needs_patient_and_a_resend_delivers(
    store: SqlMessageStore, routes: RouteSet
) -> None:
    epic = KnowsOnePatient("epic", "MRN1")
    unknown = _routed(store, "epic", body=b"document for MRN404")
    later = _routed(store, "epic", body=b"ADT^A04 MRN404 registered as MRN1")
    _dispatch(store, routes, epic)
    assert len([p for p in epic.attempts if p.message_id == unknown]) == 1  # not retried
    assert _state(store, unknown) == "needs-patient"
    assert _state(store, later) == "delivered"  # not held behind it
    assert store.ids_in_state("dead") == []
    # the EHR knows the patient now: the same payload again reaches it
    epic.mrn = b"MRN404"
    store.resend(unknown, CLI)
    _dispatch(store, routes, epic)
    assert [p.body for p in epic.delivered if p.message_id == unknown] == [b"document for MRN404"]
    assert _state(store, unknown) == "delivered"
