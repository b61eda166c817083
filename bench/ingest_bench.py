"""MLLP in → stored → ACKed: ``engine serve`` under load, beside python-hl7's own asyncio MLLP
server that ACKs without storing anything (the non-durable baseline), in the same run.

Scenarios, each on SQLite (synchronous=FULL: every ACKed message is fsynced) and PostgreSQL:

* 1 and 8 concurrent senders, each sending its next message as soon as the ACK arrives;
* an offered load of 200 messages/s (paced), for the p99 ACK latency;
* 8 senders while the only destination is down (connection refused): ingest must not change.

The whole set runs ``--repeat`` times (default 3), interleaved, and each figure is the median of
its repetitions (this machine's speed drifts from minute to minute), with the range of the rate.

With its worker delivering to a file drop, each case also reports when the last message was
delivered (end to end), and the next case starts once the backlog is drained.

Each engine first takes :data:`WARMUP` messages from 8 senders that are not measured (and, with
its worker, waits until they are delivered): a PostgreSQL receiver ACKed its first 2,000
messages at about 1,300/s and the next ones at about 1,600/s (4 December 2026), and a figure
of a few seconds should be the rate the engine keeps, not its start.

The engine runs as a user runs it (``engine serve``: a receiver process and a worker process that
maps and delivers); the load generator is ``bench/mllp_load.py`` in a process of its own.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.harness import Options, Scratch, environment

__all__ = ["run"]

ROUTES = """
destinations:
  {name}:
    type: {type}
{extra}
    retry: {{max_attempts: 5, base_delay_s: 1, max_delay_s: 10}}
routes:
  - name: everything
    match: {{message: [ADT]}}
    mapping: fhir
    destinations: [{name}]
