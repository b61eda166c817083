"""Two nodes (``engine worker`` processes) on one PostgreSQL database: the leader is killed with
SIGKILL in the middle of an eligibility run; the other node takes the lead, resumes the run
within 30 s and finishes it against the stub payer (over HTTP, counting 270s per member) without
asking again about an appointment the dead leader checked.

The one 270 in flight when the leader died (the payer's ``max_concurrency`` is 1) has no recorded
answer: its item was recorded as started, so it is not asked again; its appointment gets
``needs_action`` (check by hand). No member is asked twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from engine.adapters.registry import load_routes
from engine.flow.process import Processor
from engine.mappings import load_mappings
from engine.sim.payer.http_server import PayerStubServer
from engine.store import Incoming, SqlMessageStore, create_db_engine
from engine.store.tables import eligibility_checks, job_run_items, job_runs
from tests.jobs.conftest import ROUTES, TIMEZONE
from tests.jobs.leader_support import CountingPayer, many_appointments

pytestmark = pytest.mark.postgres

COPIES = 10  # 30 appointments
LATENCY_MS = 250  # the payer's answer: the run takes about 8 s, one 270 at a time
KILL_AFTER = 6  # checks recorded before the leader is killed
TAKEOVER_WITHIN_S = 30.0

PAYERS = """
default:
  name: STUB OVER HTTP
  adapter: x12-http
  url: {url}
  max_concurrency: 1
  timeout_s: 20
  retry: {{max_attempts: 1, base_delay_s: 0, max_delay_s: 0}}
