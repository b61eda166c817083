"""An operator's replay and resend, recorded in the audit trail. On SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from engine.store import (
    ActionRefused,
    Incoming,
    NewDelivery,
    Outcome,
    Processed,
    SqlMessageStore,
    Who,
)
from engine.store.tables import deliveries, messages

CLI = Who("alice", "cli")
RAW = b"MSH|^~\\&|FRONTDESK|CLINIC|ENGINE|HUB|20260102||ADT^A08|C1|P|2.5.1\r"


def _routed(
    store: SqlMessageStore, *destinations: str, patient: str = "CLINIC|MRN1", control: str = "C1"
) -> int:
    """A message routed to ``destinations`` (one delivery each): its id."""
    [stored] = store.save_batch(
        [
            Incoming(
                raw=RAW,
                channel="mllp",
                control_id=control,
                message_type="ADT",
                trigger="A08",
                sending_application="FRONTDESK",
                sending_facility="CLINIC",
                dedupe_key=f"FRONTDESK|CLINIC|{control}",
                patient_key=patient,
            )
        ]
    )
    new = [
        NewDelivery(d, "r", "hl7v2", "text/plain", f"to {d}".encode(), patient)
        for d in destinations
    ]
    store.finish_batch([Processed(stored.id, "routed", None, patient, new)])
    return stored.id


def _run(store: SqlMessageStore, fail: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    """Deliver everything due; deliveries to ``fail`` are dead at once."""
    while due := store.claim_due_deliveries(100):
        store.record_outcomes(
            [
                Outcome(d.id, d.destination not in fail, "" if d.destination not in fail else "503")
                for d in due
            ]
        )


def _rows(store: SqlMessageStore, mid: int) -> list[tuple[str, str, int | None]]:
    with store.db_engine.connect() as conn:
        return [
            (r.destination, r.state, r.resend_of)
            for r in conn.execute(
                select(deliveries.c.destination, deliveries.c.state, deliveries.c.resend_of)
                .where(deliveries.c.message_id == mid)
                .order_by(deliveries.c.id)
            )
        ]


def _state(store: SqlMessageStore, mid: int) -> str:
    view = store.get(mid)
    assert view is not None
    return view.state


def test_resend_goes_to_the_dead_delivery_only_and_settles_the_message(
    store: SqlMessageStore,
) -> None:
    mid = _routed(store, "fhir", "raw")
    _run(store, fail={"raw"})
    assert _state(store, mid) == "dead"
    first = store.resend(mid, CLI)
    [(dest, new_id, old_id)] = first.queued
    assert dest == "raw"
    rows = _rows(store, mid)
    assert rows == [
        ("fhir", "delivered", None),
        ("raw", "resent", None),
        ("raw", "pending", old_id),
    ]
    assert _state(store, mid) == "routed"
    # again while the first resend is queued: nothing made, and it says so
    second = store.resend(mid, CLI)
    assert second.queued == () and "still queued: raw" in second.note
    assert len(_rows(store, mid)) == 3
    [due] = store.claim_due_deliveries(10)
    assert (due.id, due.payload, due.control_id) == (new_id, b"to raw", "C1")
    store.record_outcomes([Outcome(due.id, True)])
    assert _state(store, mid) == "delivered"
    # nothing dead any more: a third resend makes nothing either
    third = store.resend(mid, CLI)
    assert third.queued == () and "nothing dead" in third.note
    assert len(_rows(store, mid)) == 3


def test_a_resend_that_dies_again_leaves_the_message_dead(store: SqlMessageStore) -> None:
    mid = _routed(store, "fhir", "raw")
    _run(store, fail={"raw"})
    store.resend(mid, CLI)
    _run(store, fail={"raw"})
    assert _state(store, mid) == "dead"
    assert [s for _, s, _ in _rows(store, mid)] == ["delivered", "resent", "dead"]
    store.resend(mid, CLI)  # the newest dead one is resent, not the one already resent
    assert [s for _, s, _ in _rows(store, mid)] == ["delivered", "resent", "resent", "pending"]


def test_resend_to_a_named_destination_even_delivered(store: SqlMessageStore) -> None:
    mid = _routed(store, "fhir", "raw")
    _run(store)
    assert _state(store, mid) == "delivered"
    done = store.resend(mid, CLI, destination="fhir")
    assert [d for d, _, _ in done.queued] == ["fhir"]
    assert [s for _, s, _ in _rows(store, mid)] == ["resent", "delivered", "pending"]
    again = store.resend(mid, CLI, destination="fhir")
    assert again.queued == () and "already queued" in again.note
    _run(store)
    assert _state(store, mid) == "delivered"


def test_resend_refuses_an_unknown_destination_naming_the_known_ones(
    store: SqlMessageStore,
) -> None:
    mid = _routed(store, "fhir", "raw")
    with pytest.raises(ActionRefused, match=r"no destination 'epic' \(it has: fhir, raw\)"):
        store.resend(mid, CLI, destination="epic")
    with pytest.raises(KeyError):
        store.resend(10**9, CLI)


def test_resend_of_a_message_without_deliveries_is_refused(store: SqlMessageStore) -> None:
    [stored] = store.save_batch([Incoming(raw=b"junk", channel="mllp", state="error")])
    with pytest.raises(ActionRefused, match="no deliveries .*replay it"):
        store.resend(stored.id, CLI)


def test_resend_queues_behind_the_patients_later_deliveries(store: SqlMessageStore) -> None:
    """Per-patient order: a resend of an old message goes behind what is queued for the patient."""
    first = _routed(store, "raw")
    _run(store, fail={"raw"})
    second = _routed(store, "raw", control="C2")  # queued, the head of the patient's queue
    outcome = store.resend(first, CLI)
    assert [s for _, s, _ in _rows(store, first)] == ["resent", "waiting"]
    [head] = store.claim_due_deliveries(10)
    assert head.message_id == second
    store.record_outcomes([Outcome(head.id, True)])
    [nxt] = store.claim_due_deliveries(10)
    assert nxt.id == outcome.queued[0][1]


def test_replay_keeps_the_header_links_the_original_and_settles_it(
    store: SqlMessageStore,
) -> None:
    mid = _routed(store, "raw")
    _run(store, fail={"raw"})
    assert store.ids_in_state("dead") == [mid]
    replayed = store.replay_message(mid, CLI)
    assert (replayed.replay_of, replayed.original_state) == (mid, "dead")
    with store.db_engine.connect() as conn:
        row = conn.execute(select(messages).where(messages.c.id == replayed.message_id)).one()
    assert (row.control_id, row.message_type, row.trigger) == ("C1", "ADT", "A08")
    assert (row.sending_application, row.sending_facility) == ("FRONTDESK", "CLINIC")
    assert (row.replay_of, row.dedupe_key, row.channel, row.state) == (
        mid,
        None,
        "replay",
        "received",
    )
    assert bytes(row.raw) == RAW and row.patient_key == "CLINIC|MRN1"
    original = store.get(mid)
    assert original is not None and original.state == "replayed"
    assert original.reason == f"replayed as message {replayed.message_id} (was dead)"
    # the dead set is empty now: `replay --state dead` again replays nothing
    assert store.ids_in_state("dead") == []


def test_replay_refuses_a_message_not_yet_processed(store: SqlMessageStore) -> None:
    [stored] = store.save_batch([Incoming(raw=RAW, channel="mllp")])
    with pytest.raises(ActionRefused, match="is received"):
        store.replay_message(stored.id, CLI)
    with pytest.raises(KeyError):
        store.replay_message(10**9, CLI)


def test_every_replay_and_resend_is_audited_refusals_too(store: SqlMessageStore) -> None:
    mid = _routed(store, "fhir", "raw")
    _run(store, fail={"raw"})
    api = Who("svc-console", "api", "127.0.0.1:5555")
    store.resend(mid, api)
    with pytest.raises(ActionRefused):
        store.resend(mid, CLI, destination="nowhere")
    store.replay_message(mid, CLI)
    store.record_audit(
        action="view-payload", actor="bob", source="api", message_id=mid, outcome="refused"
    )
    entries = store.audit_entries(limit=10)
    assert [(e.action, e.actor, e.source, e.outcome) for e in entries] == [
        ("view-payload", "bob", "api", "refused"),
        ("replay", "alice", "cli", "ok"),
        ("resend", "alice", "cli", "refused"),
        ("resend", "svc-console", "api", "ok"),
    ]
    assert all(e.message_id == mid and e.patient_key == "CLINIC|MRN1" for e in entries)
    assert "no destination 'nowhere'" in (entries[2].detail or "")
    assert "raw (delivery" in (entries[3].detail or "")
    assert len(store.audit_entries(limit=2)) == 2
    assert store.audit_entries(message_id=10**9) == []


def _copies(store: SqlMessageStore, mid: int) -> list[int]:
    with store.db_engine.connect() as conn:
        return list(
            conn.scalars(
                select(messages.c.id).where(messages.c.replay_of == mid).order_by(messages.c.id)
            )
        )


def test_a_replayed_message_is_refused_a_second_replay_naming_its_copy(
    store: SqlMessageStore,
) -> None:
    """Before: each replay of the original made one more copy (the reason named the newest)."""
    mid = _routed(store, "raw")
    _run(store, fail={"raw"})
    copy = store.replay_message(mid, CLI).message_id
    refusal = f"message {mid} was already replayed as message {copy}: replay or resend that one"
    for who in (CLI, Who("svc-console", "api", "127.0.0.1:5555")):
        with pytest.raises(ActionRefused, match=refusal):
            store.replay_message(mid, who)
    assert _copies(store, mid) == [copy]
    original = store.get(mid)
    assert original is not None and original.state == "replayed"
    assert original.reason == f"replayed as message {copy} (was dead)"
    [api, cli, ok] = store.audit_entries(message_id=mid, limit=10)
    assert [(e.action, e.actor, e.outcome) for e in (api, cli, ok)] == [
        ("replay", "svc-console", "refused"),
        ("replay", "alice", "refused"),
        ("replay", "alice", "ok"),
    ]
    assert api.detail == refusal


def test_resend_of_a_replayed_message_is_refused_naming_its_copy(
    store: SqlMessageStore,
) -> None:
    """Before: the resend put the replayed original back to routed, then dead, and `replay
    --state dead` replayed it again (one more copy)."""
    mid = _routed(store, "fhir", "raw")
    _run(store, fail={"raw"})
    copy = store.replay_message(mid, CLI).message_id
    before = _rows(store, mid)
    refusal = f"message {mid} was already replayed as message {copy}: replay or resend that one"
    with pytest.raises(ActionRefused, match=refusal):
        store.resend(mid, CLI)
    with pytest.raises(ActionRefused, match=refusal):
        store.resend(mid, CLI, destination="fhir")
    assert _rows(store, mid) == before  # nothing queued, nothing marked resent
    assert _state(store, mid) == "replayed"
    _run(store, fail={"raw"})
    assert mid not in store.ids_in_state("dead")
    [last] = store.audit_entries(message_id=mid, limit=1)
    assert (last.action, last.outcome, last.detail) == ("resend", "refused", refusal)


def _process_copy(store: SqlMessageStore, copy: int, *destinations: str) -> None:
    """The replay's copy processed as the worker does, routed to ``destinations`` again."""
    new = [
        NewDelivery(d, "r", "hl7v2", "text/plain", f"copy to {d}".encode(), "CLINIC|MRN1")
        for d in destinations
    ]
    store.finish_batch([Processed(copy, "routed", None, "CLINIC|MRN1", new)])


