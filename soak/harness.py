"""One soak run: the engine as ``make run`` runs it, the load beside it, a sample every
``sample_s`` seconds, and the verdict (soak/verdict.py) at the end.

The engine: ``engine serve`` (receiver and its worker process) on SQLite in a temporary home
(or on a PostgreSQL database of the run's own, ``--database-url``),
with routes like the example's (ADT, SIU to the stub FHIR server as transaction Bundles; ADT as
received to a folder; documents as received to a folder), the in-process stub payer, and the
eligibility schedule on a short cron (``ENGINE_ELIGIBILITY_CRON``, every 2 minutes as ``make
run``'s, and at start). The stub FHIR server (``engine stub-fhir``, in memory) forgets what it
holds every 5 minutes (``$reset``), so that its own growth does not slow the destination down
over the hour.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from chaos.processes import EngineProcess, StubFhirProcess
from soak import probe

__all__ = ["COLUMNS", "Options", "Run", "route_file", "soak"]

#: the stub FHIR server as a destination, and the route that maps every message to it
_FHIR_DESTINATION = """\
  local-fhir:
    type: fhir
    base_url: {fhir}
    mode: transaction
    timeout_s: 10
    retry: {{max_attempts: 10, base_delay_s: 2, max_delay_s: 60}}{fhir_extra}
"""
_FHIR_ROUTE = """\
  - name: to-local-fhir
    match: {{message: [ADT, SIU, DFT]}}
    mapping: fhir
    destinations: [local-fhir]
"""

ROUTES = (
    "# the soak's routes (soak/harness.py, --routes example): the example's, documents to a "
    "folder only\ndestinations:\n"
    + _FHIR_DESTINATION
    + """\
  dropbox:
    type: file
    directory: {home}/outbox
  documents-folder:
    type: file
    directory: {home}/outbox/documents
routes:
"""
    + _FHIR_ROUTE
    + """\
  - name: adt-to-dropbox
    match: {{message: [ADT]}}
    mapping: none
    destinations: [dropbox]
  - name: documents-to-folder
    match: {{kind: document}}
    mapping: none
    destinations: [documents-folder]
"""
)

#: ``--routes file``: each message mapped to a FHIR Bundle and written to a folder (fsynced), as
#: the ingest bench's route; no FHIR server
FILE_ROUTES = """\
# the soak's routes (soak/harness.py, --routes file): mapped, to a folder
destinations:
  bundles:
    type: file
    directory: {home}/outbox/bundles
routes:
  - name: to-folder
    match: {{message: [ADT, SIU, DFT]}}
    mapping: fhir
    destinations: [bundles]
