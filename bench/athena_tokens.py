"""athenahealth's token endpoint under a long run: one token request per token lifetime per
client, whatever the number of worker processes, and never over athena's per-minute limit.

athena's preview rate-limits its token endpoint to a handful of requests a minute per client
(the stub: 5), and a token lives an hour. Four worker processes that each fetched their own token,
or asked all at once when it ran out, would use up the minute's quota and get 429s, stopping
every delivery. The engine shares one token per client through a file under ``var/tokens``
(engine/adapters/token_cache.py); this suite measures that over a real run:

* the stub athenahealth as ``engine stub-athena --admin`` (a process of its own), its token
  endpoint limited to ``--token-limit`` a minute and its tokens shortened to ``--token-lifetime``
  seconds so that several lifetimes pass in the run; it logs every token request's time and
  answer itself (``GET /admin/stats``), and the bench reads them from there;
* a real ``engine serve`` (the receiver and its worker) plus three ``engine worker`` processes on
  the same SQLite database and ``var`` folder: four workers in all, each delivering;
* documents uploaded continuously to ``POST /documents`` for the run's minutes (small synthetic
  PDFs for 32 synthetic patients the stub knows, so every worker has deliveries in flight), each
  routed to an ``athenahealth`` destination (patient search, document list, upload), and an
  ``athenahealth`` pull source reading booked appointments every minute with the same client;
* once, past the middle of the run, the stub revokes every token (``POST /admin/expire``): each
  worker's next call gets a 401 at about the same moment, the case where several processes
  could ask for a new token together.

Figures: token requests against token lifetimes elapsed and against the token *use periods*
(the engine refreshes a token 60 s before it runs out, half its lifetime when that is shorter:
a 300 s token is used 240 s, an hour's 3540 s), the requests a single shared token needs (one at
the start, one per use period passed, one per revocation) and the superfluous ones beyond that
(goal: 0); the most token requests in any 60 s and in each minute of the run (goal: never over the
limit); 429s from the token endpoint (goal: 0); documents accepted and delivered (goal: all),
created twice (goal: 0); the pulls that ran. ``--minutes`` sets the run's length (default 10;
``--quick`` 2).
"""

from __future__ import annotations

import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.harness import Options, environment
from bench.ingest_bench import _free_port, _wait_port
from engine.sim.epic_fhir import load_mrn
from engine.sim.pdf import synthetic_pdf

__all__ = ["TokenRun", "analyse", "run", "run_tokens"]

CLIENT_ID = "bench-athena-tokens"
SECRET_ENV = "BENCH_ATHENA_SECRET"
#: athena preview's "handful" of token requests a minute per client (the stub's default)
TOKEN_LIMIT = 5
#: the stub's token lifetime for the run: short, so that several lifetimes pass in ten minutes
TOKEN_LIFETIME_S = 120
WORKERS = 4
PATIENTS = 32
UPLOADERS = 4
#: documents a second the uploaders aim at, together
UPLOAD_RATE = 4.0
DOCUMENT_BYTES = 32 * 1024
#: the engine refreshes a token this long before it expires (engine/adapters/token_cache.py)
EARLY_S = 60.0

ROUTES = """
destinations:
  athena:
    type: athenahealth
    base_url: {base_url}
    client_id: {client_id}
    client_secret_env: {secret_env}
    practice_id: "195900"
    department_id: "1"
    requests_per_second: 10
    timeout_s: 30
    retry: {{max_attempts: 20, base_delay_s: 1, max_delay_s: 10}}
sources:
  athena-appointments:
    type: athenahealth
    base_url: {base_url}
    client_id: {client_id}
    client_secret_env: {secret_env}
    practice_id: "195900"
    department_id: "1"
    every_minutes: 1
    days: 2
    requests_per_second: 5
routes:
  - name: documents-to-athena
    match: {{kind: document}}
    mapping: none
    destinations: [athena]
"""


def use_period(lifetime_s: float) -> float:
    """How long the engine uses one token (its lifetime less the early refresh)."""
    return lifetime_s - min(EARLY_S, lifetime_s / 2)


@dataclass
class TokenRun:
    """What one run saw: the stub's counts, the uploads, the pulls, and when things happened."""

    minutes: float
    workers: int
    lifetime_s: int
    limit: int
    started: float = 0.0
    load_started: float = 0.0
    load_ended: float = 0.0
    ended: float = 0.0
    revoked_at: list[float] = field(default_factory=list)
    accepted: int = 0
    refused: int = 0
    stats: dict[str, Any] = field(default_factory=dict)
    pulls: list[dict[str, Any]] = field(default_factory=list)
    worker_nodes: int = 0


# -- the processes ---------------------------------------------------------------------------------


def _popen(args: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "engine", *args],
            env=env,
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=out,
            start_new_session=True,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process's group (``engine serve`` and its worker), SIGKILL after 30 s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    except ProcessLookupError:
        pass