def _sent(store: SqlMessageStore) -> list[tuple[int, str]]:
    """Everything due delivered, as (message, destination) in the order sent."""
    sent: list[tuple[int, str]] = []
    while due := store.claim_due_deliveries(100):
        sent += [(d.message_id, d.destination) for d in due]
        store.record_outcomes([Outcome(d.id, True, "") for d in due])
    return sent


def test_a_replay_replaces_the_deliveries_still_queued(store: SqlMessageStore) -> None:
    """A message routed to destinations that are down (its deliveries pending, retrying) and
    replayed after a mapping was fixed: the original's queued deliveries are settled
    ``resent`` and only the copy's go out, once each (before, both did once the destinations
    were back); a later message for another patient is not held up."""
    mid = _routed(store, "ehr", "archive")
    other = _routed(store, "ehr", patient="CLINIC|MRN2", control="C2")
    replayed = store.replay_message(mid, CLI)
    assert _rows(store, mid) == [("ehr", "resent", None), ("archive", "resent", None)]
    _process_copy(store, replayed.message_id, "ehr", "archive")
    copy = replayed.message_id
    assert sorted(_sent(store)) == sorted([(other, "ehr"), (copy, "ehr"), (copy, "archive")])
    assert _state(store, copy) == "delivered" and _state(store, mid) == "replayed"
    [entry] = [e for e in store.audit_entries() if e.action == "replay"]
    assert "queued to archive, ehr: replaced" in entry.detail


