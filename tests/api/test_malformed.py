"""Malformed paths, queries and headers: every one answers 4xx, never a 500 with a traceback.

An id is 1 .. 2**63 - 1 (the store's BIGINT); anything else in an id's place — 0, -1, 2**63,
10**30, a word — is not a valid id and answers 422. A valid id with no message answers 404. The
messages routes run here on the real store (SQLite), which is what overflowed before.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from datetime import date
from typing import Any

import pytest
from fastapi import FastAPI

from engine.api.app import create_app
from engine.api.auth_settings import AuthSettings
from engine.logs import TextFormatter
from engine.metrics import EngineMetrics
from engine.settings import Settings
from engine.store import SqlMessageStore
from tests.api.conftest import TestClient, bearer
from tests.api.fakes import FakeHealth, FakeIngest

BIGINT_MAX = 2**63 - 1
BAD_IDS = [str(2**63), str(10**30), "-1", "0", "abc", "1.5", "1e3", "9" * 5000, "%00", "%20"]


@pytest.fixture
def real_client(
    settings: Settings,
    store: SqlMessageStore,
    ingest: FakeIngest,
    health: FakeHealth,
    metrics: EngineMetrics,
    auth: AuthSettings,
) -> TestClient:
    """The app on the real store (SQLite in a temp dir), so ids reach a real database."""
    app = create_app(
        settings, ingest=ingest, messages=store, health=health, metrics=metrics, auth=auth
    )
    return TestClient(app)


@pytest.fixture
def admin(token: Callable[[str], str]) -> dict[str, str]:
    return bearer(token("admin"))


@pytest.mark.parametrize("message_id", BAD_IDS)
def test_show_refuses_an_id_out_of_range_or_not_a_number(
    real_client: TestClient, admin: dict[str, str], message_id: str
) -> None:
    response = real_client.get(f"/api/messages/{message_id}", headers=admin)
    assert response.status_code == 422, response.text
    assert "Traceback" not in response.text


@pytest.mark.parametrize("message_id", BAD_IDS)
def test_replay_refuses_an_id_out_of_range_or_not_a_number(
    real_client: TestClient, admin: dict[str, str], message_id: str
) -> None:
    response = real_client.post(f"/api/messages/{message_id}/replay", headers=admin)
    assert response.status_code == 422, response.text


@pytest.mark.parametrize("message_id", ["1", "12345", str(BIGINT_MAX)])
def test_a_valid_id_with_no_message_is_not_found(
    real_client: TestClient, admin: dict[str, str], message_id: str
) -> None:
    assert real_client.get(f"/api/messages/{message_id}", headers=admin).status_code == 404
    replay = real_client.post(f"/api/messages/{message_id}/replay", headers=admin)
    assert replay.status_code == 404
    assert replay.json() == {"detail": f"no message {message_id}"}


@pytest.mark.parametrize(
    "query",
    [
        f"limit={2**63}",
        f"limit={10**30}",
        "limit=-1",
        "limit=1.5",
        "limit=" + "9" * 5000,
        "limit=",
        "state=" + "a" * 33,
        "state=%00",
    ],
)
def test_list_refuses_a_malformed_query(
    real_client: TestClient, admin: dict[str, str], query: str
) -> None:
    assert real_client.get(f"/api/messages?{query}", headers=admin).status_code == 422


def test_list_ignores_an_unknown_parameter(real_client: TestClient, admin: dict[str, str]) -> None:
    assert real_client.get("/api/messages?id=99999999999999999999", headers=admin).json() == []


@pytest.mark.parametrize(
    "value", ["tomorrow", "2026-02-30", "2026-13-01", "99999-01-01", "1" * 5000, "2026-1-1x"]
)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_eligibility_refuses_a_date_that_is_not_one(
    make_app: Callable[..., FastAPI], admin: dict[str, str], method: str, value: str
) -> None:
    app = make_app()
    app.state.eligibility = object()  # never reached: the date is checked first
    path = "/api/eligibility" if method == "GET" else "/api/eligibility/check"
    response = TestClient(app).request(method, path, params={"date": value}, headers=admin)
    assert response.status_code == 422, response.text


@pytest.mark.parametrize(
    "length", ["\xb2", "1" * 5000, "-1", "+1", " 1", "0x10", "1_0", str(10**30)]
)
@pytest.mark.parametrize("path", ["/hl7v2", "/fhir"])
def test_a_malformed_content_length_is_refused(
    client: TestClient, token: Callable[[str], str], path: str, length: str
) -> None:
    media = "text/plain" if path == "/hl7v2" else "application/json"
    headers: dict[str, str | bytes] = {**bearer(token("integration")), "content-type": media}
    headers["content-length"] = length.encode("latin-1")  # as a server decodes header bytes
    response = client.post(path, content=b"", headers=headers)
    assert response.status_code in (400, 413), response.text


@pytest.mark.parametrize("query", ["", "?limit=" + str(2**63), "?name[]=x"])
def test_metrics_ignores_any_query(client: TestClient, query: str) -> None:
    assert client.get(f"/metrics{query}").status_code == 200


class _Capture(logging.Handler):
    """Each record as the text format writes it."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(TextFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def text_log() -> Iterator[list[str]]:
    capture = _Capture()
    root = logging.getLogger()
    root.addHandler(capture)
    try:
        yield capture.lines
    finally:
        root.removeHandler(capture)


class _Broken:
    """A store whose every call fails as a lost database would."""

    def _fail(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret detail: patient DOE^JANE")

    list = get = replay = _fail


def test_an_unexpected_error_is_a_500_with_a_generic_body_and_one_log_line(
    settings: Settings,
    ingest: FakeIngest,
    health: FakeHealth,
    metrics: EngineMetrics,
    auth: AuthSettings,
    admin: dict[str, str],
    text_log: list[str],
) -> None:
    app = create_app(
        settings, ingest=ingest, messages=_Broken(), health=health, metrics=metrics, auth=auth
    )
    client = TestClient(app)  # raise_server_exceptions: an error that escapes fails the test
    response = client.get("/api/messages/7?state=x", headers=admin)
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error"}
    errors = [line for line in text_log if " ERROR " in line]
    assert len(errors) == 1, text_log
    assert "error=RuntimeError" in errors[0]
    assert "path=/api/messages/7" in errors[0]
    everything = "\n".join(text_log)
    assert "Traceback" not in everything
    assert "DOE" not in everything and "state=x" not in everything


def test_the_text_format_names_an_exception_without_its_traceback() -> None:
    try:
        raise ValueError("DOE^JANE")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, "f", 1, "failed", (), sys.exc_info())
    line = TextFormatter().format(record)
    assert "error=ValueError" in line
    assert "Traceback" not in line and "DOE" not in line


def test_a_date_out_of_range_is_a_422_naming_it(
    make_app: Callable[..., FastAPI], admin: dict[str, str]
) -> None:
    """9999-12-31 parses as a date, but the job adds business days to it: refused up front."""

    class Service:
        async def check_upcoming(self, *, start: date, days: int, force: bool) -> list[Any]:
            start.replace(year=start.year + 1)  # overflows for year 9999
            return []

    app = make_app()
    app.state.eligibility = Service()
    client = TestClient(app)
    response = client.post("/api/eligibility/check?date=9999-12-31", headers=admin)
    assert response.status_code == 422
    assert "'date' must lie between" in response.json()["detail"]
    assert client.get("/api/eligibility?date=0001-01-01", headers=admin).status_code == 422
