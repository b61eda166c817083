"""``/api/messages``: list and show metadata (never payloads); replay for admins."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.api.conftest import TestClient, bearer
from tests.api.fakes import FakeMessages

SUMMARY_KEYS = {"id", "received_at", "channel", "control_id", "message_type", "trigger", "state"}


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
    assert all(set(row) == SUMMARY_KEYS for row in rows)
    assert rows[0]["control_id"] == "CTRL-3" and rows[0]["received_at"] == "2026-01-02T03:04:05Z"


def test_list_filters_by_state_and_limit(
    client: TestClient, viewer: dict[str, str], messages: FakeMessages
) -> None:
    rows = client.get("/api/messages?state=error&limit=5", headers=viewer).json()
    assert [row["id"] for row in rows] == [2]
    assert messages.list_calls[-1] == ("error", 5)


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=x", "state=DROP%20TABLE"])
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
        },
        {
            "destination": "dest-1",
            "state": "retrying",
            "attempts": 2,
            "last_error": "HTTP 503",
            "delivered_at": None,
        },
    ]
    assert client.get("/api/messages/2", headers=viewer).json()["reason"].startswith("segment 2")


def test_show_unknown_is_404(client: TestClient, viewer: dict[str, str]) -> None:
    assert client.get("/api/messages/99", headers=viewer).status_code == 404
    assert client.get("/api/messages/0", headers=viewer).status_code == 422


def test_replay_makes_a_new_message(
    client: TestClient, admin: dict[str, str], messages: FakeMessages
) -> None:
    response = client.post("/api/messages/2/replay", headers=admin)
    assert response.status_code == 202
    assert response.json() == {"message_id": 4, "replay_of": 2}
    assert messages.views[4].control_id == "CTRL-2" and messages.views[4].state == "received"


def test_replay_unknown_is_404(client: TestClient, admin: dict[str, str]) -> None:
    assert client.post("/api/messages/99/replay", headers=admin).status_code == 404


def test_viewer_may_not_replay(client: TestClient, viewer: dict[str, str]) -> None:
    assert client.post("/api/messages/1/replay", headers=viewer).status_code == 403
