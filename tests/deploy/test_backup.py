"""``engine backup`` / ``engine restore``: SQLite copied online while a real engine takes MLLP
traffic, its documents' files with it; restore refused while the engine runs, done once it is
stopped (the replaced database moved aside); PostgreSQL answered with the pg_dump commands, which
are run here against a real server."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shlex
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from engine.store import SqlMessageStore, create_db_engine
from engine.store.tables import document_blobs, messages
from tests.conftest import POSTGRES_URL
from tests.documents.intake_support import new_document, pdf_bytes, write
from tests.serve_support import OUTBOX_ROUTES, Engine, send_stream

ROUTES = OUTBOX_ROUTES

MESSAGE = (
    "MSH|^~\\&|FRONTDESK|CLINIC|ENGINE|HUB|20260102030405-0500||ADT^A08^ADT_A01|{cid}|P|2.5.1\r"
    "EVN|A08|20260102030405-0500\r"
    "PID|1||MRN{p}^^^CLINIC^MR||Backup^Patient{p}||19800101|F\r"
    "PV1|1|O\r"
)


def run(
    home: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        env={**os.environ, "ENGINE_HOME": str(home), "ENGINE_VAR_DIR": str(home), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def count(url: str, table: object = messages) -> int:
    db = create_db_engine(url)
    try:
        with db.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]
    finally:
        db.dispose()


def count_copy(database: Path, table: str = "messages") -> int:
    """Rows in a backup's database, opened read-only (the engine's own connections would turn
    on WAL: a change to the file the backup's SHA-256 covers)."""
    with contextlib.closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)) as db:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def seed_documents(database: Path, tmp: Path, n: int) -> list[str]:
    """``n`` documents stored the engine's way (bytes in files beside the database)."""
    store = SqlMessageStore(create_db_engine(f"sqlite:///{database}"))
    store.migrate()
    hashes = []
    for i in range(n):
        data = pdf_bytes(i + 1)
        sha = hashlib.sha256(data).hexdigest()
        path = write(tmp / f"scan{i}.pdf", data)
        store.prepare_blob(path, sha, len(data))
        store.store_document(
            new_document(f"MRN{i}"), path, sha256=sha, size=len(data), media_type="application/pdf"
        )
        hashes.append(sha)
    store.db_engine.dispose()
    return hashes


@pytest.fixture
def engine_home(tmp_path: Path) -> Iterator[tuple[Engine, Path]]:
    home = tmp_path / "home"
    home.mkdir()
    routes = tmp_path / "routes"
    routes.mkdir()
    (routes / "example.yaml").write_text(ROUTES.format(outbox=tmp_path / "outbox"))
    node = Engine(home, routes, env={"ENGINE_HOME": str(home)})
    try:
        yield node, home
    finally:
        node.stop()


def test_online_backup_then_restore_once_stopped(
    engine_home: tuple[Engine, Path], tmp_path: Path
) -> None:
    node, home = engine_home
    database = home / "engine.db"
    url = f"sqlite:///{database}"
    hashes = seed_documents(database, tmp_path, 3)
    node.start()
    acked: list[str] = []
    first = [(f"B-{i:04d}", MESSAGE.format(cid=f"B-{i:04d}", p=i % 7).encode()) for i in range(100)]
    send_stream(node.mllp, first, acked)
    assert len(acked) == 100
    # a sender keeps writing while the backup copies
    more = [(f"C-{i:04d}", MESSAGE.format(cid=f"C-{i:04d}", p=i % 7).encode()) for i in range(400)]
    sender = threading.Thread(target=send_stream, args=(node.mllp, more, acked))
    sender.start()
    backup = tmp_path / "backups" / "one"
    made = run(home, "backup", str(backup))
    sender.join(120)
    assert made.returncode == 0, made.stderr
    assert "integrity ok" in made.stdout and "3 document file(s)" in made.stdout
    manifest = json.loads((backup / "backup.json").read_text())
    assert manifest["documents"]["files"] == 3
    assert oct((backup / "engine.db").stat().st_mode & 0o777) == "0o600"
    for sha in hashes:  # the files beside the copy, byte for byte
        copied = (backup / "engine.blobs" / sha[:2] / sha).read_bytes()
        assert hashlib.sha256(copied).hexdigest() == sha
    in_backup = count_copy(backup / "engine.db")
    # the copy holds every message ACKed before it started and is one commit's state
    assert 100 + 3 <= in_backup <= count(url)
    assert count_copy(backup / "engine.db", "document_blobs") == 3

    # the engine runs: restore is refused, naming the process that has the database open
    refused = run(home, "restore", str(backup))
    assert refused.returncode == 1
    assert "is open by process" in refused.stderr and "stop it" in refused.stderr
    pid = int(refused.stderr.split("is open by process ")[1].split()[0])
    assert pid in _engine_processes(node)

    node.stop()
    after = count(url)
    assert after >= len(acked) + 3
    restored = run(home, "restore", str(backup))
    assert restored.returncode == 0, restored.stderr
    assert count(url) == in_backup
    aside = next(home.glob("pre-restore-*"))
    assert count(f"sqlite:///{aside / 'engine.db'}") == after  # the replaced one, kept whole
    for sha in hashes:
        assert (home / "engine.blobs" / sha[:2] / sha).is_file()
    # the engine starts on the restored database
    node.start()
    again: list[str] = []
    send_stream(node.mllp, [("D-0001", MESSAGE.format(cid="D-0001", p=1).encode())], again)
    assert again == ["D-0001"]


