"""A reload when something goes wrong (engine/flow/config.py), found by a review on 7 December:
refused reloads must not remove the snapshot the worker runs; a reload applied here whose
publication fails says so and is published when the database answers; a generation read just
before a reload here is not taken for another node's; a node started while its files changed
runs, and reports, what it loaded; a record the database refused is written again."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import select

from engine.flow.config import (
    LoadedConfig,
    Reloader,
    config_digest,
    load_config,
    load_running_config,
)
from engine.hl7v2.codec import parse_message
from engine.settings import Settings
from engine.store import SqlMessageStore
from engine.store.tables import config_applied
from tests.flow.test_pass_through import ORU, raw
from tests.flow.test_reload import BROKEN_ROUTE, EXTRA_ROUTE
from tests.test_reload_serve import ADT_ONLY

ORU_MESSAGE = parse_message(raw(ORU, 1))


class Flaky:
    """The store, with its configuration calls failing while ``down`` names them."""

    def __init__(self, store: SqlMessageStore) -> None:
        self.store, self.down = store, set[str]()

    def __getattr__(self, name: str) -> Any:
        real = getattr(self.store, name)
        if name not in ("publish_config", "record_config", "config_generation"):
            return real

        def call(*args: Any, **kwargs: Any) -> Any:
            if name in self.down:
                raise ConnectionError("the database is away")
            return real(*args, **kwargs)

        return call


def _site(tmp_path: Path) -> Settings:
    routes = tmp_path / "routes"
    routes.mkdir()
    (routes / "example.yaml").write_text(ADT_ONLY.format(folder=tmp_path / "adt"))
    return Settings(var_dir=tmp_path / "var", routes_dir=routes)


def _node(settings: Settings, generations: Any, name: str) -> tuple[Reloader, list[Settings]]:
    running: list[Settings] = []
    reloader = Reloader(settings, load_config(settings), lambda _c, s: running.append(s))
    reloader.share(generations, name)
    return reloader, running


def _status(store: SqlMessageStore) -> dict[str, tuple[int, str]]:
    with store.db_engine.connect() as conn:
        rows = conn.execute(select(config_applied)).all()
    return {r.node: (r.generation, r.status) for r in rows}


def _pair(store: SqlMessageStore, tmp_path: Path) -> tuple[Settings, Flaky, Reloader, Reloader]:
    """Two nodes on one site's files: ``one`` on a store that can fail, ``two`` on the store."""
    settings = _site(tmp_path)
    flaky = Flaky(store)
    one, _ = _node(settings, flaky, "one")
    two, _ = _node(settings, store, "two")
    return settings, flaky, one, two


def test_refused_reloads_keep_the_snapshot_the_worker_runs(tmp_path: Path) -> None:
    """Before, every reload copied the files and kept the newest three copies: three refused
    reloads removed the running one, and a worker restarted after a crash then failed to start
    ("routes directory not found") until the engine was restarted."""
    settings = _site(tmp_path)
    reloader, running = _node(settings, None, "one")  # one node, nothing shared
    assert reloader.reload().applied
    [worker_runs] = running
    assert settings.routes_dir is not None
    (settings.routes_dir / "bad.yaml").write_text(BROKEN_ROUTE)
    for _ in range(5):
        assert not reloader.reload().applied
    assert worker_runs.routes_dir is not None and worker_runs.routes_dir.is_dir()
    assert load_config(worker_runs).routes.routes  # what a restarted worker loads
    # a refused copy is removed at once: only the running one is left
    assert list((settings.var_dir / "config").iterdir()) == [worker_runs.routes_dir.parent]


