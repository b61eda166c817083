"""``python -m soak [--minutes 60] [--rate 200] ...``: the soak (issue 14), ``make soak``.

Writes ``var/soak/<UTC time>/``: samples.csv (one row a sample), summary.json (the options,
totals and each criterion), plot.png, acks.csv (every ACK: send time, latency, MSA-1, type),
documents.csv, the engine's and the load's logs. Prints the verdict table; exits 1 when a
criterion failed, 2 when the run itself could not be made.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

from soak.harness import COLUMNS, ROUTE_SETS, Options, Run, soak
from soak.report import plot, say, table, write_csv, write_summary
from soak.verdict import Criterion, judge, warmup_s


def _options(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(prog="python -m soak", description=__doc__)
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--rate", type=float, default=200.0, help="MLLP messages/s over all senders")
    p.add_argument("--senders", type=int, default=8)
    p.add_argument("--doc-interval", type=float, default=2.0, help="seconds between uploads")
    p.add_argument("--doc-size", type=int, default=1024 * 1024)
    p.add_argument("--sample-s", type=float, default=10.0)
    p.add_argument("--warmup-s", type=float, default=None, help="default 10 %%, at least 120")
    p.add_argument("--cron", default="*/2 * * * *", help="the eligibility schedule")
    p.add_argument("--out", type=Path, default=Path("var/soak"))
    p.add_argument("--keep-home", action="store_true", help="keep the engine's temporary home")
    p.add_argument("--min-free-gb", type=float, default=15.0, help="stop early below this")
    p.add_argument(
        "--database-url",
        default="",
        help="a PostgreSQL server (postgresql+psycopg://...): the run makes and drops a database",
    )
    p.add_argument(
        "--routes",
        choices=sorted(ROUTE_SETS),
        default="example",
        help="example: the FHIR server and folders (default); file: mapped, to a folder only; "
        "fhir: mapped, to the FHIR server only",
    )
    p.add_argument(
        "--fhir-concurrency",
        type=int,
        default=None,
        help="the FHIR destination's concurrency (deliveries under way at once; default 8)",
    )
    p.add_argument(
        "--worker-processes",
        type=int,
        default=None,
        help="the engine's worker processes (ENGINE_WORKER_PROCESSES; default the engine's)",
    )
    a = p.parse_args(argv)
    return Options(
        minutes=a.minutes,
        rate=a.rate,
        senders=a.senders,
        doc_interval_s=a.doc_interval,
        doc_size=a.doc_size,
        sample_s=a.sample_s,
        warmup_s=a.warmup_s,
        cron=a.cron,
        out=a.out,
        keep_home=a.keep_home,
        database_url=a.database_url,
        min_free_gb=a.min_free_gb,
        routes=a.routes,
        fhir_concurrency=a.fhir_concurrency,
        worker_processes=a.worker_processes,
    )


def _stop(signum: int, _frame: object) -> None:
    """SIGTERM or SIGINT (a background job ignores SIGINT otherwise): stop the run the way
    Ctrl-C does, so that the engine, the stub and the load are stopped on the way out. The
    newest processes on the machine are logged first (who may have sent it: a signal handler
    is not told)."""
    newest = subprocess.run(
        ["ps", "-eo", "pid,ppid,lstart,args", "--sort=start_time"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()[-12:]
    say(f"soak: signal {signum} at {time.strftime('%H:%M:%S', time.gmtime())}; newest processes:")
    say("\n".join(line[:160] for line in newest))
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    opts = _options(argv)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    out = opts.out / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out.mkdir(parents=True, exist_ok=True)
    warmup = opts.warmup_s if opts.warmup_s is not None else warmup_s(opts.minutes * 60)
    documents = (
        f"one {opts.doc_size // 1024} KiB document every {opts.doc_interval_s:g} s"
        if opts.doc_interval_s > 0
        else "no documents"
    )
    say(
        f"soak: {opts.minutes:g} min at {opts.rate:g} msg/s ({opts.senders} senders), "
        f"{opts.routes} routes, {documents}, eligibility '{opts.cron}', warm-up {warmup:.0f} s"
        + (f", {opts.worker_processes} worker processes" if opts.worker_processes else "")
        + "; "
        f"results in {out}"
    )
    run = Run()
    try:
        soak(opts, out, say, run)
    except (RuntimeError, OSError, KeyboardInterrupt) as exc:
        run.stopped_early = f"the run failed: {exc}" if str(exc) else "interrupted"
        say(f"soak: {run.stopped_early}")
        if not run.samples:
            return 2
    criteria = judge(
        run.samples,
        warmup=warmup,
        until=opts.minutes * 60,
        rate=opts.rate,
        judged_ack_ms=run.judged_ack_ms,
        refused_acks=run.refused_acks,
        refused_docs=run.refused_docs,
    )
    criteria.append(
        Criterion(
            "ran to the end",
            not run.stopped_early,
            None,
            None,
            None,
            f"stopped early: {run.stopped_early}" if run.stopped_early else "",
        )
    )
    write_csv(out / "samples.csv", COLUMNS, run.samples)
    ok = all(c.ok for c in criteria)
    write_summary(
        out / "summary.json",
        {
            "options": {k: str(v) for k, v in vars(opts).items()},
            "warmup_s": warmup,
            "seconds": run.seconds or (run.samples[-1]["t_s"] if run.samples else 0),
            "acks": run.acks,
            "documents": run.documents,
            "refused_acks": run.refused_acks,
            "refused_documents": run.refused_docs,
            "worker_pids": run.worker_pids,
            "stopped_early": run.stopped_early,
            "eligibility_checks": run.samples[-1]["eligibility_checks"] if run.samples else 0,
            "ok": ok,
            "criteria": [c.row() for c in criteria],
        },
    )
    title = f"soak: {opts.minutes:g} min, {opts.rate:g} msg/s, {opts.routes} routes"
    title += " + documents" if opts.doc_interval_s > 0 else ""
    title += " + eligibility"
    plot(out / "plot.png", run.samples, warmup, title)
    say("\n" + table(criteria))
    say(f"\nsoak: {'passed' if ok else 'FAILED'}; {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
