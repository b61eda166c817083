"""Documents in → stored → acknowledged → delivered to Epic: ``engine serve`` under upload load.

Four cases, on SQLite (synchronous=FULL: every acknowledged document is fsynced), each with a
fresh engine home:

* **stored and acknowledged**: 8 concurrent uploaders POST 1 MiB synthetic PDFs to
  ``/documents`` (``bench/doc_load.py``, a process of its own), the engine's worker off, so the
  figure is the intake's alone (goal: at least 100 documents/s);
* **delivered to the stub Epic**: the same load with the worker on, routed to an ``epic``
  destination (SMART Backend Services, the engine's own signing key) at the stub Epic; the rate
  is documents over the time from the first upload until the stub holds the last one as a
  DocumentReference (goal: at least 50/s); the stub's token requests are counted (goal: one per
  token lifetime: the stub's tokens last 300 s, longer than the case);
* **eight 25 MiB documents in flight**: 8 uploaders, two 25 MiB PDFs each, delivered to the stub
  Epic, while the resident memory of the engine's processes (the receiver and its worker) is
  sampled every 50 ms from /proc; the figure is the largest sum seen, with each process's own
  high-water mark (VmHWM) beside it (goal: under 300 MB);
* **to the stub athenahealth**: 1 MiB documents uploaded one per call (the stub in this process,
  in a thread, its counters read directly): the token requests its per-minute limit counts
  (goal: one per token lifetime, an hour) and uploads made twice (goal: none).

The stub Epic runs as ``make run`` runs it (``engine stub-epic --admin``, a process of its own),
with the engine's JWKS URL registered for the client id, as an Epic customer registers a backend
app's; its ``/admin/stats`` counts the DocumentReferences created and the token requests. The
Epic cases' documents are for 64 synthetic patients (``--load-patients``: a clinic's documents
are for many patients, and the engine delivers one at a time per patient and destination);
the athenahealth case's for the three demo patients its stub knows. The figures are this
machine's, the median of ``--repeat`` runs.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench.harness import Options, environment
from bench.ingest_bench import _free_port, _stop, _wait_port

__all__ = ["run"]

MIB = 1024 * 1024
CLIENT_ID = "bench-backend-app"

ROUTES = """
destinations:
  epic:
{destination}
routes:
  - name: documents-to-epic
    match: {{kind: document}}
    mapping: fhir
    destinations: [epic]
"""

ATHENA_ROUTES = """
destinations:
  athena:
    type: athenahealth
    base_url: {base_url}
    client_id: {client_id}
    client_secret_env: BENCH_ATHENA_SECRET
    practice_id: "195900"
    department_id: "1"
    requests_per_second: 40
    retry: {{max_attempts: 5, base_delay_s: 1, max_delay_s: 10}}
routes:
  - name: documents-to-athena
    match: {{kind: document}}
    mapping: none
    destinations: [athena]
"""

EPIC_DESTINATION = """    type: epic
    base_url: {base_url}
    client_id: {client_id}
    mrn_system: urn:oid:1.2.840.114350.1.13.99999.2.7.5.737384.14
    timeout_s: 60
    retry: {{max_attempts: 5, base_delay_s: 1, max_delay_s: 10}}"""


def _env(var: Path, routes: Path, http_port: int, *, workers: bool) -> dict[str, str]:
    return {
        **os.environ,
        "ENGINE_VAR_DIR": str(var),
        "ENGINE_ROUTES_DIR": str(routes),
        "ENGINE_MLLP_HOST": "127.0.0.1",
        "ENGINE_HTTP_HOST": "127.0.0.1",
        "ENGINE_LOG_LEVEL": "WARNING",
        "ENGINE_WORKERS": "true" if workers else "false",
        "ENGINE_PUBLIC_BASE_URL": f"http://127.0.0.1:{http_port}",
    }


def _engine_cli(env: dict[str, str], *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "engine", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"engine {' '.join(args)}: {out.stderr.strip()[-500:]}")
    return out.stdout.strip()


@contextmanager
def _engine(var: Path, env: dict[str, str], http_port: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine",
            "serve",
            "--mllp-port",
            str(_free_port()),
            "--http-port",
            str(http_port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=var,
    )
    try:
        _wait_port(http_port, proc)
        yield proc
    finally:
        _stop(proc)


def _wait_worker(db: Path, timeout: float = 120.0) -> None:
    """Until the worker process has registered (it starts after the receiver, seconds later on
    a loaded machine): the delivery rate measures delivering, not starting up."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM nodes WHERE role LIKE 'worker%'"
                ).fetchone()
            if row and row[0]:
                return
        except sqlite3.Error:
            pass  # not created yet
        time.sleep(0.2)
    raise RuntimeError(f"no worker registered within {timeout:.0f} s")


#: the stub Epic's synthetic patients the Epic cases' documents are spread over (a clinic's
#: documents are for many patients; the engine keeps one delivery in flight per patient and
#: destination, so three patients would measure three queues). The athenahealth case keeps the
#: three demo patients its stub knows.
LOAD_PATIENTS = 64