"""
FILE_DEST = "    directory: {dir}"
#: messages each new engine takes before its cases are measured (8 senders)
WARMUP = 1000
DOWN_DEST = "    base_url: http://127.0.0.1:{port}/fhir\n    mode: transaction\n    timeout_s: 2"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(
                f"server exited: {proc.stderr.read().decode()[-800:] if proc.stderr else ''}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


def _load(port: int, senders: int, count: int, rate: float = 0.0) -> dict[str, Any]:
    args = [sys.executable, "-m", "bench.mllp_load", str(port), str(senders), str(count)]
    if rate:
        args.append(str(rate))
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=600)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["positive"] == result["messages"], f"negative ACKs: {result}"
    return result


def _engine(
    db_url: str,
    routes_dir: Path,
    var: Path,
    *,
    workers: bool = True,
    worker_processes: int | None = None,
) -> tuple[subprocess.Popen[bytes], int]:
    """``engine serve`` as ``make run`` runs it (``worker_processes``: None, its default)."""
    port = _free_port()
    env = {
        **os.environ,
        "ENGINE_VAR_DIR": str(var),
        "ENGINE_ROUTES_DIR": str(routes_dir),
        "ENGINE_MLLP_HOST": "127.0.0.1",
        "ENGINE_HTTP_HOST": "127.0.0.1",
        "ENGINE_LOG_LEVEL": "WARNING",
        "ENGINE_WORKERS": "true" if workers else "false",
    }
    if db_url:
        env["ENGINE_DATABASE_URL"] = db_url
    if worker_processes is not None:
        env["ENGINE_WORKER_PROCESSES"] = str(worker_processes)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine",
            "serve",
            "--mllp-port",
            str(port),
            "--http-port",
            str(_free_port()),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=var,
    )
    _wait_port(port, proc)
    return proc, port


#: whether a message is not yet settled (one probe of ix_messages_state, however many are
#: stored or in flight: polling costs the database little)
_IN_FLIGHT = (
    "SELECT EXISTS (SELECT 1 FROM messages WHERE state IN ('received', 'processing', 'routed'))"
)


def _wait_delivered(db_url: str, total: int, timeout: float = 600.0) -> float:
    """Wait until ``total`` messages are delivered; the monotonic time they all were. Polls
    every 50 ms for messages still in flight, and counts the delivered ones only when none is
    (a count of every stored message each poll cost the measured database CPU)."""
    from sqlalchemy import text

    from engine.store import SqlMessageStore, create_db_engine

    db = create_db_engine(db_url, durable=False)
    try:
        store = SqlMessageStore(db)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with db.connect() as conn:
                in_flight = bool(conn.execute(text(_IN_FLIGHT)).scalar_one())
            if not in_flight:
                at = time.monotonic()
                if store.counts().get("delivered", 0) >= total:
                    return at
            time.sleep(0.05)
    finally:
        db.dispose()
    raise RuntimeError(f"not all {total} messages delivered within {timeout:.0f} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _postgres_url(schema: str) -> str | None:
    base = os.environ.get(
        "ENGINE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    )
    try:
        from sqlalchemy import create_engine, text

        eng = create_engine(base)
        with eng.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        eng.dispose()
    except Exception as exc:  # no PostgreSQL here: say so, measure SQLite only
        print(f"  (PostgreSQL not available: {type(exc).__name__}; skipped)")
        return None
    return f"{base}?options=-csearch_path%3D{schema}"


def _one_run(
    n8: int, n1: int, paced: int, rep: int, scratch: Scratch
) -> list[tuple[str, dict[str, Any]]]:
    """Every case once: the baseline's, then the engine's on each database (each case's store
    and drop in a directory of ``scratch``, removed when the suite ends: see
    :class:`bench.harness.Scratch`)."""
    rows: list[tuple[str, dict[str, Any]]] = []
    # the baseline: python-hl7's asyncio MLLP server, ACK without storing
    port = _free_port()
    base = subprocess.Popen(
        [sys.executable, "-m", "bench.hl7_baseline_server", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _wait_port(port, base)
    try:
        for label, senders, count, rate in (
            ("python-hl7 server, no store, 8 senders", 8, n8, 0.0),
            ("python-hl7 server, no store, 1 sender", 1, n1, 0.0),
            ("python-hl7 server, no store, 200 msg/s offered", 4, paced, 200.0),
        ):
            r = _load(port, senders, count, rate)
            rows.append((label, r))
            print(
                f"  [{rep}] {label}: {r['rate']:,.0f} msg/s, p50 {r['p50_ms']:.2f} ms, "
                f"p99 {r['p99_ms']:.2f} ms",
                flush=True,
            )
    finally:
        _stop(base)

    for backend in ("sqlite", "postgresql"):
        for scenario in ("receiver", "file", "down"):
            # a database of its own per scenario: no backlog carried from one to the next
            var = scratch.new()
            db_url = ""
            if backend == "postgresql":
                maybe = _postgres_url(f"bench_{os.getpid()}")
                if maybe is None:
                    break
                db_url = maybe
            routes_dir = var / f"routes-{scenario}"
            routes_dir.mkdir()
            down = scenario == "down"
            extra = (
                DOWN_DEST.format(port=_free_port())
                if down
                else FILE_DEST.format(dir=var / "outbox")
            )
            (routes_dir / "example.yaml").write_text(
                ROUTES.format(name="dest", type="fhir" if down else "file", extra=extra)
            )
            proc, port = _engine(db_url, routes_dir, var, workers=scenario != "receiver")
            store_url = db_url or f"sqlite:///{var / 'engine.db'}"
            total = 0
            try:
                # a warm-up, not measured: a new process's first second (its connections,
                # caches, the interpreter's) is not the rate it sustains
                total += _load(port, 8, WARMUP)["messages"]
                if scenario == "file":
                    _wait_delivered(store_url, total)
                cases = {
                    "receiver": [
                        ("receiver alone (workers elsewhere), 8 senders", 8, n8, 0.0),
                        ("receiver alone, 200 msg/s offered", 4, paced, 200.0),
                    ],
                    "file": [
                        ("with its worker, 8 senders", 8, n8, 0.0),
                        ("with its worker, 1 sender", 1, n1, 0.0),
                        ("with its worker, 200 msg/s offered", 4, paced, 200.0),
                    ],
                    "down": [("with its worker, 8 senders, destination down", 8, n8, 0.0)],
                }[scenario]
                for label, senders, count, rate in cases:
                    full = f"engine serve ({backend}), {label}"
                    started = time.monotonic()
                    r = _load(port, senders, count, rate)
                    total += r["messages"]
                    note = ""
                    if scenario == "file":
                        # end to end: until the last message is delivered (the backlog is
                        # drained before the next case, which thus starts on an idle engine)
                        r["delivered_s"] = _wait_delivered(store_url, total) - started
                        r["end_to_end_rate"] = r["messages"] / r["delivered_s"]
                        note = (
                            f"; all delivered after {r['delivered_s']:.1f} s "
                            f"({r['end_to_end_rate']:,.0f} msg/s end to end)"
                        )
                    rows.append((full, r))
                    print(
                        f"  [{rep}] {full}: {r['rate']:,.0f} msg/s, p50 {r['p50_ms']:.2f} ms, "
                        f"p99 {r['p99_ms']:.2f} ms{note}",
                        flush=True,
                    )
            finally:
                _stop(proc)
            if backend == "postgresql":
                from sqlalchemy import create_engine, text

                eng = create_engine(db_url.split("?")[0])
                with eng.begin() as conn:
                    conn.execute(text(f'DROP SCHEMA IF EXISTS "bench_{os.getpid()}" CASCADE'))
                eng.dispose()

    return rows


def _median_of(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the repetitions, with the range of the rate."""
    out: dict[str, Any] = {"runs": len(samples)}
    for key in samples[0]:
        values = [s[key] for s in samples if isinstance(s.get(key), int | float)]
        if len(values) == len(samples):
            out[key] = statistics.median(values)
    out["rate_min"] = min(s["rate"] for s in samples)
    out["rate_max"] = max(s["rate"] for s in samples)
    return out


