"""``engine_alerts_active{rule}`` (engine/alerts/gauge.py): the alerts raised now, by rule, read
from the store when the page is scraped; every configured rule at 0 until it raises; the rest
of the page still served when the database is away. On SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine, event

from engine.alerts.gauge import ActiveAlertsGauge
from engine.alerts.state import AlertStates, Finding
from engine.metrics import EngineMetrics
from engine.store import create_db_engine
from engine.store.db import utcnow
from tests.metrics_support import parse


def _page(metrics: EngineMetrics) -> dict[str, float]:
    return parse(metrics.exposition().decode())


def _active(page: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in page.items() if k.startswith("engine_alerts_active")}


def test_each_rule_shows_how_many_subjects_it_is_raised_for(db_engine: Engine) -> None:
    metrics = EngineMetrics()
    gauge = ActiveAlertsGauge(db_engine, ("dead", "backlog", "disk"))
    metrics.registry.register(gauge)
    assert _active(_page(metrics)) == {
        'engine_alerts_active{rule="backlog"}': 0,
        'engine_alerts_active{rule="dead"}': 0,
        'engine_alerts_active{rule="disk"}': 0,
    }
    states, now = AlertStates(db_engine), utcnow()
    states.apply(
        [
            Finding("dead", "", "dead-letters", True, "2 dead"),
            Finding("backlog", "fhir", "queue-age", True, "fhir: 20 min"),
            Finding("backlog", "epic", "queue-age", True, "epic: 30 min"),
            Finding("disk", "", "disk", False, "fine"),
            Finding("gone", "", "disk", True, "low"),  # a rule no longer in alerts.yaml
        ],
        now=now,
    )
    assert _active(_page(metrics)) == {
        'engine_alerts_active{rule="backlog"}': 2,
        'engine_alerts_active{rule="dead"}': 1,
        'engine_alerts_active{rule="disk"}': 0,
        'engine_alerts_active{rule="gone"}': 1,  # still raised: shown until retired
    }
    later = now + timedelta(minutes=1)
    states.apply([Finding("backlog", "fhir", "queue-age", False, "fhir: cleared")], now=later)
    states.retire(["dead", "backlog", "disk"], now=later)
    gauge.rules = ("dead", "backlog")  # a reload took disk out of the file
    assert _active(_page(metrics)) == {
        'engine_alerts_active{rule="backlog"}': 1,
        'engine_alerts_active{rule="dead"}': 1,
    }


def test_a_scrape_reads_the_raised_rows_once_and_registering_reads_nothing(
    db_engine: Engine,
) -> None:
    statements: list[str] = []

    def seen(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    event.listen(db_engine, "before_cursor_execute", seen)
    try:
        metrics = EngineMetrics()
        metrics.registry.register(ActiveAlertsGauge(db_engine, ("dead",)))
        assert statements == []  # describe(), not collect(), at registration
        _page(metrics)
    finally:
        event.remove(db_engine, "before_cursor_execute", seen)
    [query] = [s for s in statements if "alerts" in s]  # (SQLite's PRAGMAs at connect aside)
    assert "GROUP BY" in query and "alerts.state" in query and "alert_events" not in query


def test_the_page_is_served_without_them_when_the_database_is_away(tmp_path: Path) -> None:
    away = create_db_engine(f"sqlite:///{tmp_path / 'none' / 'engine.db'}")  # no such folder
    metrics = EngineMetrics()
    metrics.registry.register(ActiveAlertsGauge(away, ("dead",)))
    metrics.record_error("receive")
    page = _page(metrics)
    assert _active(page) == {}
    assert page['engine_errors_total{stage="receive"}'] == 1
