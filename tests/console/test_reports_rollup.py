"""The reports page and its CSVs through the rollup (SQLite and PostgreSQL): the charts and every
CSV are the same bytes when the days are read from the rows, when they come from the stored
days, and after the stored days are dropped and read again; a late no-show shows on the next
view."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select

from engine.console.pages_reports import REPORTS
from engine.store import SqlMessageStore
from engine.store.reports import clear_kept
from engine.store.tables import report_rollups
from tests.api.conftest import TestClient
from tests.console.test_reports import RANGE, _client, _seed
from tests.console.test_reports_store import OCT31, add_appointment, local


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    clear_kept()
    yield
    clear_kept()


def _shown(client: TestClient) -> dict[str, str]:
    """The page's charts and summaries, and each CSV, as text."""
    page = client.get("/console/reports", params=RANGE).text
    main = page[page.index("<main>") : page.index("</main>")]
    out = {"charts": "\n".join(re.findall(r"<svg .*?</svg>", main, re.S)), "page": main}
    for name, _title in REPORTS:
        answer = client.get(f"/console/reports/{name}.csv", params=RANGE)
        assert answer.status_code == 200, answer.text
        out[name] = answer.text
    return out


def _stored(store: SqlMessageStore) -> int:
    with store.db_engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(report_rollups)).scalar_one())


def test_the_charts_and_csvs_are_the_same_from_the_rows_and_from_the_rollup(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    _seed(store)
    client = _client(store, tmp_path)
    first = _shown(client)  # read from the rows, then stored
    assert _stored(store) == 4 * 3  # four reports, three closed days
    clear_kept()
    assert _shown(client) == first  # from the stored days
    with store.db_engine.begin() as conn:
        conn.execute(delete(report_rollups))
    assert _shown(client) == first  # from the rows again
    assert "10-31 · no-show rate: 50%" in first["charts"]
    # a no-show recorded late (SIU S26 for an appointment of 31 October) shows at once
    add_appointment(store, 1, local(OCT31, 9), "noshow", "urn:uuid:p1")
    late = _shown(client)
    assert "10-31 · no-show rate: 100%" in late["charts"]
    assert late["no-show-rate"].splitlines()[1] == "2026-10-31,2,2,100.0"
    assert late["charges"] == first["charges"]
