"""``/api/messages`` on the real store (SQLite and PostgreSQL): the audit trail names the token's
subject; search filters and keyset paging reach the database."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from engine.store import Incoming, NewDelivery, Outcome, Processed, SqlMessageStore
from tests.api.conftest import TestClient, bearer


@pytest.fixture
def messages(store: SqlMessageStore) -> SqlMessageStore:  # the API's port: the real store
    return store


def _dead(store: SqlMessageStore, n: int) -> int:
    [stored] = store.save_batch(
        [
            Incoming(
                raw=f"MSH|^~\\&|FRONTDESK|CLINIC|||20260102||ADT^A08|C{n}|P|2.5.1\r".encode(),
                channel="mllp",
                control_id=f"C{n}",
                message_type="ADT",
                trigger="A08",
                patient_key=f"CLINIC|MRN{n}",
            )
        ]
    )
    new = NewDelivery("raw", "r", "hl7v2", "text/plain", b"x", f"CLINIC|MRN{n}")
    store.finish_batch([Processed(stored.id, "routed", None, f"CLINIC|MRN{n}", [new])])
    [due] = store.claim_due_deliveries(10)
    store.record_outcomes([Outcome(due.id, False, "HTTP 400 refused")])
    return stored.id


def test_resend_replay_and_raw_are_audited_with_the_token_subject(
    client: TestClient, store: SqlMessageStore, token: Callable[[str], str]
) -> None:
    admin, viewer = bearer(token("admin")), bearer(token("viewer"))
    first, second = _dead(store, 1), _dead(store, 2)
    assert client.post(f"/api/messages/{first}/resend", headers=admin).status_code == 202
    again = client.post(f"/api/messages/{first}/resend", headers=admin).json()
    assert again["queued"] == [] and "still queued: raw" in again["note"]
    assert client.post(f"/api/messages/{second}/replay", headers=viewer).status_code == 403
    assert client.post(f"/api/messages/{second}/replay", headers=admin).status_code == 202
    raw = client.get(f"/api/messages/{second}/raw", headers=viewer)
    assert raw.status_code == 200 and raw.content.endswith(b"|C2|P|2.5.1\r")
    entries = store.audit_entries(limit=10)
    assert {e.peer for e in entries} == {"testclient:50000"}  # the caller, for every row
    trail = [(e.action, e.actor, e.source, e.message_id, e.patient_key, e.outcome) for e in entries]
    assert trail == [
        ("view-payload", "test-viewer", "api", second, "CLINIC|MRN2", "ok"),
        ("replay", "test-admin", "api", second, "CLINIC|MRN2", "ok"),
        ("replay", "test-viewer", "api", second, "CLINIC|MRN2", "refused"),
        ("resend", "test-admin", "api", first, "CLINIC|MRN1", "ok"),
        ("resend", "test-admin", "api", first, "CLINIC|MRN1", "ok"),
    ]


def test_search_filters_and_pages_on_the_store(
    client: TestClient, store: SqlMessageStore, token: Callable[[str], str]
) -> None:
    viewer = bearer(token("viewer"))
    ids = [_dead(store, n) for n in range(1, 4)]
    rows = client.get("/api/messages?state=dead&limit=2", headers=viewer).json()
    assert [r["id"] for r in rows] == ids[::-1][:2]
    assert rows[0]["failing"] == ["raw (dead): HTTP 400 refused"]
    rest = client.get(f"/api/messages?state=dead&before={rows[-1]['id']}", headers=viewer).json()
    assert [r["id"] for r in rest] == ids[:1]
    by_mrn = client.get("/api/messages?mrn=MRN2", headers=viewer).json()
    assert [r["id"] for r in by_mrn] == [ids[1]]
    assert client.get("/api/messages?since=2999-01-01", headers=viewer).json() == []


def test_raw_of_a_fhir_message_is_fhir_json_and_a_v2_message_er7(
    client: TestClient, store: SqlMessageStore, token: Callable[[str], str]
) -> None:
    """Before: a FHIR JSON message was answered as ``x-application/hl7-v2+er7``."""
    viewer = bearer(token("viewer"))
    body = b'{"resourceType":"Bundle","type":"message"}'
    [fhir] = store.save_batch(
        [Incoming(raw=body, channel="http", kind="fhir", message_type="Bundle")]
    )
    response = client.get(f"/api/messages/{fhir.id}/raw", headers=viewer)
    assert response.status_code == 200 and response.content == body
    assert response.headers["content-type"] == "application/fhir+json"
    v2 = client.get(f"/api/messages/{_dead(store, 1)}/raw", headers=viewer)
    assert v2.headers["content-type"] == "x-application/hl7-v2+er7"
    by_type = client.get("/api/messages?type=ADT%5EA08&state=DEAD", headers=viewer).json()
    assert [r["id"] for r in by_type] == [2]


def test_replay_all_destinations_is_asked_by_query(
    client: TestClient, store: SqlMessageStore, token: Callable[[str], str]
) -> None:
    """``?all_destinations=true`` makes a copy that goes everywhere (channel replay-all); without
    it the copy skips the destinations its original was delivered to (channel replay)."""
    admin = bearer(token("admin"))
    first, second = _dead(store, 1), _dead(store, 2)
    plain = client.post(f"/api/messages/{first}/replay", headers=admin).json()
    everywhere = client.post(
        f"/api/messages/{second}/replay?all_destinations=true", headers=admin
    ).json()
    channels = {
        v.id: v.channel
        for v in (store.get(plain["message_id"]), store.get(everywhere["message_id"]))
        if v is not None
    }
    assert channels == {plain["message_id"]: "replay", everywhere["message_id"]: "replay-all"}


def test_mark_handled_is_the_consoles_action_for_admins_audited_with_the_token_subject(
    client: TestClient, store: SqlMessageStore, token: Callable[[str], str]
) -> None:
    """``POST /api/messages/{id}/handled``: the console's "mark handled" (the same store action,
    audited ``mark-handled``), admins only as replay and resend; the message keeps its state."""
    admin, integration = bearer(token("admin")), bearer(token("integration"))
    first, second = _dead(store, 1), _dead(store, 2)
    path = f"/api/messages/{first}/handled"
    refused = client.post(path, headers=integration, json={"note": "x"})
    assert (refused.status_code, refused.json()) == (403, {"detail": "requires the admin role"})
    done = client.post(path, headers=admin, json={"note": "  called the lab  "})
    assert done.status_code == 200, done.text
    body = done.json()
    assert {k: body[k] for k in ("message_id", "handled_by", "note")} == {
        "message_id": first,
        "handled_by": "test-admin",
        "note": "called the lab",
    }
    assert body["handled_at"].endswith("Z") or body["handled_at"].endswith("+00:00")
    mark = store.handled_marks([first])[first]
    assert (mark.handled_by, mark.note) == ("test-admin", "called the lab")
    view = store.get(first)
    assert view is not None and view.state == "dead"
    again = client.post(path, headers=admin, json={"note": "twice"})
    assert again.status_code == 409
    assert again.json()["detail"].startswith(f"message {first} was marked handled by test-admin")
    # no body at all: a mark without a note
    bare = client.post(f"/api/messages/{second}/handled", headers=admin)
    assert bare.status_code == 200 and bare.json()["note"] is None
    entries = store.audit_entries(limit=10)
    assert {e.peer for e in entries} == {"testclient:50000"}
    trail = [(e.action, e.actor, e.source, e.message_id, e.outcome) for e in entries]
    assert trail == [
        ("mark-handled", "test-admin", "api", second, "ok"),
        ("mark-handled", "test-admin", "api", first, "refused"),
        ("mark-handled", "test-admin", "api", first, "ok"),
        ("mark-handled", "test-integration", "api", first, "refused"),
    ]


def test_mark_handled_refuses_a_message_in_another_state_naming_it(
    client: TestClient, store: SqlMessageStore, token: Callable[[str], str]
) -> None:
    """Only an error, dead, unrouted or needs-patient message is marked: another answers 409
    with its state; an unknown id 404; a note past 500 characters or a body that is not the
    note 422 (nothing recorded)."""
    admin = bearer(token("admin"))
    [received] = store.save_batch(
        [Incoming(raw=b"MSH|^~\\&|A|B|||20260102||ADT^A08|H1|P|2.5.1\r", channel="mllp")]
    )
    answer = client.post(f"/api/messages/{received.id}/handled", headers=admin, json={})
    assert answer.status_code == 409
    assert answer.json()["detail"] == (
        f"message {received.id} is received: only a message that is error, dead, unrouted, "
        "needs-patient is marked handled"
    )
    unknown = client.post("/api/messages/999999/handled", headers=admin, json={"note": "n"})
    assert (unknown.status_code, unknown.json()) == (404, {"detail": "no message 999999"})
    dead = _dead(store, 1)
    for bad in ({"note": "x" * 501}, {"note": 7}, ["note"]):
        answer = client.post(f"/api/messages/{dead}/handled", headers=admin, json=bad)
        assert answer.status_code == 422, bad
    assert store.handled_marks([received.id, dead]) == {}