def test_a_replay_that_would_reorder_a_patients_messages_is_refused(
    store: SqlMessageStore,
) -> None:
    """A later message for the same patient waits behind the original's delivery: the copy,
    queued once it is processed, would be sent after it (an A08 before its A01), so the replay
    is refused, nothing changed, until the original's delivery is delivered or dead."""
    mid = _routed(store, "ehr")
    later = _routed(store, "ehr", control="C2")
    assert _rows(store, later) == [("ehr", "waiting", None)]
    with pytest.raises(ActionRefused, match="ahead of later messages for the same patient"):
        store.replay_message(mid, CLI)
    assert _rows(store, mid) == [("ehr", "pending", None)]
    assert _rows(store, later) == [("ehr", "waiting", None)]
    _run(store, fail={"ehr"})  # dead now, the later one promoted and dead too
    assert store.replay_message(mid, CLI).original_state == "dead"


def test_a_replay_is_refused_while_a_delivery_is_claimed(store: SqlMessageStore) -> None:
    """Claimed by a dispatcher: on its way, or its lease run out while it may have been (the
    copy would be a second send); refused, nothing changed, until it settles."""
    mid = _routed(store, "ehr")
    [claimed] = store.claim_due_deliveries(10, lease=0.0)  # its lease already run out
    with pytest.raises(ActionRefused, match="being sent to ehr"):
        store.replay_message(mid, CLI)
    assert _rows(store, mid) == [("ehr", "pending", None)]
    assert _state(store, mid) == "routed"
    store.record_outcomes([Outcome(claimed.id, True, "")])
    assert _state(store, mid) == "delivered"
    replayed = store.replay_message(mid, CLI)  # settled now: the copy skips ehr, which had it
    assert replayed.original_state == "delivered"