@contextmanager
def _process(
    args: list[str], env: dict[str, str], log: Path, cwd: Path
) -> Iterator[subprocess.Popen[bytes]]:
    proc = _popen(args, env, log, cwd)
    try:
        yield proc
    finally:
        _stop(proc)


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-1500:]
    except OSError:
        return ""


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}); its log ends:\n{_tail(log)}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s; log:\n{_tail(log)}")


def _worker_nodes(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            row = conn.execute("SELECT count(*) FROM nodes WHERE role LIKE 'worker%'").fetchone()
    except sqlite3.Error:
        return 0  # not created yet
    return int(row[0]) if row else 0


def _wait_workers(db: Path, n: int, procs: list[subprocess.Popen[bytes]], timeout: float) -> int:
    """Until ``n`` worker processes have registered (each starts seconds after it is spawned
    on a busy machine): the run measures them all delivering."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("an engine process exited while starting")
        got = _worker_nodes(db)
        if got >= n:
            return got
        time.sleep(0.25)
    raise RuntimeError(f"{_worker_nodes(db)} of {n} workers registered within {timeout:.0f} s")


def _pulls(db: Path) -> list[dict[str, Any]]:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            rows = conn.execute(
                "SELECT node, outcome FROM job_runs WHERE job_id LIKE 'pull:%' ORDER BY run_at"
            ).fetchall()
    except sqlite3.Error:
        return []
    return [{"node": node, "outcome": outcome} for node, outcome in rows]


def _cli(env: dict[str, str], cwd: Path, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "engine", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"engine {args[0]}: {out.stderr.strip()[-500:]}")
    return out.stdout.strip().splitlines()[-1]


# -- the load ------------------------------------------------------------------------------------


class _Uploaders:
    """``UPLOADERS`` threads posting unique synthetic PDFs to ``/documents`` at a steady pace
    (``rate`` a second together) until stopped; each counts what the engine accepted."""

    def __init__(self, url: str, token: str, rate: float, patients: int) -> None:
        self.url, self.token, self.patients = url, token, patients
        self.interval = UPLOADERS / rate
        self.accepted = self.refused = 0
        self.first_refusal = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(UPLOADERS)
        ]
        template = synthetic_pdf(
            "consent", "Load, Patient", mrn="LOAD0", target_size=DOCUMENT_BYTES, seed=7
        )
        self._at = template.rfind(b">>\nstream\n") + len(b">>\nstream\n")
        if self._at <= len(b">>\nstream\n"):
            raise RuntimeError("the synthetic PDF has no padding stream to vary")
        self._template = template

    def _pdf(self) -> bytes:
        body = bytearray(self._template)
        body[self._at : self._at + 16] = os.urandom(16)  # unique bytes: stored and sent once each
        return bytes(body)

    def _run(self, who: int) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        n = who
        with httpx.Client(base_url=self.url, timeout=60) as client:
            next_at = time.monotonic() + who * self.interval / UPLOADERS
            while not self._stop.is_set():
                self._stop.wait(max(0.0, next_at - time.monotonic()))
                if self._stop.is_set():
                    return
                next_at += self.interval
                mrn = load_mrn(n % self.patients + 1)
                try:
                    resp = client.post(
                        "/documents",
                        headers=headers,
                        files={"file": (f"scan-{n}.pdf", self._pdf(), "application/pdf")},
                        data={"mrn": mrn, "document_type": "consent", "date": "2026-12-01"},
                    )
                    ok, detail = resp.status_code in (200, 201), f"{resp.status_code}"
                except httpx.HTTPError as exc:
                    ok, detail = False, type(exc).__name__
                with self._lock:
                    if ok:
                        self.accepted += 1
                    else:
                        self.refused += 1
                        self.first_refusal = self.first_refusal or detail
                n += UPLOADERS

    def __enter__(self) -> _Uploaders:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(90)


# -- one run -------------------------------------------------------------------------------------


def run_tokens(
    minutes: float,
    *,
    workers: int = WORKERS,
    lifetime_s: int = TOKEN_LIFETIME_S,
    limit: int = TOKEN_LIMIT,
    revoke_at: float | None = 0.55,
    rate: float = UPLOAD_RATE,
    drain_s: float = 180.0,
    progress: bool = True,
) -> TokenRun:
    """One run of ``minutes`` of uploads (then up to ``drain_s`` for the last deliveries), with
    ``workers`` worker processes in all; ``revoke_at``: the fraction of the run at which the
    stub revokes every token (None: never)."""
    out = TokenRun(minutes=minutes, workers=workers, lifetime_s=lifetime_s, limit=limit)
    secret = secrets.token_urlsafe(24)

    def say(text: str) -> None:
        if progress:
            print(f"  [{time.strftime('%H:%M:%S')}] {text}", flush=True)

    with tempfile.TemporaryDirectory(prefix="athena-tokens-") as tmp, ExitStack() as stack:
        var = Path(tmp)
        routes = var / "routes"
        routes.mkdir()
        athena_port, http_port = _free_port(), _free_port()
        athena_url = f"http://127.0.0.1:{athena_port}"
        stub = stack.enter_context(
            _process(
                [
                    "stub-athena",
                    "--port",
                    str(athena_port),
                    "--client-id",
                    CLIENT_ID,
                    "--token-limit",
                    str(limit),
                    "--token-lifetime",
                    str(lifetime_s),
                    "--admin",
                    "--load-patients",
                    str(PATIENTS),
                ],
                {**os.environ, "ENGINE_STUB_ATHENA_SECRET": secret},
                var / "stub-athena.log",
                var,
            )
        )
        _wait_port(athena_port, stub, 60)
        (routes / "athena.yaml").write_text(
            ROUTES.format(base_url=athena_url, client_id=CLIENT_ID, secret_env=SECRET_ENV)
        )
        env = {
            **os.environ,
            "ENGINE_HOME": str(var),
            "ENGINE_VAR_DIR": str(var),
            "ENGINE_ROUTES_DIR": str(routes),
            "ENGINE_MLLP_HOST": "127.0.0.1",
            "ENGINE_HTTP_HOST": "127.0.0.1",
            "ENGINE_LOG_LEVEL": "WARNING",
            "ENGINE_WORKERS": "true",
            SECRET_ENV: secret,
        }
        token = _cli(
            env,
            var,
            "token",
            "--role",
            "integration",
            "--subject",
            "bench",
            "--ttl",
            str(int(minutes * 60 + drain_s + 600)),
        )
        out.started = time.time()
        serve_log = var / "engine-serve.log"
        serve = stack.enter_context(
            _process(
                ["serve", "--mllp-port", str(_free_port()), "--http-port", str(http_port)],
                env,
                serve_log,
                var,
            )
        )
        _wait_ready(f"http://127.0.0.1:{http_port}/readyz", serve, serve_log, 120)
        procs = [serve]
        for n in range(workers - 1):
            procs.append(
                stack.enter_context(_process(["worker"], env, var / f"worker-{n}.log", var))
            )
        out.worker_nodes = _wait_workers(var / "engine.db", workers, procs, 180)
        say(f"{out.worker_nodes} workers registered; uploading for {minutes:g} min")
        load_started = out.load_started = time.time()
        revoke_time = load_started + revoke_at * minutes * 60 if revoke_at is not None else None
        uploaders = _Uploaders(f"http://127.0.0.1:{http_port}", token, rate, PATIENTS)
        with uploaders:
            end = load_started + minutes * 60
            next_say = load_started + 60
            while (now := time.time()) < end:
                if any(p.poll() is not None for p in procs):
                    raise RuntimeError("an engine process exited during the run")
                if revoke_time is not None and now >= revoke_time and not out.revoked_at:
                    httpx.post(f"{athena_url}/admin/expire", timeout=10).raise_for_status()
                    out.revoked_at.append(time.time())
                    say("the stub revoked every token")
                if progress and now >= next_say:
                    st = httpx.get(f"{athena_url}/admin/stats", timeout=10).json()
                    say(
                        f"accepted {uploaders.accepted}, in athena {st['uploads']}, token "
                        f"requests {st['token_requests']}, 429s {st['token_limited']}"
                    )
                    next_say += 60
                time.sleep(min(0.5, max(0.0, end - now)))
        out.load_ended = time.time()
        out.accepted, out.refused = uploaders.accepted, uploaders.refused
        if uploaders.refused:
            say(f"{uploaders.refused} uploads refused (first: {uploaders.first_refusal})")
        say(f"uploads stopped at {out.accepted}; waiting for the last deliveries")
        drain_end = time.monotonic() + drain_s
        while time.monotonic() < drain_end:
            st = httpx.get(f"{athena_url}/admin/stats", timeout=10).json()
            if st["uploads"] >= out.accepted:
                break
            time.sleep(1)
        out.ended = time.time()
        out.stats = httpx.get(f"{athena_url}/admin/stats", timeout=10).json()
        out.pulls = _pulls(var / "engine.db")
    return out


# -- the figures -----------------------------------------------------------------------------------


def _max_in_window(times: list[float], span: float = 60.0) -> int:
    best, first = 0, 0
    for last, t in enumerate(times):
        while t - times[first] >= span:
            first += 1
        best = max(best, last - first + 1)
    return best


def analyse(r: TokenRun) -> dict[str, Any]:
    """The run's figures and whether each goal was met."""
    log = [(float(t), int(status)) for t, status in r.stats["token_log"]]
    times = sorted(t for t, _ in log if t >= r.started)
    issued = sorted(t for t, status in log if status == 200 and t >= r.started)
    span = max(r.ended, r.started) - r.started
    period = use_period(r.lifetime_s)
    # the requests one shared token needs: the first, then one each time the token in use
    # reached the end of its use period or was revoked; a request sooner than that is extra
    needed = superfluous = 0
    previous: float | None = None
    for t in issued:
        revoked = previous is not None and any(previous < x <= t for x in r.revoked_at)
        if previous is None or revoked or t - previous >= period - 1.0:
            needed += 1
        else:
            superfluous += 1
        previous = t
    minutes = [0] * (int(span // 60) + 1)
    for t in times:
        minutes[min(len(minutes) - 1, int((t - r.started) // 60))] += 1
    uploads_twice = int(r.stats["documents_created_twice"])
    figures: dict[str, Any] = {
        "run_s": round(span, 1),
        "load_s": round(r.load_ended - (r.load_started or r.started), 1),
        "workers": r.workers,
        "worker_nodes_registered": r.worker_nodes,
        "token_lifetime_s": r.lifetime_s,
        "token_use_period_s": period,
        "token_limit_per_minute": r.limit,
        "lifetimes_elapsed": round(span / r.lifetime_s, 2),
        "use_periods_elapsed": round(span / period, 2),
        "revocations": len(r.revoked_at),
        "token_requests": len(times),
        "tokens_issued": len(issued),
        "token_requests_needed": needed,
        "token_requests_superfluous": superfluous,
        "token_requests_per_lifetime": round(len(times) / (span / r.lifetime_s), 2),
        "token_requests_per_minute": minutes,
        "max_token_requests_in_60s": _max_in_window(times),
        "token_429s": int(r.stats["token_limited"]),
        "token_request_offsets_s": [round(t - r.started, 1) for t in times],
        "revoked_at_s": [round(t - r.started, 1) for t in r.revoked_at],
        "api_requests": int(r.stats["api_requests"]),
        "api_401s": int(r.stats["api_unauthorized"]),
        "api_paced_429s": int(r.stats["paced"]),
        "documents_accepted": r.accepted,
        "documents_refused": r.refused,
        "documents_delivered": int(r.stats["uploads"]),
        "documents_created_twice": uploads_twice,
        "pulls": len(r.pulls),
        "pull_nodes": len({p["node"] for p in r.pulls}),
        "pull_outcomes": sorted({str(p["outcome"])[:80] for p in r.pulls}),
    }
    figures["goals_met"] = {
        "one_token_per_use_period": superfluous == 0,
        "never_over_the_limit": figures["max_token_requests_in_60s"] <= r.limit,
        "no_token_429": figures["token_429s"] == 0,
        "all_delivered": figures["documents_delivered"] == r.accepted and r.accepted > 0,
        "none_created_twice": uploads_twice == 0,
    }
    return figures


def describe(f: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"  run {f['run_s']:.0f} s from the engine's start ({f['load_s']:.0f} s of uploads), "
            f"{f['workers']} workers, "
            f"token lifetime {f['token_lifetime_s']} s (used {f['token_use_period_s']:.0f} s), "
            f"limit {f['token_limit_per_minute']}/min, {f['revocations']} revocation(s)",
            f"  token requests {f['token_requests']} over {f['lifetimes_elapsed']} lifetimes "
            f"({f['use_periods_elapsed']} use periods): needed {f['token_requests_needed']}, "
            f"superfluous {f['token_requests_superfluous']}",
            f"  per minute {f['token_requests_per_minute']}; most in any 60 s "
            f"{f['max_token_requests_in_60s']} (limit {f['token_limit_per_minute']}); "
            f"429s from the token endpoint {f['token_429s']}",
            f"  documents accepted {f['documents_accepted']}, delivered "
            f"{f['documents_delivered']}, created twice {f['documents_created_twice']}; "
            f"API requests {f['api_requests']} (401s {f['api_401s']}, paced 429s "
            f"{f['api_paced_429s']}); pulls {f['pulls']} by {f['pull_nodes']} worker(s)",
            f"  goals met: {f['goals_met']}",
        ]
    )


def run(options: Options, *, minutes: float | None = None) -> dict[str, Any]:
    length = minutes if minutes is not None else (2.0 if options.quick else 10.0)
    r = run_tokens(length)
    figures = analyse(r)
    print(describe(figures), flush=True)
    return {
        "suite": "athena-tokens",
        "quick": options.quick,
        "minutes": length,
        "figures": figures,
        "goals": {
            "token_requests": "one per token use period per client (no superfluous request)",
            "max_token_requests_in_60s": f"<= {r.limit}",
            "token_429s": 0,
            "documents_created_twice": 0,
        },
        "environment": environment(["hl7-engine"]),
    }