def test_a_reload_not_published_says_so_and_is_published_when_the_database_answers(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    settings, flaky, one, two = _pair(store, tmp_path)
    assert settings.routes_dir is not None
    (settings.routes_dir / "lab.yaml").write_text(EXTRA_ROUTE.format(folder=tmp_path / "lab"))
    flaky.down = {"publish_config"}
    result = one.reload()
    assert result.applied and result.warning is not None
    assert "not published to the other nodes (ConnectionError)" in result.warning
    assert result.as_dict()["warning"] == result.warning
    assert store.config_generation() is None and two.follow() is None  # nothing to take yet
    one.follow()  # still away: tried again, nothing lost
    assert store.config_generation() is None
    flaky.down = set()
    assert one.follow() is None  # published now
    assert store.config_generation() == (1, config_digest(settings))
    taken = two.follow()
    assert taken is not None and taken.applied
    assert two.current.gate.refuse(ORU_MESSAGE) is None
    assert _status(store) == {"one": (1, "applied"), "two": (1, "applied")}


def test_a_newer_reload_elsewhere_wins_over_one_not_yet_published(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    settings, flaky, one, two = _pair(store, tmp_path)
    assert one.reload().applied
    two.follow()  # the same files: taken without a reload
    assert (one.generation, two.generation) == (1, 1)
    flaky.down = {"publish_config"}
    assert one.reload().warning is not None  # applied on one only
    assert settings.routes_dir is not None
    (settings.routes_dir / "lab.yaml").write_text(EXTRA_ROUTE.format(folder=tmp_path / "lab"))
    assert two.reload().applied  # generation 2, the newer files
    flaky.down = set()
    taken = one.follow()
    assert taken is not None and taken.applied and one.generation == 2
    assert store.config_generation() == (2, config_digest(settings))
    assert one.current.gate.refuse(ORU_MESSAGE) is None


def test_a_generation_read_just_before_a_reload_here_is_not_refused(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    """The poll read generation N; a reload here then published N+1 before the poll went on.
    Before, the poll took N for another node's, found the files changed and recorded this
    node "refused" for the generation it had just made."""
    settings = _site(tmp_path)
    assert settings.routes_dir is not None
    routes = settings.routes_dir

    class Slow:
        """The store, whose generation is read and then, before it is answered, a reload here
        starts (and finishes, when nothing holds it back)."""

        def __init__(self) -> None:
            self.reloading: threading.Thread | None = None

        def __getattr__(self, name: str) -> Any:
            return getattr(store, name)

        def config_generation(self) -> tuple[int, str] | None:
            read = store.config_generation()
            if self.reloading is None:
                (routes / "lab.yaml").write_text(EXTRA_ROUTE.format(folder=tmp_path / "lab"))
                self.reloading = threading.Thread(target=one.reload)
                self.reloading.start()
                self.reloading.join(0.5)
            return read

    slow = Slow()
    one, _ = _node(settings, slow, "one")
    assert one.reload().applied  # generation 1 (reads nothing)
    assert one.follow() is None
    assert slow.reloading is not None
    slow.reloading.join(10)
    assert one.generation == 2
    assert _status(store) == {"one": (2, "applied")}
    assert one.follow() is None


def test_a_node_started_while_its_files_changed_runs_what_it_loaded_and_follows(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    """``engine serve`` loads a copy of the files; the files change before its reloader is made
    and another node publishes them. Before, the reloader hashed the files, not the copy, took
    the generation as already running and never loaded it."""
    settings = _site(tmp_path)
    config, copy = load_running_config(settings)
    assert settings.routes_dir is not None
    (settings.routes_dir / "lab.yaml").write_text(EXTRA_ROUTE.format(folder=tmp_path / "lab"))
    applied: list[LoadedConfig] = []
    node = Reloader.on_snapshot(settings, config, copy, lambda c, _s: applied.append(c))
    node.share(store, "starting")
    store.publish_config(config_digest(settings), "other")
    taken = node.follow()
    assert taken is not None and taken.applied
    assert node.current.gate.refuse(ORU_MESSAGE) is None and len(applied) == 1


def test_a_record_the_database_refused_is_written_again(
    store: SqlMessageStore, tmp_path: Path
) -> None:
    settings = _site(tmp_path)
    flaky = Flaky(store)
    one, _ = _node(settings, flaky, "one")
    flaky.down = {"record_config"}
    assert one.reload().applied and one.generation == 1
    assert _status(store) == {}
    flaky.down = set()
    assert one.follow() is None
    assert _status(store) == {"one": (1, "applied")}


def test_snapshots_of_other_live_processes_sharing_the_var_folder_are_kept(
    tmp_path: Path,
) -> None:
    """``engine serve`` and ``engine worker`` processes beside it may share one var folder,
    each running its own snapshot. Before, each applied reload kept the newest three of all:
    three workers taking a reload removed the serve's, and its worker processes could not be
    started again. Now a process prunes its own older snapshots and those of ended processes,
    never a live one's."""
    import subprocess
    import sys

    settings = _site(tmp_path)
    base = settings.var_dir / "config"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    try:
        theirs = base / f"20261207T000000000000-{other.pid}"
        gone = base / f"20261207T000000000001-{ended.pid}"
        for folder in (theirs, gone):
            (folder / "routes").mkdir(parents=True)
        reloader, running = _node(settings, None, "one")
        for _ in range(5):
            assert reloader.reload().applied
        mine = sorted(p for p in base.iterdir() if p.name.endswith(f"-{os.getpid()}"))
        assert theirs.is_dir(), "a live process's snapshot was removed"
        assert not gone.exists(), "an ended process's snapshot was kept"
        assert len(mine) == 3 and running[-1].routes_dir is not None
        assert running[-1].routes_dir.parent == mine[-1]
    finally:
        other.kill()
        other.wait()