def test_a_replay_is_refused_where_another_route_delivered(store: SqlMessageStore) -> None:
    """Two routes to one destination, one delivered and one still queued: the copy skips a
    destination the message was delivered to, so superseding the queued one would lose it."""
    [stored] = store.save_batch([Incoming(raw=RAW, channel="mllp", patient_key="CLINIC|MRN1")])
    new = [
        NewDelivery("ehr", route, "hl7v2", "text/plain", route.encode(), "CLINIC|MRN3")
        for route in ("adt", "notes")
    ]
    store.finish_batch([Processed(stored.id, "routed", None, "CLINIC|MRN3", new)])
    [first] = store.claim_due_deliveries(10)  # the queue's head: the second waits behind it
    store.record_outcomes([Outcome(first.id, True, "")])
    assert _rows(store, stored.id) == [("ehr", "delivered", None), ("ehr", "pending", None)]
    with pytest.raises(ActionRefused, match="still queued to ehr, where it .* was delivered"):
        store.replay_message(stored.id, CLI)
    assert _rows(store, stored.id) == [("ehr", "delivered", None), ("ehr", "pending", None)]
    # to every destination, the copy skips none: the queued one is replaced
    store.replay_message(stored.id, CLI, everywhere=True)
    assert _rows(store, stored.id) == [("ehr", "delivered", None), ("ehr", "resent", None)]