def run(options: Options) -> dict[str, Any]:
    n8 = 1500 if options.quick else 12000
    n1 = 500 if options.quick else 2000
    paced = 600 if options.quick else 2000
    results: dict[str, Any] = {}
    # the whole set of cases ``repeat`` times, interleaved (this machine's speed drifts from
    # minute to minute): each figure is the median of its repetitions
    samples: dict[str, list[dict[str, Any]]] = {}
    with Scratch(prefix="bench-ingest-") as scratch:
        for rep in range(1, options.repeat + 1):
            for label, r in _one_run(n8, n1, paced, rep, scratch):
                samples.setdefault(label, []).append(r)
    rows = [(label, _median_of(runs)) for label, runs in samples.items()]
    print()
    width = max(len(label) for label, _ in rows)
    print(f"  medians of {options.repeat} interleaved repetitions")
    print(
        f"  {'scenario':<{width}}  {'msgs':>6}  {'msg/s':>7}  {'range':>13}  {'p50 ms':>7}"
        f"  {'p99 ms':>7}  {'delivered':>9}"
    )
    for label, r in rows:
        done = f"{r['delivered_s']:>8.1f}s" if "delivered_s" in r else f"{'':>9}"
        spread = f"{r['rate_min']:,.0f}-{r['rate_max']:,.0f}"
        print(
            f"  {label:<{width}}  {r['messages']:>6.0f}  {r['rate']:>7,.0f}  {spread:>13}  "
            f"{r['p50_ms']:>7.2f}  {r['p99_ms']:>7.2f}  {done}"
        )
    results["rows"] = [{"scenario": label, **r} for label, r in rows]
    results["samples"] = samples
    results["environment"] = environment(["hl7", "hl7-engine"])
    return {"suite": "ingest", "quick": options.quick, **results}
