"""Shared fixtures: the message store on SQLite and on a real PostgreSQL.

PostgreSQL comes from ENGINE_TEST_POSTGRES_URL (default: the local cluster, database ``test``). Each
test run works in a schema of its own, dropped at the end, so runs never see each other's rows. The
PostgreSQL tests fail (they do not skip) when the server is down: CI starts it, and a silent skip
would hide a broken store. ENGINE_TEST_SKIP_POSTGRES=1 skips them deliberately.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client import values
from sqlalchemy import Engine, text

from engine.metrics import reset_multiprocess_dir
from engine.store import SqlMessageStore, create_db_engine

POSTGRES_URL = os.environ.get(
    "ENGINE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@pytest.fixture(autouse=True)
def _default_takeover_limit(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The takeover limit is per process (engine/store/nodes.py): a test that sets it, or opens
    a database under a shell's ENGINE_NODE_DEAD_AFTER_S, leaves it as it was for the next."""
    from engine.store import nodes

    monkeypatch.delenv("ENGINE_NODE_DEAD_AFTER_S", raising=False)
    monkeypatch.setattr(nodes, "_dead_after", nodes.DEAD_AFTER)
    yield


@pytest.fixture(scope="session")
def postgres_schema_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped after the session."""
    with fresh_schema("t") as url:
        yield url


@contextmanager
def fresh_schema(prefix: str) -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a new schema named ``<prefix>_<random>``, dropped
    after (skips the test when ENGINE_TEST_SKIP_POSTGRES=1)."""
    if os.environ.get("ENGINE_TEST_SKIP_POSTGRES") == "1":
        pytest.skip("ENGINE_TEST_SKIP_POSTGRES=1")
    schema = f"{prefix}_{secrets.token_hex(4)}"
    admin = create_db_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """The store's database, once on SQLite (WAL, in a temp dir) and once on PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'engine.db'}"
    else:
        url = request.getfixturevalue("postgres_schema_url")
    db = create_db_engine(url)
    store = SqlMessageStore(db)
    store.migrate()
    try:
        yield db
    finally:
        if request.param == "postgresql":
            from engine.store.tables import metadata

            metadata.drop_all(db)
            with db.begin() as conn:
                conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
        db.dispose()


@pytest.fixture
def store(db_engine: Engine) -> SqlMessageStore:
    return SqlMessageStore(db_engine)


@pytest.fixture
def metrics_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory for multiprocess mode, and this test process back in memory mode after."""
    directory = tmp_path / "metrics"
    reset_multiprocess_dir(directory)
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    yield directory
    values.close_all_multiprocess_files()


def a_newer_message(store: SqlMessageStore) -> int:
    """Store a message after the test's own, with a delivery and a document row, and return
    its id: SQLite's retention keeps the messages holding the newest message, delivery and
    document ids (engine/store/purge.py: a new row takes the highest id + 1), so a test that
    means to purge its newest ones stores newer ones. Received: never purged itself."""
    from sqlalchemy import insert

    from engine.store import Incoming
    from engine.store.tables import deliveries, documents
    from tests.jobs.retention_support import delivered, document_row

    [stored] = store.save_batch([Incoming(raw=b"MSH|^~\\&|NEWER", channel="test")])
    with store.db_engine.begin() as conn:
        conn.execute(insert(deliveries), [delivered(stored.id, stored.received_at)])
        conn.execute(insert(documents), [document_row(stored.id, stored.received_at)])
    return stored.id
