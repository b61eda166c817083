"""What one message costs PostgreSQL: statements (round trips), transactions, WAL bytes and WAL
fsyncs per message, for the receiver alone and for receiver plus worker, read off
``pg_stat_statements``, ``pg_stat_wal`` and ``pg_stat_database`` (suite ``pg-cost``).

These are counts, not timings: they do not depend on how busy the machine is, and they are what
``docs/SCALING.md`` models several nodes on a larger PostgreSQL from. The suite starts a private
cluster of its own (``initdb`` into a temporary directory, its own port on 127.0.0.1,
``shared_preload_libraries = pg_stat_statements``, tracking the statements clients send, so
each call is a round trip, not those run inside them such as foreign key checks), never the
machine's shared one, and runs the engine as ``make run`` runs it (``engine serve``, its worker
delivering to a file drop), with the same eight MLLP senders and four-segment ADT^A08 messages
as the ``ingest`` suite. Between phases every statistic is reset; a phase's figures are divided
by the messages it handled.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from bench.documents_bench import _cpu_s, _tree
from bench.harness import Options, Scratch, environment
from bench.ingest_bench import FILE_DEST, ROUTES, _engine, _free_port, _load, _stop, _wait_delivered

__all__ = ["run"]

#: messages per phase (the quick run's, the full run's)
QUICK_COUNT, FULL_COUNT = 1_000, 10_000


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
    return Path(found[-1]).parent


def _as_postgres(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as the ``postgres`` user then."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@contextlib.contextmanager
def private_cluster() -> Iterator[tuple[str, Path]]:
    """A PostgreSQL cluster of our own with pg_stat_statements loaded; yields its URL (database
    ``cost``) and its data directory, stopped and removed after."""
    tmp = Path(tempfile.mkdtemp(prefix="pg-cost-"))
    if os.geteuid() == 0:
        shutil.chown(tmp, "postgres", "postgres")
    data, port = tmp / "data", _free_port()
    ctl = [str(_pg_bin() / "pg_ctl"), "-D", str(data), "-l", str(tmp / "pg.log")]
    initdb = [str(_pg_bin() / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]
    subprocess.run(_as_postgres([*initdb, "-E", "UTF8"]), check=True, capture_output=True)
    options = (
        f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={tmp} "
        "-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=top "
        "-c pg_stat_statements.max=5000"
    )
    subprocess.run(_as_postgres([*ctl, "-w", "-o", options, "start"]), check=True, timeout=120)
    try:
        admin = create_engine(
            f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres",
            isolation_level="AUTOCOMMIT",
        )
        with admin.connect() as conn:
            conn.execute(text("CREATE DATABASE cost"))
        admin.dispose()
        url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/cost"
        stats = create_engine(url, isolation_level="AUTOCOMMIT")
        with stats.connect() as conn:
            conn.execute(text("CREATE EXTENSION pg_stat_statements"))
        stats.dispose()
        yield url, data
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(_as_postgres([*ctl, "-m", "fast", "stop"]), timeout=120, check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def _reset(url: str) -> None:
    eng = create_engine(url, isolation_level="AUTOCOMMIT")
    with eng.connect() as conn:
        conn.execute(text("SELECT pg_stat_statements_reset()"))
        conn.execute(text("SELECT pg_stat_reset_shared('wal')"))
        conn.execute(text("SELECT pg_stat_reset()"))
    eng.dispose()


def _postmaster(data: Path) -> int:
    return int((data / "postmaster.pid").read_text().split()[0])


def _cpu_tree(pid: int) -> float:
    """CPU seconds so far of a process and everything under it (the server's backends, the
    engine's worker)."""
    return sum(_cpu_s(p) for p in _tree(pid))


_STATEMENTS = text(
    "SELECT calls, rows, total_exec_time, query FROM pg_stat_statements "
    "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND query NOT LIKE '%pg_stat%' ORDER BY calls DESC"
)


def _read(url: str, messages: int) -> dict[str, Any]:
    """The statistics since the last reset, per message."""
    eng = create_engine(url, isolation_level="AUTOCOMMIT")
    with eng.connect() as conn:
        conn.execute(text("SELECT pg_stat_force_next_flush()"))
        rows = conn.execute(_STATEMENTS).all()
        wal = conn.execute(
            text("SELECT wal_records, wal_fpi, wal_bytes, wal_write, wal_sync FROM pg_stat_wal")
        ).one()
        db = conn.execute(
            text(
                "SELECT xact_commit, xact_rollback FROM pg_stat_database "
                "WHERE datname = current_database()"
            )
        ).one()
    eng.dispose()
    calls = sum(r.calls for r in rows)
    exec_ms = sum(float(r.total_exec_time) for r in rows)

    def per_message(r: Any) -> dict[str, Any]:
        return {
            "per_message": round(r.calls / messages, 3),
            "exec_ms_per_message": round(float(r.total_exec_time) / messages, 4),
            "query": " ".join(r.query.split())[:160],
        }

    top = [per_message(r) for r in rows[:12]]
    by_time = [per_message(r) for r in sorted(rows, key=lambda r: -float(r.total_exec_time))[:6]]
    return {
        "messages": messages,
        "statements": round(calls / messages, 2),
        "statement_exec_ms": round(exec_ms / messages, 3),
        "transactions": round((db.xact_commit + db.xact_rollback) / messages, 2),
        "wal_bytes": round(int(wal.wal_bytes) / messages),
        "wal_records": round(wal.wal_records / messages, 1),
        "wal_full_page_images": round(wal.wal_fpi / messages, 2),
        "wal_fsyncs": round(wal.wal_sync / messages, 3),
        "wal_writes": round(wal.wal_write / messages, 3),
        "top_statements": top,
        "slowest_statements": by_time,
    }


def _phase(
    url: str,
    data: Path,
    label: str,
    *,
    nodes: int,
    workers: bool,
    count: int,
    tmp: Path,
    worker_processes: int | None = None,
) -> dict[str, Any]:
    """``count`` messages through ``nodes`` engines on the database at ``url`` (8 senders spread
    over them), with their workers or without (``worker_processes`` each: None, the default
    two); their stores and drops under ``tmp`` (removed
    when the suite ends, not before the next phase: :class:`bench.harness.Scratch`)."""
    engines: list[tuple[subprocess.Popen[bytes], int]] = []
    try:
        for n in range(nodes):
            var = Path(tmp) / f"node{n}"
            routes, out = var / "routes", var / "out"
            routes.mkdir(parents=True)
            out.mkdir()
            destination = FILE_DEST.format(dir=out)
            (routes / "example.yaml").write_text(
                ROUTES.format(name="drop", type="file", extra=destination)
            )
            engines.append(
                _engine(url, routes, var, workers=workers, worker_processes=worker_processes)
            )
        for _, port in engines:  # warm: connections, statements prepared, workers started
            _load(port, 8 // nodes, 200 // nodes)
        if workers:
            _wait_delivered(url, 200 // nodes * nodes)
        time.sleep(1.0)
        _reset(url)
        pg_cpu = _cpu_tree(_postmaster(data))
        engine_cpu = sum(_cpu_tree(proc.pid) for proc, _ in engines)
        started = time.monotonic()
        with ThreadPoolExecutor(nodes) as pool:
            loads = list(pool.map(lambda e: _load(e[1], 8 // nodes, count // nodes), engines))
        acked = time.monotonic()
        if workers:
            _wait_delivered(url, 200 // nodes * nodes + count // nodes * nodes)
        done = time.monotonic()
        pg_cpu = _cpu_tree(_postmaster(data)) - pg_cpu
        engine_cpu = sum(_cpu_tree(proc.pid) for proc, _ in engines) - engine_cpu
        time.sleep(0.5)
        handled = count // nodes * nodes
        figures = _read(url, handled)
        if workers:  # every message delivered once: one file each, no id twice
            names = [f.name for f in Path(tmp).glob("node*/out/*.json")]
            ids = {name.split("-", 1)[0] for name in names}
            figures["files"] = len(names)
            figures["duplicates"] = len(names) - len(ids)
            figures["missing"] = 200 // nodes * nodes + handled - len(ids)
    finally:
        for proc, _ in engines:
            _stop(proc)
    figures["label"] = label
    figures["nodes"] = nodes
    figures["ack_rate"] = round(handled / (acked - started))
    figures["p99_ack_ms"] = round(max(r["p99_ms"] for r in loads), 2)
    if workers:
        figures["delivered_rate"] = round(handled / (done - started))
    figures["postgres_cpu_ms"] = round(1000 * pg_cpu / handled, 3)
    figures["engine_cpu_ms"] = round(1000 * engine_cpu / handled, 3)
    return figures


def _drop_tables(url: str) -> None:
    """A fresh schema for the next phase (the cluster is ours: drop everything)."""
    eng = create_engine(url, isolation_level="AUTOCOMMIT")
    with eng.connect() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
        conn.execute(text("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
    eng.dispose()


def _describe(r: dict[str, Any]) -> str:
    rate = f"ACKed at {r['ack_rate']:,}/s"
    if "delivered_rate" in r:
        rate += f", delivered at {r['delivered_rate']:,}/s"
        rate += f" ({r['files']:,} files, {r['duplicates']} duplicates, {r['missing']} missing)"
    return (
        f"{r['statements']} statements ({r['statement_exec_ms']} ms executing), "
        f"{r['transactions']} transactions, {r['wal_bytes']:,} WAL bytes ({r['wal_records']} "
        f"records, {r['wal_full_page_images']} full pages), {r['wal_fsyncs']} WAL fsyncs; CPU "
        f"{r['postgres_cpu_ms']} ms PostgreSQL, {r['engine_cpu_ms']} ms engine per message; "
        f"{rate} (the statistics cost a little: quote the ingest suite's rates)"
    )


#: (label, nodes, with workers, worker processes a node: None for the default two). The last:
#: two nodes sized to one machine's cores between them, as one node's two worker processes
PHASES: tuple[tuple[str, int, bool, int | None], ...] = (
    ("receiver alone, 1 node", 1, False, None),
    ("receiver and worker, 1 node", 1, True, None),
    ("receiver and worker, 2 nodes", 2, True, None),
    ("receiver and worker, 2 nodes of one worker process each", 2, True, 1),
)


def run(options: Options) -> dict[str, Any]:
    count = QUICK_COUNT if options.quick else FULL_COUNT
    print(f"pg-cost: {count:,} ADT^A08 per phase, 8 MLLP senders, a private PostgreSQL cluster")
    phases: list[dict[str, Any]] = []
    with private_cluster() as (url, data), Scratch(prefix="bench-pg-cost-") as scratch:
        for label, nodes, workers, processes in PHASES:
            r = _phase(
                url,
                data,
                label,
                nodes=nodes,
                workers=workers,
                count=count,
                tmp=scratch.new(),
                worker_processes=processes,
            )
            print(f"  {label}: {_describe(r)}", flush=True)
            for heading, key in (
                ("most sent", "top_statements"),
                ("most time", "slowest_statements"),
            ):
                print(f"    {heading} (per message: calls, milliseconds executing):")
                for t in r[key]:
                    print(
                        f"      {t['per_message']:>6} x {t['exec_ms_per_message']:>7.4f} ms  "
                        f"{t['query'][:100]}"
                    )
            phases.append(r)
            _drop_tables(url)
    receiver, both = phases[0], phases[1]
    worker = {
        k: round(both[k] - receiver[k], 3)
        for k in (
            "statements",
            "transactions",
            "wal_bytes",
            "wal_records",
            "wal_fsyncs",
            "postgres_cpu_ms",
            "engine_cpu_ms",
        )
    }
    print(f"  the worker's share (difference): {worker}")
    return {
        "suite": "pg-cost",
        "quick": options.quick,
        "environment": environment(["SQLAlchemy", "psycopg"]),
        "phases": phases,
        "worker_share": worker,
    }
