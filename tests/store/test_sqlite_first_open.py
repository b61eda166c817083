"""Processes opening a new SQLite database at the same moment (two engine processes started
together on a new store): each connection switches the file to WAL, which SQLite
refused at once with ``database is locked`` when another connection was doing the same (1 in
12 processes of a pair, 7 December; it hung the CI's two-process migration test). Here four
connections at once, many times: none fails."""

from __future__ import annotations

import threading
from pathlib import Path

from engine.store import create_db_engine


def test_connections_opening_a_new_database_at_once_all_open(tmp_path: Path) -> None:
    failures: list[BaseException] = []
    for round_ in range(40):
        url = f"sqlite:///{tmp_path / f'engine-{round_}.db'}"
        engines = [create_db_engine(url) for _ in range(4)]
        start = threading.Barrier(len(engines))

        def open_it(engine: object, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                with engine.connect():  # type: ignore[attr-defined]
                    pass
            except BaseException as exc:  # reported below
                failures.append(exc)

        threads = [threading.Thread(target=open_it, args=(e,)) for e in engines]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for e in engines:
            e.dispose()
    assert not failures, failures[:3]
