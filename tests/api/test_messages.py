"""``/api/messages``: search and show metadata; the payload on purpose, audited; replay, resend and
mark handled for admins, audited, refusals too."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.api.conftest import TestClient, bearer
from tests.api.fakes import FakeMessages, sample_view

SUMMARY_KEYS = {"id", "received_at", "channel", "control_id", "message_type", "trigger", "state"}
LINE_KEYS = SUMMARY_KEYS | {"sender", "reason", "failing", "replay_of"}


@pytest.fixture
def viewer(token: Callable[[str], str]) -> dict[str, str]:
    return bearer(token("viewer"))


@pytest.fixture
def admin(token: Callable[[str], str]) -> dict[str, str]:
    return bearer(token("admin"))


def test_list_newest_first_with_metadata_only(client: TestClient, viewer: dict[str, str]) -> None:
    response = client.get("/api/messages", headers=viewer)
    assert response.status_code == 200
    rows = response.json()
    assert [row["id"] for row in rows] == [3, 2, 1]
    assert all(set(row) == LINE_KEYS for row in rows)
    assert rows[0]["control_id"] == "CTRL-3" and rows[0]["received_at"] == "2026-01-02T03:04:05Z"


def test_list_filters_by_state_and_limit(
    client: TestClient, viewer: dict[str, str], messages: FakeMessages
) -> None:
    rows = client.get("/api/messages?state=error&limit=5", headers=viewer).json()
    assert [row["id"] for row in rows] == [2]
    assert (messages.queries[-1].state, messages.queries[-1].limit) == ("error", 5)


def test_list_says_why_and_passes_every_filter(
    client: TestClient, viewer: dict[str, str], messages: FakeMessages
) -> None:
    rows = client.get("/api/messages", headers=viewer).json()
    assert rows[0]["failing"] == ["dest-1 (retrying): HTTP 503"]
    assert rows[1]["reason"].startswith("segment 2")
    query = (
        "type=ADT&trigger=A04&sender=FRONTDESK%5ECLINIC&mrn=CLINIC%7CMRN1&control_id=C1"
        "&since=2026-03-01T00:00:00&until=2026-03-02T00:00:00%2B00:00&before=9"
    )
    assert client.get(f"/api/messages?{query}", headers=viewer).status_code == 200
    q = messages.queries[-1]
    assert (q.message_type, q.trigger, q.sender, q.mrn, q.control_id, q.before) == (
        "ADT",
        "A04",
        "FRONTDESK^CLINIC",
        "CLINIC|MRN1",
        "C1",
        9,
    )
    # a time without an offset is in the engine's time zone (America/New_York by default)
    assert q.since is not None and q.since.utcoffset() is not None
    assert q.since.isoformat() == "2026-03-01T00:00:00-05:00"
    assert q.until is not None and q.until.isoformat() == "2026-03-02T00:00:00+00:00"


def test_list_refuses_an_unknown_state_naming_it(
    client: TestClient, viewer: dict[str, str]
) -> None:
    response = client.get("/api/messages?state=deadd", headers=viewer)
    assert response.status_code == 422
    assert "unknown state 'deadd'" in response.json()["detail"]
    assert "replayed" in response.json()["detail"]


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=1001", "limit=x", "state=DROP%20TABLE", "since=yesterday", "before=0"],
)
def test_list_refuses_bad_parameters(
    client: TestClient, viewer: dict[str, str], query: str
) -> None:
    assert client.get(f"/api/messages?{query}", headers=viewer).status_code == 422


def test_show_includes_reason_and_deliveries(client: TestClient, viewer: dict[str, str]) -> None:
    body = client.get("/api/messages/3", headers=viewer).json()
    assert set(body) == SUMMARY_KEYS | {"reason", "deliveries", "warnings"}
    assert body["warnings"] == []
    assert body["deliveries"] == [
        {
            "destination": "dest-0",
            "state": "delivered",
            "attempts": 1,
            "last_error": None,
            "delivered_at": "2026-01-02T03:04:05Z",
            "history": [],  # each attempt (the store's: tests/console/test_message_attempts.py)
        },
        {
            "destination": "dest-1",
            "state": "retrying",
            "attempts": 2,
            "last_error": "HTTP 503",
            "delivered_at": None,
            "history": [],
        },
    ]
    assert client.get("/api/messages/2", headers=viewer).json()["reason"].startswith("segment 2")


def test_show_unknown_is_404(client: TestClient, viewer: dict[str, str]) -> None:
    assert client.get("/api/messages/99", headers=viewer).status_code == 404
    assert client.get("/api/messages/0", headers=viewer).status_code == 422


def test_replay_makes_a_new_message_and_is_audited(
    client: TestClient, admin: dict[str, str], messages: FakeMessages
) -> None:
    response = client.post("/api/messages/2/replay", headers=admin)
    assert response.status_code == 202
    assert response.json() == {"message_id": 4, "replay_of": 2}
    assert messages.views[4].control_id == "CTRL-2" and messages.views[4].state == "received"
    [entry] = messages.audit
    assert (entry["action"], entry["actor"], entry["source"]) == ("replay", "test-admin", "api")
    assert entry["message_id"] == 2 and entry["outcome"] == "ok"


def test_replay_unknown_is_404_and_unprocessed_is_409(
    client: TestClient, admin: dict[str, str], messages: FakeMessages
) -> None:
    assert client.post("/api/messages/99/replay", headers=admin).status_code == 404
    messages.views[5] = sample_view(5, state="processing")
    refused = client.post("/api/messages/5/replay", headers=admin)
    assert refused.status_code == 409 and "is processing" in refused.json()["detail"]


@pytest.mark.parametrize(
    ("path", "action"), [("replay", "replay"), ("resend", "resend"), ("handled", "mark-handled")]
)
def test_viewer_may_not_replay_resend_or_mark_handled_and_the_refusal_is_audited(
    client: TestClient, viewer: dict[str, str], messages: FakeMessages, path: str, action: str
) -> None:
    assert client.post(f"/api/messages/1/{path}", headers=viewer).status_code == 403
    [entry] = messages.audit
    assert (entry["action"], entry["actor"], entry["outcome"]) == (action, "test-viewer", "refused")
    assert entry["message_id"] == 1 and len(messages.views) == 3 and messages.resends == []
    assert messages.handled == {}


def test_resend_dead_deliveries_or_one_destination(
    client: TestClient, admin: dict[str, str], messages: FakeMessages
) -> None:
    response = client.post("/api/messages/3/resend", headers=admin)
    assert response.status_code == 202
    assert response.json() == {
        "message_id": 3,
        "queued": [{"destination": "dest-1", "delivery_id": 7, "resend_of": 2}],
        "note": "",
    }
    assert (
        client.post("/api/messages/3/resend?destination=dest-0", headers=admin).status_code == 202
    )
    assert messages.resends == [(3, None), (3, "dest-0")]
    unknown = client.post("/api/messages/3/resend?destination=epic", headers=admin)
    assert unknown.status_code == 422 and "no destination 'epic'" in unknown.json()["detail"]
    assert client.post("/api/messages/99/resend", headers=admin).status_code == 404
    assert client.post("/api/messages/0/resend", headers=admin).status_code == 422


def test_raw_gives_the_payload_as_received_and_is_audited(
    client: TestClient, viewer: dict[str, str], messages: FakeMessages
) -> None:
    response = client.get("/api/messages/2/raw", headers=viewer)
    assert response.status_code == 200
    assert response.headers["content-type"] == "x-application/hl7-v2+er7"
    assert response.content.startswith(b"MSH|^~\\&|FRONTDESK|CLINIC|")
    assert client.get("/api/messages/99/raw", headers=viewer).status_code == 404
    assert [(e["action"], e["actor"], e["message_id"], e["outcome"]) for e in messages.audit] == [
        ("view-payload", "test-viewer", 2, "ok"),
        ("view-payload", "test-viewer", 99, "refused"),
    ]
    assert str(messages.audit[0]["peer"]).startswith("testclient")


def test_raw_needs_the_viewer_role_and_a_refusal_is_audited(
    client: TestClient, token: Callable[[str], str], messages: FakeMessages
) -> None:
    integration = bearer(token("integration"))
    assert client.get("/api/messages/2/raw", headers=integration).status_code == 403
    assert [(e["actor"], e["outcome"]) for e in messages.audit] == [("test-integration", "refused")]
    assert client.get("/api/messages/2/raw").status_code == 401


def test_list_takes_type_with_trigger_and_state_in_any_case(
    client: TestClient, viewer: dict[str, str], messages: FakeMessages
) -> None:
    """Before: ``type=ADT^A01`` (what the type column shows) searched for a type ``ADT^A01``
    and found nothing; ``state=DEAD`` was refused."""
    assert client.get("/api/messages?type=ADT%5EA01&state=DEAD", headers=viewer).status_code == 200
    q = messages.queries[-1]
    assert (q.message_type, q.trigger, q.state) == ("ADT", "A01", "dead")
    both = "/api/messages?type=adt%5Ea01&trigger=A01"
    assert client.get(both, headers=viewer).status_code == 200
    assert (messages.queries[-1].message_type, messages.queries[-1].trigger) == ("adt", "a01")
    response = client.get("/api/messages?type=ADT%5EA01&trigger=A04", headers=viewer)
    assert response.status_code == 422
    assert response.json()["detail"] == "type ADT^A01 and trigger A04 disagree"
    assert client.get("/api/messages?state=Deadd", headers=viewer).status_code == 422
