"""Dates typed into the console's searches (review13 L3, L7), on the real app and store (SQLite
and PostgreSQL): the ends of the calendar answer 422 naming the field, never a 500
(OverflowError); a date-only "to" on the message search includes that whole day."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from engine.api.auth import Role
from engine.store import SqlMessageStore
from tests.console.test_messages_page_support import (
    ZONE,
    cells,
    client_for,
    dead_message,
    text_of,
)
from tests.console.test_reports import _client as reports_client


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("since=9999-12-31T23:59", "from"),
        ("since=0001-01-01T00:00%2B14:00", "from"),
        ("since=0001-01-01", "from"),
        ("until=9999-12-31", "to"),
        ("until=9999-12-31T23:59-14:00", "to"),
    ],
)
def test_messages_dates_out_of_range_answer_422(
    store: SqlMessageStore, tmp_path: Path, query: str, field: str
) -> None:
    answer = client_for(store, tmp_path, Role.VIEWER).get(f"/console/messages?{query}")
    assert answer.status_code == 422
    assert f"{field}: " in text_of(answer.text) and "out of range" in text_of(answer.text)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"from": "9999-12-25", "to": "9999-12-31"}, "from"),
        ({"from": "0001-01-01", "to": "0001-01-05"}, "from"),
        ({"from": "2026-12-25", "to": "9999-12-31"}, "to"),
    ],
)
def test_reports_dates_out_of_range_answer_422(
    store: SqlMessageStore, tmp_path: Path, params: dict[str, str], field: str
) -> None:
    client = reports_client(store, tmp_path)
    for path in ("/console/reports", "/console/reports/charges.csv"):
        answer = client.get(path, params=params)
        assert answer.status_code == 422, path
        assert f"{field}: " in answer.text and "out of range" in answer.text


def test_a_date_only_to_includes_that_whole_day(store: SqlMessageStore, tmp_path: Path) -> None:
    a = dead_message(store, 1)
    b = dead_message(store, 2)
    today = datetime.now(ZoneInfo(ZONE)).date().isoformat()
    client = client_for(store, tmp_path, Role.VIEWER)

    def ids(query: str) -> list[int]:
        answer = client.get(f"/console/messages?{query}")
        assert answer.status_code == 200, answer.text
        return [int(row[0]) for row in cells(answer.text, "messages") if row[0].isdigit()]

    assert ids(f"since={today}&until={today}") == [b, a]
    assert ids(f"until={today}") == [b, a]
    assert ids(f"until={today}T00:00") == []  # a time is taken as given
    assert ids("until=2000-01-01") == []
