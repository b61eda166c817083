"""Two processes upgrading one empty database at the same moment: both succeed, one applies the
steps, the other finds them applied (engine/store/db.py ``hold_migration_lock``)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text

import engine.store
from engine.store import create_db_engine
from tests.conftest import fresh_schema

#: a child: import everything, say it is ready, wait for the go file, then migrate; alembic's
#: "Running upgrade" lines (one per step applied) go to stderr
_CHILD = """
import logging, sys, time
from pathlib import Path
from engine.store import SqlMessageStore, create_db_engine
logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
logging.getLogger("alembic.runtime.migration").setLevel(logging.INFO)
url, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
db = create_db_engine(url)
with db.connect():
    pass  # connected before the start, so both begin the upgrade together
ready.touch()
while not go.exists():
    time.sleep(0.005)
SqlMessageStore(db).migrate()
db.dispose()
"""


def _race(url: str, folder: Path) -> list[subprocess.CompletedProcess[str]]:
    go = folder / "go"
    procs = []
    for n in range(2):
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _CHILD, url, str(folder / f"ready{n}"), str(go)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=Path(__file__).resolve().parents[2],
            )
        )
    deadline = time.monotonic() + 60
    while not all((folder / f"ready{n}").exists() for n in range(2)):
        if time.monotonic() >= deadline or any(p.poll() is not None for p in procs):
            # one died before it was ready (or neither got there): the other waits for a go
            # that will not come, so it is ended before its output is read
            for p in procs:
                p.kill()
            raise AssertionError(f"a migrating process did not start: {_outputs(procs)}")
        time.sleep(0.01)
    go.touch()
    done = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


def _outputs(procs: list[subprocess.Popen[str]]) -> list[tuple[int | None, str]]:
    errs = [p.communicate(timeout=30)[1][-2000:] for p in procs]
    return [(p.returncode, err) for p, err in zip(procs, errs, strict=True)]


def _check(done: list[subprocess.CompletedProcess[str]]) -> None:
    for d in done:
        assert d.returncode == 0, d.stderr[-3000:]
    applied = [d.stderr.count("Running upgrade") for d in done]
    # one process applied every step, the other none
    assert sorted(applied) == [0, len(list(_scripts().walk_revisions()))], applied


def _scripts() -> ScriptDirectory:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(engine.store.__file__).parent / "migrations"))
    return ScriptDirectory.from_config(cfg)


def test_two_processes_migrate_one_sqlite_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'engine.db'}"
    _check(_race(url, tmp_path))
    assert (tmp_path / "engine.migratelock").exists()


@pytest.fixture
def empty_schema_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is an empty schema of this test's own."""
    with fresh_schema("deploy_mig") as url:
        yield url


@pytest.mark.postgres
def test_two_processes_migrate_one_postgres_database(empty_schema_url: str, tmp_path: Path) -> None:
    _check(_race(empty_schema_url, tmp_path))
    db = create_db_engine(empty_schema_url)
    try:
        with db.connect() as conn:
            head = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    finally:
        db.dispose()
    assert head == _scripts().get_current_head()