def _load(
    url: str, token: str, uploaders: int, count: int, size: int, *, patients: int = 0
) -> dict[str, Any]:
    args = [sys.executable, "-m", "bench.doc_load", url, str(uploaders), str(count), str(size)]
    out = subprocess.run(
        args,
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
        env={**os.environ, "DOC_LOAD_TOKEN": token, "DOC_LOAD_PATIENTS": str(patients)},
    )
    if out.returncode != 0:
        raise RuntimeError(f"doc_load failed: {out.stderr[-800:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if result["accepted"] != result["documents"]:
        raise RuntimeError(f"refused uploads: {result}; {out.stderr[-500:]}")
    return result


# -- resident memory of a process tree, from /proc ------------------------------------------------


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return pids


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class _RssSampler:
    """Samples the sum of VmRSS over the engine's process tree every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid, self.interval = pid, interval
        self.peak_kib = 0
        #: the sum when sampling started (the engine idle: what the imports and pools cost)
        self.idle_kib: int | None = None
        self.hwm_kib: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = _tree(self.pid)
            now = sum(_status_kib(p, "VmRSS") for p in pids)
            if self.idle_kib is None:
                self.idle_kib = now
            self.peak_kib = max(self.peak_kib, now)
            for p in pids:  # each process's own high-water mark, read while it lives
                self.hwm_kib[p] = max(self.hwm_kib.get(p, 0), _status_kib(p, "VmHWM"))
            self._stop.wait(self.interval)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _cpu_s(pid: int) -> float:
    """User plus system CPU seconds of one process (/proc/PID/stat fields 14 and 15)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_by_role(engine_pid: int, stub_pid: int) -> dict[str, float]:
    """CPU seconds so far of the receiver, its child processes (the worker) and the stub: where
    a case's time went, on a machine whose cores the three share."""
    children = [p for p in _tree(engine_pid) if p != engine_pid]
    return {
        "receiver": _cpu_s(engine_pid),
        "worker": sum(_cpu_s(p) for p in children),
        "stub_epic": _cpu_s(stub_pid),
    }


# -- the cases ------------------------------------------------------------------------------------


@contextmanager
def _stub_epic(jwks_url: str) -> Iterator[tuple[str, int]]:
    """``engine stub-epic --admin`` on a free port; its root URL and process id."""
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine",
            "stub-epic",
            "--port",
            str(port),
            "--admin",
            "--client-id",
            CLIENT_ID,
            "--jwks-url",
            jwks_url,
            "--load-patients",
            str(LOAD_PATIENTS),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_port(port, proc)
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        _stop(proc)


def _epic_stats(root: str) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(f"{root}/admin/stats", timeout=10).json()
    return stats


def _wait_in_epic(root: str, total: int, timeout: float) -> float:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if _epic_stats(root)["document_creates"] >= total:
            return time.monotonic()
        time.sleep(0.05)
    raise RuntimeError(
        f"the stub Epic holds {_epic_stats(root)['document_creates']} of {total} documents "
        f"after {timeout:.0f} s"
    )


def _case(
    label: str, *, workers: bool, count: int, size: int, rss: bool, timeout: float
) -> dict[str, Any]:
    http_port = _free_port()
    jwks_url = f"http://127.0.0.1:{http_port}/.well-known/jwks.json"
    with tempfile.TemporaryDirectory() as tmp, _stub_epic(jwks_url) as (epic, stub_pid):
        var = Path(tmp)
        routes = var / "routes"
        routes.mkdir()
        destination = EPIC_DESTINATION.format(base_url=f"{epic}/api/FHIR/R4", client_id=CLIENT_ID)
        (routes / "example.yaml").write_text(ROUTES.format(destination=destination))
        env = _env(var, routes, http_port, workers=workers)
        _engine_cli(env, "keys", "create")
        token = _engine_cli(env, "token", "--role", "integration", "--subject", "bench")
        url = f"http://127.0.0.1:{http_port}"
        with _engine(var, env, http_port) as proc:
            if workers:
                _wait_worker(var / "engine.db")
            sampler = _RssSampler(proc.pid) if rss else None
            if sampler:
                sampler.__enter__()
            try:
                started = time.monotonic()
                cpu_before = _cpu_by_role(proc.pid, stub_pid)
                result = _load(url, token, 8, count, size, patients=LOAD_PATIENTS)
                if workers:
                    done = _wait_in_epic(epic, count, timeout)
                    result["delivered_s"] = done - started
                    result["delivered_rate"] = count / result["delivered_s"]
                    stats = _epic_stats(epic)
                    result["token_requests"] = stats["token_requests"]
                    result["documents_created_twice"] = stats["documents_created_twice"]
                cpu_after = _cpu_by_role(proc.pid, stub_pid)
                result["cpu_s"] = {
                    role: round(cpu_after.get(role, 0.0) - cpu_before.get(role, 0.0), 1)
                    for role in cpu_after
                }
            finally:
                if sampler:
                    sampler.__exit__()
            if sampler:
                result["peak_rss_mb"] = sampler.peak_kib / 1024
                result["idle_rss_mb"] = (sampler.idle_kib or 0) / 1024
                result["hwm_mb"] = {str(p): k / 1024 for p, k in sampler.hwm_kib.items()}
                result["hwm_sum_mb"] = sum(sampler.hwm_kib.values()) / 1024
        print(f"  {label}: {_describe(result)}", flush=True)
        return result


def _athena_case(label: str, *, count: int, timeout: float) -> dict[str, Any]:
    """``count`` 1 MiB documents delivered to the stub athenahealth (in this process, in a
    thread: its counters are read directly): the token requests athena's per-minute limit
    counts, and uploads made twice."""
    from engine.sim.athena import running_stub_athena

    secret = secrets.token_urlsafe(24)
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_stub_athena(client_id=CLIENT_ID, client_secret=secret) as athena,
    ):
        var = Path(tmp)
        routes = var / "routes"
        routes.mkdir()
        (routes / "example.yaml").write_text(
            ATHENA_ROUTES.format(base_url=athena.base_url, client_id=CLIENT_ID)
        )
        http_port = _free_port()
        env = {**_env(var, routes, http_port, workers=True), "BENCH_ATHENA_SECRET": secret}
        token = _engine_cli(env, "token", "--role", "integration", "--subject", "bench")
        with _engine(var, env, http_port):
            _wait_worker(var / "engine.db")
            started = time.monotonic()
            result = _load(f"http://127.0.0.1:{http_port}", token, 8, count, MIB)
            end = time.monotonic() + timeout
            while sum(athena.state.uploads_by_hash.values()) < count:
                if time.monotonic() > end:
                    raise RuntimeError(
                        f"the stub athena has {sum(athena.state.uploads_by_hash.values())} "
                        f"of {count} documents after {timeout:.0f} s"
                    )
                time.sleep(0.05)
            result["delivered_s"] = time.monotonic() - started
            result["delivered_rate"] = count / result["delivered_s"]
            result["token_requests"] = athena.state.token_requests
            result["documents_created_twice"] = sum(
                1 for n in athena.state.uploads_by_hash.values() if n > 1
            )
    print(f"  {label}: {_describe(result, 'athena')}", flush=True)
    return result