"""

#: ``--routes fhir``: each message mapped to a FHIR transaction Bundle for the stub FHIR server,
#: nothing to a folder (the FHIR destination's share of the example's cost, alone)
FHIR_ROUTES = (
    "# the soak's routes (soak/harness.py, --routes fhir): mapped, to the FHIR server\n"
    "destinations:\n" + _FHIR_DESTINATION + "routes:\n" + _FHIR_ROUTE
)

#: the route sets ``--routes`` chooses from
ROUTE_SETS = {"example": ROUTES, "file": FILE_ROUTES, "fhir": FHIR_ROUTES}


def route_file(opts: Options, fhir: str, home: Path) -> str:
    """The run's route file: the set ``opts.routes`` names, its FHIR destination at ``fhir``
    with ``opts.fhir_concurrency`` when given, its folders under ``home``."""
    extra = f"\n    concurrency: {opts.fhir_concurrency}" if opts.fhir_concurrency else ""
    return ROUTE_SETS[opts.routes].format(fhir=fhir, home=home, fhir_extra=extra)


COLUMNS = (
    "t_s",
    "at",
    "receiver_rss_mb",
    "worker_rss_mb",
    "receiver_fds",
    "worker_fds",
    "db_connections",
    "db_file_fds",
    "wal_mb",
    "backlog",
    "deliveries_pending",
    "acks",
    "ack_p50_ms",
    "ack_p99_ms",
    "ack_max_ms",
    "refused_acks",
    "documents",
    "refused_documents",
    "eligibility_checks",
    "worker_pid",
    "stub_fhir_rss_mb",
    "receiver_cpu_pct",
    "worker_cpu_pct",
    "loadavg",
)
STUB_RESET_S = 300.0
Store = probe.SqliteStore | probe.PostgresStore


@dataclass
class Options:
    minutes: float = 60.0
    rate: float = 200.0
    senders: int = 8
    doc_interval_s: float = 2.0
    doc_size: int = 1024 * 1024
    sample_s: float = 10.0
    warmup_s: float | None = None
    cron: str = "*/2 * * * *"
    out: Path = Path("var/soak")
    keep_home: bool = False
    #: a PostgreSQL server (SQLAlchemy URL) to run on instead of SQLite: the soak makes a
    #: database of its own there (``soak_<pid>``) and drops it after
    database_url: str = ""
    #: the run stops early when the engine's home has less free disk than this (GB)
    min_free_gb: float = 15.0
    #: which routes (``ROUTE_SETS``): the example's (FHIR server and folders), or a folder only
    routes: str = "example"
    #: the FHIR destination's ``concurrency`` (engine/routes/spec.py); None: the default
    fhir_concurrency: int | None = None
    #: ``ENGINE_WORKER_PROCESSES`` (engine/settings.py); None: the engine's default. The
    #: samples' worker RSS, descriptors and CPU are all the worker processes', summed
    worker_processes: int | None = None


@dataclass
class Run:
    samples: list[dict[str, Any]] = field(default_factory=list)
    judged_ack_ms: list[float] = field(default_factory=list)
    refused_acks: int = 0
    refused_docs: int = 0
    acks: int = 0
    documents: int = 0
    worker_pids: list[int] = field(default_factory=list)
    seconds: float = 0.0
    #: CPU seconds of each process at the previous sample (for the window's CPU %)
    cpu: dict[int, tuple[float, float]] = field(default_factory=dict)
    #: why the run stopped before its time ("" when it ran to the end)
    stopped_early: str = ""

    def cpu_pct(self, pid: int | None) -> float:
        """The share of one core ``pid`` used since the previous sample."""
        if pid is None:
            return 0.0
        now, used = time.monotonic(), probe.cpu_s(pid)
        then, before = self.cpu.get(pid, (now, used))
        self.cpu[pid] = (now, used)
        return round(100 * (used - before) / (now - then), 1) if now > then else 0.0


class _Tail:
    """The new complete lines of a CSV file the load appends to."""

    def __init__(self, path: Path) -> None:
        self.path, self.pos, self.header = path, 0, True

    def rows(self) -> list[list[str]]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            f.seek(self.pos)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.pos += end
        lines = data[:end].decode().splitlines()
        if self.header and lines:
            lines, self.header = lines[1:], False
        return [line.split(",") for line in lines if line]


def _engine_cli(env: dict[str, str], home: Path, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "engine", *args],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"engine {args[0]} failed: {out.stderr.strip()[-500:]}")
    return out.stdout.strip()


def _find_db(home: Path, timeout: float = 60) -> Path:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = sorted(home.rglob("engine.db"))
        if found:
            return found[0]
        time.sleep(0.5)
    raise RuntimeError("the engine made no engine.db")


def _q(xs: list[float], q: float) -> float:
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else 0.0


def _sample(
    t: float,
    engine_pid: int,
    stub_pid: int | None,
    store: Store,
    acks: list[list[str]],
    docs: list[list[str]],
    run: Run,
) -> dict[str, Any]:
    # every worker process (ENGINE_WORKER_PROCESSES): their RSS, descriptors and CPU summed
    workers = probe.worker_pids(engine_pid)
    run.worker_pids += [w for w in workers if w not in run.worker_pids]
    conns, files = store.connections([engine_pid, *workers])
    backlog, pending = store.backlog()
    ms = sorted(float(a[1]) for a in acks if a[2] in ("AA", "CA"))
    refused = sum(1 for a in acks if a[2] not in ("AA", "CA"))
    refused_docs = sum(1 for d in docs if not d[2].startswith("2"))
    return {
        "t_s": round(t, 1),
        "at": time.strftime("%H:%M:%S", time.gmtime()),
        "receiver_rss_mb": round(probe.rss_mb(engine_pid), 1),
        "worker_rss_mb": round(sum(probe.rss_mb(w) for w in workers), 1),
        "receiver_fds": probe.fd_count(engine_pid),
        "worker_fds": sum(probe.fd_count(w) for w in workers),
        "db_connections": conns,
        "db_file_fds": files,
        "wal_mb": round(store.wal_mb(), 1),
        "backlog": backlog,
        "deliveries_pending": pending,
        "acks": len(acks),
        "ack_p50_ms": round(statistics.median(ms), 3) if ms else 0.0,
        "ack_p99_ms": round(_q(ms, 0.99), 3),
        "ack_max_ms": round(ms[-1], 3) if ms else 0.0,
        "refused_acks": refused,
        "documents": len(docs),
        "refused_documents": refused_docs,
        "eligibility_checks": store.eligibility_checks(),
        "worker_pid": workers[0] if workers else 0,
        "stub_fhir_rss_mb": round(probe.rss_mb(stub_pid), 1),
        "receiver_cpu_pct": run.cpu_pct(engine_pid),
        "worker_cpu_pct": round(sum(run.cpu_pct(w) for w in workers), 1),
        "loadavg": probe.loadavg(),
    }


def _window(rows: list[list[str]], pending: list[list[str]], upto: float) -> list[list[str]]:
    """The rows sent before ``upto`` (wall time), with those held back from earlier reads;
    rows sent later wait in ``pending`` for the next window."""
    pending.extend(rows)
    now = [r for r in pending if float(r[0]) < upto]
    pending[:] = [r for r in pending if float(r[0]) >= upto]
    return now


def _env(home: Path, opts: Options) -> dict[str, str]:
    return (
        {
            **os.environ,
            "ENGINE_HOME": str(home),
            "ENGINE_ROUTES_DIR": str(home / "routes"),
            "ENGINE_ELIGIBILITY_ON_START": "true",
            "ENGINE_ELIGIBILITY_CRON": opts.cron,
            "ENGINE_LOG_FORMAT": "text",
            "ENGINE_LOG_LEVEL": "WARNING",
        }
        | ({"ENGINE_WORKER_PROCESSES": str(opts.worker_processes)} if opts.worker_processes else {})
        | (
            # every sender is one connection from 127.0.0.1: more than the engine lets one peer
            # hold by default (20) would be refused, so the limit follows the senders
            {"ENGINE_MAX_CONNECTIONS_PER_PEER": str(opts.senders)} if opts.senders > 20 else {}
        )
    )


def soak(opts: Options, out: Path, say: Any, run: Run) -> None:
    """Run the soak, filling ``run`` with the samples and what the verdict needs (what was
    sampled stays there when the run fails or is stopped part way)."""
    home = Path(tempfile.mkdtemp(prefix="soak-home-"))
    fhir = StubFhirProcess(home)
    engine: EngineProcess | None = None
    load: subprocess.Popen[bytes] | None = None
    store: Store | None = None
    dbname = f"soak_{os.getpid()}"
    try:
        fhir.start()
        (home / "routes").mkdir()
        (home / "routes" / "example.yaml").write_text(route_file(opts, fhir.base_url, home))
        env = _env(home, opts)
        if opts.database_url:
            env["ENGINE_DATABASE_URL"] = probe.create_database(opts.database_url, dbname)
        _engine_cli(env, home, "keys", "create")
        token = _engine_cli(env, home, "token", "--role", "integration", "--subject", "soak")
        engine = EngineProcess(home, home / "routes", env)
        engine.env["ENGINE_PUBLIC_BASE_URL"] = f"http://127.0.0.1:{engine.http}"
        engine.start()
        assert engine.proc is not None
        store = (
            probe.PostgresStore(opts.database_url, dbname)
            if opts.database_url
            else probe.SqliteStore(_find_db(home))
        )
        end = time.monotonic() + 120
        while probe.worker_pid(engine.proc.pid) is None and time.monotonic() < end:
            time.sleep(0.5)
        seconds = opts.minutes * 60
        warmup = opts.warmup_s if opts.warmup_s is not None else _warmup(seconds)
        acks_csv, docs_csv = out / "acks.csv", out / "documents.csv"
        with (out / "load.log").open("wb") as load_log:  # the child keeps its own descriptor
            load = _start_load(opts, engine, token, seconds, acks_csv, docs_csv, load_log)
        files = (acks_csv, docs_csv, home)
        _loop(opts, run, engine.proc.pid, fhir, store, load, files, warmup, say)
    finally:
        if load is not None and load.poll() is None:
            load.terminate()
            load.wait(30)
        if engine is not None:
            engine.stop()
            if engine.log.exists():
                shutil.copy(engine.log, out / "engine.log")
        fhir.stop()
        if store is not None:
            store.close()
        if opts.database_url:
            probe.drop_database(opts.database_url, dbname)
        if not opts.keep_home:
            shutil.rmtree(home, ignore_errors=True)


def _start_load(
    opts: Options,
    engine: EngineProcess,
    token: str,
    seconds: float,
    acks_csv: Path,
    docs_csv: Path,
    log: IO[bytes],
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "soak.load", "--port", str(engine.mllp)]
        + ["--http", f"http://127.0.0.1:{engine.http}", "--seconds", str(seconds)]
        + ["--rate", str(opts.rate), "--senders", str(opts.senders)]
        + ["--doc-interval", str(opts.doc_interval_s), "--doc-size", str(opts.doc_size)]
        + ["--acks", str(acks_csv), "--docs", str(docs_csv)],
        env={**os.environ, "SOAK_TOKEN": token},
        stdout=subprocess.DEVNULL,
        stderr=log,
    )


def _warmup(seconds: float) -> float:
    from soak.verdict import warmup_s

    return warmup_s(seconds)


def _loop(
    opts: Options,
    run: Run,
    engine_pid: int,
    fhir: StubFhirProcess,
    store: Store,
    load: subprocess.Popen[bytes],
    files: tuple[Path, Path, Path],
    warmup: float,
    say: Any,
) -> None:
    acks_csv, docs_csv, home = files
    acks_tail, docs_tail = _Tail(acks_csv), _Tail(docs_csv)
    held_acks: list[list[str]] = []
    held_docs: list[list[str]] = []
    started = time.time()
    next_at, last_reset = started + opts.sample_s, time.monotonic()
    stub_pid = fhir.proc.pid if fhir.proc else None
    while True:
        time.sleep(max(0.0, next_at - time.time()))
        done = load.poll() is not None
        upto = time.time() - 1.5  # the load appends every second: a window's ACKs are in
        acks = _window(acks_tail.rows(), held_acks, upto if not done else float("inf"))
        docs = _window(docs_tail.rows(), held_docs, upto if not done else float("inf"))
        s = _sample(upto - started, engine_pid, stub_pid, store, acks, docs, run)
        run.samples.append(s)
        run.acks += len(acks)
        run.documents += len(docs)
        run.refused_acks += s["refused_acks"]
        run.refused_docs += s["refused_documents"]
        if s["t_s"] >= warmup:
            run.judged_ack_ms += [float(a[1]) for a in acks if a[2] in ("AA", "CA")]
        say(
            f"  {s['at']} t={s['t_s']:>6.0f}s rss {s['receiver_rss_mb']:.0f}/"
            f"{s['worker_rss_mb']:.0f} MB fds {s['receiver_fds']}/{s['worker_fds']} "
            f"conns {s['db_connections']} wal {s['wal_mb']:.0f} MB backlog {s['backlog']} "
            f"acks {s['acks']} "
            f"p50 {s['ack_p50_ms']:.2f} p99 {s['ack_p99_ms']:.2f} ms docs {s['documents']} "
            f"elig {s['eligibility_checks']} cpu {s['receiver_cpu_pct']:.0f}/"
            f"{s['worker_cpu_pct']:.0f} % load {s['loadavg']:.1f}"
        )
        if s["backlog"] < 0 or s["deliveries_pending"] < 0:
            say(f"    the store could not be read: {store.error}")
        if done:
            break
        free_gb = shutil.disk_usage(home).free / 1e9
        if free_gb < opts.min_free_gb:
            run.stopped_early = f"{free_gb:.1f} GB free on the engine's disk at t={s['t_s']:.0f}s"
            say(f"  stopping early: {run.stopped_early} (--min-free-gb {opts.min_free_gb:g})")
            break
        if time.monotonic() - last_reset > STUB_RESET_S:
            try:
                httpx.post(f"{fhir.base_url}/$reset", timeout=30)
            except httpx.HTTPError:
                say("  (the stub FHIR server did not answer $reset)")
            last_reset = time.monotonic()
        next_at += opts.sample_s
    run.seconds = time.time() - started
    if load.returncode and not run.stopped_early:
        raise RuntimeError(f"the load exited {load.returncode}; see load.log")
