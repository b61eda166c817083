"""The alerts' schedule in the running engine: ``engine serve``'s worker evaluates alerts.yaml
every ENGINE_ALERTS_INTERVAL_S and notifies a real HTTP receiver of a dead letter, once; and with
an ``engine worker`` beside it on one PostgreSQL (two schedulers evaluating every second), the
notice still goes out once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.alerts.conftest import Hook
from tests.metrics_support import parse
from tests.serve_support import Engine, free_port, send_stream

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hl7"


def _routes(folder: Path) -> Path:
    folder.mkdir()
    nowhere = free_port()  # nothing listens: the delivery is refused, one attempt, dead
    (folder / "example.yaml").write_text(
        f"""
destinations:
  lab-fhir:
    type: fhir
    base_url: http://127.0.0.1:{nowhere}/fhir
    mode: transaction
    timeout_s: 2
    retry: {{max_attempts: 1, base_delay_s: 1, max_delay_s: 1}}
routes:
  - {{name: adt-to-lab, match: {{message: [ADT]}}, mapping: fhir, destinations: [lab-fhir]}}
"""
    )
    (folder / "alerts.yaml").write_text(
        """
channels:
  hook: {type: webhook, url_env: TEST_ALERTS_HOOK, timeout_s: 3}
rules:
  - {name: dead, kind: dead-letters, window_minutes: 60, threshold: 1}
  - {name: db, kind: database, max_query_ms: 5000}
"""
    )
    return folder


def _send_adt(engine: Engine) -> None:
    acked: list[str] = []
    raw = (FIXTURES / "adt_a01.hl7").read_bytes().replace(b"|AL|NE|", b"|||", 1)
    send_stream(engine.mllp, [("A01", raw)], acked)
    assert acked == ["A01"]


def _wait(hook: Hook, n: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while len(hook.bodies) < n:
        assert time.monotonic() < deadline, f"{len(hook.bodies)} notices, {n} awaited"
        time.sleep(0.2)


def test_engine_serve_notifies_on_its_schedule_once(tmp_path: Path, webhook: Hook) -> None:
    var = tmp_path / "var"
    var.mkdir()
    env = {"ENGINE_ALERTS_INTERVAL_S": "1", "TEST_ALERTS_HOOK": webhook.url}
    engine = Engine(var, _routes(tmp_path / "routes"), env)
    engine.start()
    try:
        assert _alert_gauges(engine) == {"dead": 0, "db": 0}  # every rule, before any alert
        _send_adt(engine)
        _wait(webhook, 1, 30)
        time.sleep(3)  # three more evaluations: nothing more to say
        assert _alert_gauges(engine) == {"dead": 1, "db": 0}  # the receiver's page, from the store
    finally:
        engine.stop()
    [text] = webhook.texts()
    assert text.startswith("[engine] ALERT: dead — 1 delivery dead-lettered in the last 60 min")


def _alert_gauges(engine: Engine) -> dict[str, float]:
    """``engine_alerts_active`` by rule, from the receiver's ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{engine.http}/metrics", timeout=10) as resp:
        page = parse(resp.read().decode())
    prefix = 'engine_alerts_active{rule="'
    return {k[len(prefix) : -2]: v for k, v in page.items() if k.startswith(prefix)}


@pytest.mark.postgres
def test_two_nodes_on_one_postgresql_send_one_notice(
    tmp_path: Path, webhook: Hook, postgres_schema_url: str
) -> None:
    var = tmp_path / "var"
    var.mkdir()
    routes = _routes(tmp_path / "routes")
    env = {
        "ENGINE_ALERTS_INTERVAL_S": "1",
        "TEST_ALERTS_HOOK": webhook.url,
        "ENGINE_DATABASE_URL": postgres_schema_url,
    }
    engine = Engine(var, routes, env)
    engine.start()
    other_env = {
        **os.environ,
        **env,
        "ENGINE_VAR_DIR": str(var / "other"),
        "ENGINE_ROUTES_DIR": str(routes),
        "ENGINE_LOG_LEVEL": "WARNING",
    }
    with (tmp_path / "worker.log").open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "engine", "worker"], env=other_env, cwd=var, stderr=log
        )
    try:
        time.sleep(2)  # both schedulers running
        _send_adt(engine)
        _wait(webhook, 1, 30)
        time.sleep(4)  # each node evaluated some more times
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-2000:]
    finally:
        worker.terminate()
        worker.wait(30)
        engine.stop()
        _drop_schema_tables(postgres_schema_url)  # the session's schema, for the next tests
    assert len(webhook.bodies) == 1, webhook.texts()


def _drop_schema_tables(url: str) -> None:
    from sqlalchemy import text

    from engine.store import create_db_engine
    from engine.store.tables import metadata

    db = create_db_engine(url)
    try:
        metadata.drop_all(db)
        with db.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
            conn.execute(text("DROP TABLE IF EXISTS scheduled_jobs"))
    finally:
        db.dispose()