def _describe(r: dict[str, Any], ehr: str = "Epic") -> str:
    parts = [
        f"{r['documents']} x {r['size'] / MIB:.0f} MiB acknowledged at {r['rate']:.1f}/s",
        f"p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms",
    ]
    if "delivered_rate" in r:
        parts.append(
            f"in the stub {ehr} after {r['delivered_s']:.1f} s ({r['delivered_rate']:.1f}/s), "
            f"{r['token_requests']} token request(s)"
        )
    if isinstance(r.get("cpu_s"), dict):
        parts.append("CPU s " + ", ".join(f"{k} {v:.1f}" for k, v in r["cpu_s"].items()))
    if "peak_rss_mb" in r:
        parts.append(
            f"peak RSS {r['peak_rss_mb']:.0f} MB (idle {r.get('idle_rss_mb', 0):.0f} MB; "
            f"sum of VmHWM {r['hwm_sum_mb']:.0f} MB)"
        )
    return "; ".join(parts)


def run(options: Options) -> dict[str, Any]:
    n = 200 if options.quick else 800
    athena_n = 40 if options.quick else 120
    big = 16
    # (label, worker on, documents, size)
    cases = [
        ("stored and acknowledged, 1 MiB, worker off", False, n, MIB),
        ("delivered to the stub Epic, 1 MiB", True, n, MIB),
        ("eight 25 MiB in flight, to the stub Epic", True, big, 25 * MIB),
    ]
    samples: dict[str, list[dict[str, Any]]] = {}
    for rep in range(1, options.repeat + 1):
        for label, workers, count, size in cases:
            r = _case(
                f"[{rep}] {label}",
                workers=workers,
                count=count,
                size=size,
                rss=size > MIB,
                timeout=600,
            )
            samples.setdefault(label, []).append(r)
        label = "to the stub athenahealth, 1 MiB"
        samples.setdefault(label, []).append(
            _athena_case(f"[{rep}] {label}", count=athena_n, timeout=600)
        )
    rows = []
    for label, runs in samples.items():
        row: dict[str, Any] = {"scenario": label, "runs": len(runs)}
        for key in runs[0]:
            values = [r[key] for r in runs if isinstance(r.get(key), int | float)]
            if len(values) == len(runs):
                row[key] = statistics.median(values)
        rows.append(row)
    print(f"\n  medians of {options.repeat} runs")
    for row in rows:
        ehr = "athena" if "athena" in row["scenario"] else "Epic"
        print(f"  {row['scenario']}: {_describe(row, ehr)}")
    return {
        "suite": "documents",
        "quick": options.quick,
        "rows": rows,
        "samples": samples,
        "goals": {
            "stored_per_s": 100,
            "delivered_per_s": 50,
            "peak_rss_mb": 300,
            "token_requests": "one per token lifetime",
        },
        "environment": environment(["hl7-engine"]),
    }