def _engine_processes(node: Engine) -> set[int]:
    assert node.proc is not None
    pids = {node.proc.pid}
    children = Path(f"/proc/{node.proc.pid}/task/{node.proc.pid}/children")
    if children.exists():
        pids |= {int(p) for p in children.read_text().split()}
    return pids


def test_backup_and_restore_refuse_what_they_cannot_trust(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    hashes = seed_documents(home / "engine.db", tmp_path, 2)
    backup = tmp_path / "b"
    assert run(home, "backup", str(backup)).returncode == 0
    # a target that holds something is not written into
    again = run(home, "backup", str(backup))
    assert again.returncode == 1 and "not an empty folder" in again.stderr
    # a document file whose bytes changed
    victim = backup / "engine.blobs" / hashes[0][:2] / hashes[0]
    victim.write_bytes(victim.read_bytes() + b"x")
    bad = run(home, "restore", str(backup))
    assert bad.returncode == 1 and "does not hold its bytes" in bad.stderr
    assert not list(home.glob("pre-restore-*"))  # nothing was moved
    # a database file that is not the one the backup wrote
    with (backup / "engine.db").open("ab") as f:
        f.write(b"\0")
    bad = run(home, "restore", str(backup))
    assert bad.returncode == 1 and "SHA-256 differs" in bad.stderr
    missing = run(home, "restore", str(tmp_path))
    assert missing.returncode == 1 and "not an engine backup" in missing.stderr


@pytest.fixture
def pg_schema() -> Iterator[str]:
    if os.environ.get("ENGINE_TEST_SKIP_POSTGRES") == "1":
        pytest.skip("ENGINE_TEST_SKIP_POSTGRES=1")
    schema = f"deploy_bak_{secrets.token_hex(4)}"
    admin = create_db_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield schema
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.mark.postgres
def test_postgres_backup_prints_pg_dump_commands_that_work(pg_schema: str, tmp_path: Path) -> None:
    sep = "&" if "?" in POSTGRES_URL else "?"
    url = f"{POSTGRES_URL}{sep}options=-csearch_path%3D{pg_schema}"
    store = SqlMessageStore(create_db_engine(url))
    store.migrate()
    for i in range(2):  # documents: their bytes are in the database on PostgreSQL
        data = pdf_bytes(i + 1)
        path = write(tmp_path / f"scan{i}.pdf", data)
        sha = hashlib.sha256(data).hexdigest()
        store.store_document(
            new_document(f"MRN{i}"), path, sha256=sha, size=len(data), media_type="application/pdf"
        )
    store.db_engine.dispose()
    stored = count(url, messages)
    assert stored == 2 and count(url, document_blobs) == 2
    folder = tmp_path / "pgbackup"
    said = run(tmp_path, "backup", str(folder), env={"ENGINE_DATABASE_URL": url})
    assert said.returncode == 1  # nothing was backed up by the engine itself
    assert "pg_dump --format=custom" in said.stdout and f"--schema={pg_schema}" in said.stdout
    lines = [line.strip() for line in said.stdout.splitlines()[1:]]
    assert "password" not in said.stdout.lower()
    for line in lines:  # run them as printed
        done = subprocess.run(line, shell=True, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (line, done.stderr)
    assert (folder / "engine.pgdump").stat().st_size > 0
    # the schema lost, then restored with the printed pg_restore command
    revision = _revision(url)
    admin = create_db_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{pg_schema}" CASCADE'))
        conn.execute(text(f'CREATE SCHEMA "{pg_schema}"'))
    admin.dispose()
    said = run(tmp_path, "restore", str(folder), env={"ENGINE_DATABASE_URL": url})
    assert said.returncode == 1
    restore = [
        line.strip() for line in said.stdout.splitlines()[1:] if not line.strip().startswith("#")
    ]
    assert len(restore) == 1 and restore[0].startswith("pg_restore --clean")
    done = subprocess.run(shlex.split(restore[0]), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert _revision(url) == revision
    assert count(url, messages) == stored and count(url, document_blobs) == 2


def _revision(url: str) -> str:
    db = create_db_engine(url)
    try:
        with db.connect() as conn:
            return str(conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one())
    finally:
        db.dispose()


def test_the_printed_commands_never_carry_the_password(tmp_path: Path) -> None:
    url = "postgresql+psycopg://engine:s3cret-pw@db.example:5432/engine"
    for command in ("backup", "restore"):
        said = run(tmp_path, command, str(tmp_path / "b"), env={"ENGINE_DATABASE_URL": url})
        assert said.returncode == 1
        assert "postgresql://engine@db.example:5432/engine" in said.stdout
        assert "s3cret" not in said.stdout + said.stderr
