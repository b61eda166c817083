"""Where a message's milliseconds go: ``engine serve`` on SQLite, as ``make run`` runs it, under
8 MLLP senders, its receiver and worker sampled by py-spy (issue 14: "say where each millisecond
of a message's path goes").

The engine runs with a route that maps each ADT^A08 to FHIR and drops it in a folder (the
ingest bench's). After a warm-up, ``MESSAGES`` messages are sent from 8 senders, each sending
its next one when the ACK comes, while ``py-spy record`` samples both processes (non-blocking,
``RATE`` samples a second of each thread that is busy); the run ends when the worker has
delivered them all. Each sample is 1/RATE s of one thread busy: on the CPU, or in a system
call py-spy does not count as idle (an fsync, a write). So each stage's figure is its threads'
busy milliseconds per message; beside it, each process's CPU time over the run (/proc) per
message. The stages come from each sample's stack, by the first rule of :data:`RULES` that
matches (the database's own work first, then SQLAlchemy's and the FHIR models', then the
engine module the innermost engine frame is in); with each, its most sampled innermost frames.

Sampling costs the sampled processes little (py-spy reads their memory from outside), but it
takes CPU from the same two cores: the rate under the profiler is lower than the ingest bench's.
Without py-spy (``pip install py-spy``; it needs ptrace) the suite says so and measures nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.harness import Options, environment
from bench.ingest_bench import (
    FILE_DEST,
    ROUTES,
    _engine,
    _load,
    _postgres_url,
    _stop,
    _wait_delivered,
)

__all__ = ["classify", "run"]

MESSAGES = 20_000
WARM = 1_000
RATE = 250
#: the engine's own source folder: frames in files under it are the engine's
ENGINE_ROOT = str(Path(__file__).resolve().parent.parent / "engine") + "/"
#: (stage, kind, pattern) in order: the first that matches a sample wins. ``leaf``: the
#: innermost frame's ``function file``; ``lib``: any frame's file; ``engine``: the innermost
#: engine frame's file, relative to the engine's folder.
RULES: tuple[tuple[str, str, str], ...] = (
    (
        "database: executing statements, commits (SQLite's C code, fsync)",
        "leaf",
        r"^(do_execute|do_executemany|do_commit) .*/sqlalchemy/engine/default\.py$",
    ),
    ("psycopg: sending, waiting, reading results", "lib", r"/site-packages/psycopg/"),
    ("SQLAlchemy: compiling, binding, results", "lib", r"/site-packages/sqlalchemy/"),
    ("FHIR models (fhir.resources, pydantic)", "lib", r"/site-packages/(fhir|pydantic)"),
    ("MLLP: framing, reading, writing", "engine", r"^adapters/mllp/"),
    ("HL7v2: parsing, checks, ACKs", "engine", r"^hl7v2/"),
    ("mapping v2 to FHIR", "engine", r"^mappings/"),
    ("routing", "engine", r"^routes/"),
    ("delivery (file destination)", "engine", r"^adapters/"),
    ("store: the engine's statements", "engine", r"^store/"),
    ("pipeline: ingest, claim, process, deliver", "engine", r"^flow/"),
    ("metrics and logs", "engine", r"^(metrics|logs)\.py$"),
)
_COMPILED = [(stage, kind, re.compile(pattern)) for stage, kind, pattern in RULES]
NO_ENGINE = "runtime: event loop, threads, interpreter"
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>.*?)(:\d+)?\)$")


def _frame(text: str) -> tuple[str, str]:
    """(function, file) of one py-spy frame, ``function (file:line)``."""
    found = _FRAME.match(text)
    return (found["function"], found["file"]) if found else (text, "")


def classify(frames: list[str]) -> str:
    """The stage of one sample: ``frames`` outermost first, each ``function (file:line)``
    with the file's full path (py-spy's ``--full-filenames``)."""
    parsed = [_frame(f) for f in frames]
    if not parsed:
        return NO_ENGINE
    engine = next((file for _, file in reversed(parsed) if file.startswith(ENGINE_ROOT)), None)
    for stage, kind, pattern in _COMPILED:
        if kind == "leaf":
            function, file = parsed[-1]
            if pattern.search(f"{function} {file}"):
                return stage
        elif kind == "lib":
            if any(pattern.search(file) for _, file in parsed):
                return stage
        elif engine is not None and pattern.search(engine[len(ENGINE_ROOT) :]):
            return stage
    if engine is not None and not engine.endswith("/runtime.py"):  # runtime.py runs the loop
        return f"engine: {engine[len(ENGINE_ROOT) :]}"
    return NO_ENGINE


def _leaves(raw: Path) -> dict[str, Counter[str]]:
    """py-spy's raw (collapsed) output: stage -> its samples' innermost frames (``function
    (file name)``) -> samples."""
    out: dict[str, Counter[str]] = {}
    # non-blocking sampling can read a frame mid-change: a garbled name, never a failure
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")[1:]  # the first is the thread
        function, file = _frame(frames[-1]) if frames else ("?", "")
        leaf = f"{function} ({Path(file).name})"
        out.setdefault(classify(frames), Counter())[leaf] += int(count)
    return out


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _worker_pids(pid: int, count: int) -> list[int]:
    """The ``count`` worker processes ``engine serve`` started: its children that
    multiprocessing spawned (not the resource tracker beside them)."""
    end = time.monotonic() + 60
    while time.monotonic() < end:
        found = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                args = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
                if b"spawn_main" in args:
                    found.append(int(child))
        if len(found) >= count:
            return sorted(found)[:count]
        time.sleep(0.2)
    raise RuntimeError(f"engine serve did not start {count} worker processes")


def _record(pid: int, out: Path) -> subprocess.Popen[bytes]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    args = [spy, "record", "--pid", str(pid), "--rate", str(RATE), "--nonblocking"]
    args += ["--full-filenames", "--format", "raw", "--output", str(out)]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _stop_spy(spy: subprocess.Popen[bytes], out: Path) -> None:
    spy.send_signal(signal.SIGINT)
    try:
        _, err = spy.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        spy.kill()
        raise RuntimeError("py-spy did not stop") from None
    if not out.exists():
        raise RuntimeError(f"py-spy wrote no profile: {err.decode(errors='replace')[-400:]}")


def _profile(leaves: dict[str, Counter[str]], cpu_s: float, messages: int) -> dict[str, Any]:
    stacks = Counter({stage: sum(c.values()) for stage, c in leaves.items()})
    samples = sum(stacks.values())
    ms = 1000 * cpu_s / messages
    stages = {
        stage: {
            # each sample is 1/RATE s of one thread busy (on the CPU, or in a system call such
            # as fsync that py-spy does not count as idle)
            "busy_ms_per_message": round(1000 * n / RATE / messages, 4),
            "share_pct": round(100 * n / samples, 1),
            "top": [f"{leaf} {100 * k / n:.0f} %" for leaf, k in leaves[stage].most_common(3)],
        }
        for stage, n in stacks.most_common()
    }
    return {
        "cpu_ms_per_message": round(ms, 3),
        "busy_ms_per_message": round(1000 * samples / RATE / messages, 3),
        "samples": samples,
        "stages": stages,
    }


def _spy_available() -> bool:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return Path(spy).exists()


def run(options: Options, backend: str = "sqlite") -> dict[str, Any]:
    """The profile on SQLite with one worker process (as ``make run`` runs it, one process so
    that the profile follows a message through one worker's path), or on PostgreSQL
    (``backend="postgresql"``, suite ``path-profile-pg``: the machine's database, a schema of
    its own) with the default two worker processes, each profiled."""
    if not _spy_available():
        print("  py-spy is not installed (make venv installs it): nothing measured")
        return {"suite": "path-profile", "skipped": "py-spy not installed"}
    messages = 4_000 if options.quick else MESSAGES
    with tempfile.TemporaryDirectory(prefix="path-profile-") as tmp:
        work = Path(tmp)
        routes = work / "routes"
        routes.mkdir()
        (routes / "example.yaml").write_text(
            ROUTES.format(name="drop", type="file", extra=FILE_DEST.format(dir=work / "out"))
        )
        schema = f"profile_{os.getpid()}"
        if backend == "postgresql":
            maybe = _postgres_url(schema)
            if maybe is None:
                return {"suite": "path-profile-pg", "skipped": "PostgreSQL not available"}
            db_url, workers = maybe, 2
        else:
            db_url, workers = f"sqlite:///{work / 'engine.db'}", 1
        proc, port = _engine(db_url, routes, work, worker_processes=workers)
        try:
            worker_pids = _worker_pids(proc.pid, workers)
            _load(port, 8, WARM)
            _wait_delivered(db_url, WARM)
            pids = {"receiver": proc.pid}
            pids.update(
                {
                    f"worker {i + 1}" if workers > 1 else "worker": w
                    for i, w in enumerate(worker_pids)
                }
            )
            result = _measured(pids, port, db_url, messages, work)
        finally:
            _stop(proc)
            if backend == "postgresql":
                _drop_schema(schema)
    result["backend"] = backend
    _print(result)
    result["environment"] = environment(["sqlalchemy", "uvloop", "psycopg"])
    name = "path-profile-pg" if backend == "postgresql" else "path-profile"
    return {"suite": name, "quick": options.quick, **result}


def _measured(
    pids: dict[str, int], port: int, db_url: str, messages: int, work: Path
) -> dict[str, Any]:
    spies = {name: _record(pid, work / f"{name}.txt") for name, pid in pids.items()}
    time.sleep(1.0)  # py-spy attached
    before = {name: _cpu_s(pid) for name, pid in pids.items()}
    start = time.monotonic()
    sent = _load(port, 8, messages)
    received_s = time.monotonic() - start
    done = _wait_delivered(db_url, WARM + messages)
    cpu = {name: _cpu_s(pid) - before[name] for name, pid in pids.items()}
    for name, spy in spies.items():
        _stop_spy(spy, work / f"{name}.txt")
    return {
        "messages": messages,
        "received_per_s": round(messages / received_s, 1),
        "delivered_per_s": round(messages / (done - start), 1),
        "ack_p50_ms": sent.get("p50_ms"),
        "ack_p99_ms": sent.get("p99_ms"),
        "processes": {
            name: _profile(_leaves(work / f"{name}.txt"), cpu[name], messages) for name in pids
        },
    }


def _drop_schema(schema: str) -> None:
    from sqlalchemy import create_engine, text

    base = os.environ.get(
        "ENGINE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    )
    eng = create_engine(base)
    with eng.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    eng.dispose()


def _print(r: dict[str, Any]) -> None:
    print(
        f"  {r['backend']}: {r['messages']:,} ADT^A08 from 8 senders, mapped to FHIR, into a "
        f"folder: received "
        f"{r['received_per_s']:,.0f}/s, delivered {r['delivered_per_s']:,.0f}/s (under py-spy); "
        f"ACK p50 {r['ack_p50_ms']:.1f} ms, p99 {r['ack_p99_ms']:.1f} ms"
    )
    for name, p in r["processes"].items():
        cpu, busy, samples = p["cpu_ms_per_message"], p["busy_ms_per_message"], p["samples"]
        print(
            f"  {name}: per message {busy:.3f} ms of its threads busy, {cpu:.3f} ms of CPU "
            f"({samples:,} samples)"
        )
        for stage, s in p["stages"].items():
            print(f"    {stage:<66} {s['busy_ms_per_message']:>7.3f} ms  {s['share_pct']:>5.1f} %")
            print(f"      {'; '.join(s['top'])}")