"""


def _wait(what: Callable[[], bool], seconds: float, step: float = 0.1) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if what():
            return True
        time.sleep(step)
    return what()


def _count(store: SqlMessageStore, table: object, *where: object) -> int:
    query = select(func.count()).select_from(table).where(*where)  # type: ignore[arg-type]
    with store.db_engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


@pytest.fixture
def world(postgres_schema_url: str, tmp_path: Path) -> Iterator[tuple[SqlMessageStore, Path]]:
    """30 patients with coverage and appointments the next business day, processed, in the
    test's schema; the folder for the workers' files."""
    from engine.store.tables import metadata

    db = create_db_engine(postgres_schema_url)
    store = SqlMessageStore(db)
    store.migrate()
    (tmp_path / "routes").mkdir()
    (tmp_path / "routes" / "r.yaml").write_text(ROUTES)
    today = datetime.now(ZoneInfo(TIMEZONE)).date()
    store.save_batch(
        [Incoming(raw=raw, channel="test") for raw in many_appointments(today, COPIES)]
    )
    processor = Processor(store, load_routes(defaults=tmp_path / "routes"), load_mappings())
    while processor.process_batch():
        pass
    try:
        yield store, tmp_path
    finally:
        with db.begin() as conn:  # a session left holding a lock fails the drop, never hangs it
            conn.exec_driver_sql("SET LOCAL lock_timeout = '30s'")
            metadata.drop_all(conn)
            conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version, scheduled_jobs")
        db.dispose()


def _worker(
    url: str, home: Path, name: str, payers: Path, **env: str
) -> tuple[subprocess.Popen[bytes], Path]:
    var = home / name
    var.mkdir()
    log = home / f"{name}.log"
    environ = {
        **os.environ,
        "ENGINE_DATABASE_URL": url,
        "ENGINE_VAR_DIR": str(var),
        "ENGINE_ROUTES_DIR": str(home / "routes"),
        "ENGINE_PAYERS_DIR": str(payers),
        "ENGINE_TIMEZONE": TIMEZONE,
        "ENGINE_LOG_LEVEL": "INFO",
        **env,
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "worker"],
            env=environ,
            cwd=var,
            stderr=out,
            stdout=out,
            start_new_session=True,  # its own group: SIGKILL takes the whole node
        )
    return proc, log


def _leads(log: Path) -> bool:
    return "this node leads" in log.read_text(errors="replace")


def test_the_leader_killed_mid_run_another_node_finishes_it_without_a_second_270(
    world: tuple[SqlMessageStore, Path], postgres_schema_url: str
) -> None:
    store, home = world
    payer = CountingPayer(latency_ms=LATENCY_MS)
    stub = PayerStubServer(payer)
    stub.start()
    payers = home / "payers"
    payers.mkdir()
    (payers / "payers.yaml").write_text(PAYERS.format(url=stub.realtime_url))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        first, first_log = _worker(
            postgres_schema_url, home, "a", payers, ENGINE_ELIGIBILITY_ON_START="true"
        )
        procs.append(first)
        assert _wait(lambda: _leads(first_log), 60), first_log.read_text(errors="replace")
        second, second_log = _worker(postgres_schema_url, home, "b", payers)
        procs.append(second)
        assert _wait(lambda: "worker node registered" in second_log.read_text(errors="replace"), 60)

        # the leader's run (5 s after it was elected) is under way: kill it mid-run
        assert _wait(lambda: _count(store, eligibility_checks) >= KILL_AFTER, 60), (
            first_log.read_text(errors="replace")
        )
        os.killpg(first.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        first.wait(10)
        with store.db_engine.connect() as conn:
            run = conn.execute(select(job_runs)).one()
        dead_node = run.node
        with store.db_engine.connect() as conn:  # closed: no lock left for the teardown's drop
            before = {
                r.result_id
                for r in conn.execute(
                    select(job_run_items.c.result_id).where(
                        job_run_items.c.node == dead_node,
                        job_run_items.c.result_id.is_not(None),  # not the one in flight
                    )
                )
            }
        assert run.finished_at is None and len(before) < COPIES * 3

        # the other node leads, resumes the run and finishes it
        assert _wait(lambda: _leads(second_log), TAKEOVER_WITHIN_S)
        assert _wait(
            lambda: _count(store, job_runs, job_runs.c.node != dead_node) == 1,
            TAKEOVER_WITHIN_S - (time.monotonic() - killed_at),
        ), second_log.read_text(errors="replace")
        resumed_after = time.monotonic() - killed_at
        assert _wait(lambda: _count(store, job_runs, job_runs.c.finished_at.is_not(None)) == 1, 60)
        assert second.poll() is None
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        stub.stop()

    with store.db_engine.connect() as conn:
        run = conn.execute(select(job_runs)).one()
        checks = conn.execute(
            select(
                eligibility_checks.c.id,
                eligibility_checks.c.patient_url,
                eligibility_checks.c.reason,
            )
        ).all()
    assert run.node != dead_node and run.outcome.startswith(f"ok: {COPIES * 3} checked")
    assert f"already_checked {len(before)}" in run.outcome
    # every appointment checked once, in one run split over two nodes
    assert len(checks) == COPIES * 3 == len({c.patient_url for c in checks})
    assert _count(store, job_run_items) == COPIES * 3
    member_of = {
        c.patient_url: store.resources_for_patients("Coverage", [c.patient_url])[c.patient_url][0][
            "subscriberId"
        ]
        for c in checks
    }
    checked_by_dead = {member_of[c.patient_url] for c in checks if c.id in before}
    asked = dict(payer.asked)
    assert all(asked[m] == 1 for m in checked_by_dead)  # no second 270 for what it checked
    twice = [m for m, n in asked.items() if n > 1]
    assert twice == []  # not even the one in flight at the kill
    interrupted = [c for c in checks if "not asked twice" in (c.reason or "")]
    assert len(interrupted) <= 1  # that one: told to the front desk, not asked again
    # every member asked, but the one the kill caught between its record and its 270
    assert len(set(member_of.values()) - set(asked)) <= len(interrupted)
    figure = (
        f"resumed {resumed_after:.1f} s after the kill; checked before the kill "
        f"{len(before)}; 270s {sum(asked.values())} for {len(asked)} members "
        f"(asked twice: {len(twice)}; interrupted, not asked again: {len(interrupted)})"
    )
    print(f"\n{figure}")  # noqa: T201 (the measured figure, shown with -s)
    assert resumed_after < TAKEOVER_WITHIN_S
