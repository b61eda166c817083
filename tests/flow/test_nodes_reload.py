"""A reload on one node reaches all (engine/flow/config.py): the reloading node publishes the
configuration's generation with the digest of its files; every other node follows it, loading
its own copy of the files when their digest is the generation's, and refusing (recorded in
``config_applied``) when it is not. Two reloaders on one store, then two ``engine serve`` on one
PostgreSQL: SIGHUP to one, the other's gate takes the new routes."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from engine.flow.config import LoadedConfig, Reloader, config_digest, load_config
from engine.hl7v2.codec import parse_message
from engine.settings import Settings
from engine.store import SqlMessageStore
from engine.store.tables import config_applied
from tests.flow.test_pass_through import ORU, raw
from tests.serve_support import Engine
from tests.test_reload_serve import ADT_ONLY, BROKEN, LAB, ack_code, wait_for

ORU_MESSAGE = parse_message(raw(ORU, 1))


def _node(tmp_path: Path, name: str, routes: Path, store: SqlMessageStore) -> Reloader:
    settings = Settings(var_dir=tmp_path / f"var-{name}", routes_dir=routes)
    applied: list[LoadedConfig] = []
    reloader = Reloader(settings, load_config(settings), lambda c, _s: applied.append(c))
    reloader.share(store, name)
    return reloader


def _status(store: SqlMessageStore) -> dict[str, tuple[int, str]]:
    with store.db_engine.connect() as conn:
        rows = conn.execute(select(config_applied)).all()
    return {r.node: (r.generation, r.status) for r in rows}


@pytest.fixture
def site(tmp_path: Path) -> Path:
    routes = tmp_path / "routes"
    routes.mkdir()
    (routes / "example.yaml").write_text(ADT_ONLY.format(folder=tmp_path / "adt"))
    return routes


def test_a_reload_on_one_node_is_taken_by_the_other(
    store: SqlMessageStore, site: Path, tmp_path: Path
) -> None:
    one, two = _node(tmp_path, "one", site, store), _node(tmp_path, "two", site, store)
    assert one.follow() is None and two.follow() is None  # nothing published yet
    (site / "lab.yaml").write_text(LAB.format(folder=tmp_path / "lab"))

    assert one.reload().applied
    assert one.generation == 1 and store.config_generation() == (1, config_digest(one.settings))
    assert two.current.gate.refuse(ORU_MESSAGE) is not None  # not yet

    followed = two.follow()
    assert followed is not None and followed.applied
    assert two.generation == 1 and two.current.gate.refuse(ORU_MESSAGE) is None
    assert two.follow() is None and one.follow() is None  # both on generation 1
    assert _status(store) == {"one": (1, "applied"), "two": (1, "applied")}


def test_a_node_whose_files_differ_refuses_until_they_match(
    store: SqlMessageStore, site: Path, tmp_path: Path
) -> None:
    """The other node reads its own copy of the directory (a mount not yet synced): it keeps
    running what it runs and says so, once; it takes the generation when the files arrive."""
    copy = tmp_path / "copy"
    shutil.copytree(site, copy)
    one, two = _node(tmp_path, "one", site, store), _node(tmp_path, "two", copy, store)
    (site / "lab.yaml").write_text(LAB.format(folder=tmp_path / "lab"))
    assert one.reload().applied

    refused = two.follow()
    assert refused is not None and not refused.applied
    assert refused.error is not None and "generation 1" in refused.error
    assert two.current.gate.refuse(ORU_MESSAGE) is not None  # still the old routes
    assert _status(store)["two"] == (1, "refused")
    assert two.follow() is None  # said once

    shutil.copy(site / "lab.yaml", copy / "lab.yaml")  # the copy catches up
    taken = two.follow()
    assert taken is not None and taken.applied
    assert two.current.gate.refuse(ORU_MESSAGE) is None
    assert _status(store)["two"] == (1, "applied")


def test_an_invalid_reload_publishes_nothing(
    store: SqlMessageStore, site: Path, tmp_path: Path
) -> None:
    one, two = _node(tmp_path, "one", site, store), _node(tmp_path, "two", site, store)
    (site / "broken.yaml").write_text(BROKEN)
    assert not one.reload().applied
    assert store.config_generation() is None and two.follow() is None


def test_a_node_started_on_the_published_files_takes_their_generation(
    store: SqlMessageStore, site: Path, tmp_path: Path
) -> None:
    one = _node(tmp_path, "one", site, store)
    (site / "lab.yaml").write_text(LAB.format(folder=tmp_path / "lab"))
    assert one.reload().applied
    late = _node(tmp_path, "late", site, store)  # started after the reload, on the same files
    assert late.follow() is None and late.generation == 1
    assert _status(store)["late"] == (1, "applied")


@pytest.fixture
def two_serves(postgres_schema_url: str, site: Path, tmp_path: Path) -> Iterator[list[Engine]]:
    serves = []
    for name in ("a", "b"):
        var = tmp_path / f"var-{name}"
        var.mkdir()
        serve = Engine(
            var,
            site,
            env={
                "ENGINE_DATABASE_URL": postgres_schema_url,
                "ENGINE_WORKERS": "false",
                "ENGINE_LOG_LEVEL": "INFO",
            },
        )
        serve.start()
        serves.append(serve)
    try:
        yield serves
    finally:
        for serve in serves:
            serve.stop()
        from engine.store import create_db_engine
        from engine.store.tables import metadata

        db = create_db_engine(postgres_schema_url)
        metadata.drop_all(db)
        with db.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
        db.dispose()


@pytest.mark.postgres
def test_sighup_to_one_engine_serve_reaches_the_other(
    two_serves: list[Engine], site: Path, tmp_path: Path
) -> None:
    a, b = two_serves
    assert a.proc is not None
    assert ack_code(a.mllp, raw(ORU, 1)) == "AR" and ack_code(b.mllp, raw(ORU, 2)) == "AR"
    (site / "lab.yaml").write_text(LAB.format(folder=tmp_path / "lab"))
    a.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: ack_code(a.mllp, raw(ORU, 3)) == "AA", 30), "a did not reload"
    # b was not signalled: it follows a's generation within a few seconds
    assert wait_for(lambda: ack_code(b.mllp, raw(ORU, 4)) == "AA", 15), b.log.read_text(
        errors="replace"
    )[-3000:]
    # the new routes take effect just before the node logs it: wait for the line too
    assert wait_for(
        lambda: "configuration generation taken" in b.log.read_text(errors="replace"), 10
    ), b.log.read_text(errors="replace")[-3000:]
