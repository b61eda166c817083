"""Run the benchmark suites: ``python -m bench [--suite NAME ...] [--quick]`` (``make bench``).

Each suite prints its table and writes ``bench/results/<suite>.json`` (``<suite>-quick.json`` for a
``--quick`` smoke run, so it never overwrites a full run). Results belong to one machine and are not
committed. To add a suite, write a module with ``run(options) -> dict`` and list it in ``SUITES``.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

from bench.harness import Options, scratch_removed_at_exit, write_results

#: suite name -> module with ``run(options) -> dict`` (imported only when the suite runs)
SUITES: dict[str, str] = {
    "codec": "bench.codec_bench",
    "convert": "bench.convert_bench",
    "ingest": "bench.ingest_bench",
    "x12": "bench.x12_bench",
    "eligibility": "bench.eligibility_bench",
    "documents": "bench.documents_bench",
    "athena-tokens": "bench.athena_tokens",
    "console": "bench.console_bench",
    "pg-cost": "bench.pg_cost",
    "path-profile": "bench.path_profile",
    "path-profile-pg": "bench.path_profile_pg",
    "http-client": "bench.http_client_bench",
    "retention": "bench.retention_bench",
}
#: suites that run for a length of time, which ``--minutes`` sets (their ``run`` takes
#: ``minutes=``)
TIMED_SUITES = frozenset({"athena-tokens", "retention"})
#: suites run only when named (``--suite``), not by a bare ``python -m bench``: the retention
#: suite seeds ten million messages (about 16 GB) before it measures
ON_REQUEST = frozenset({"retention"})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--suite",
        action="append",
        choices=sorted(SUITES),
        help=f"run only this suite (repeatable; default: all but {', '.join(sorted(ON_REQUEST))})",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run on fewer messages")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per contestant")
    parser.add_argument(
        "--regenerate", action="store_true", help="rewrite the generated data files first"
    )
    parser.add_argument(
        "--minutes",
        type=float,
        help=f"length of a timed suite's run ({', '.join(sorted(TIMED_SUITES))})",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.minutes is not None:
        if args.minutes <= 0:
            parser.error("--minutes must be positive")
        if not args.suite or set(args.suite) - TIMED_SUITES:
            parser.error(f"--minutes goes with --suite {' / '.join(sorted(TIMED_SUITES))} only")
    options = Options(quick=args.quick, repeat=args.repeat, regenerate=args.regenerate)
    with scratch_removed_at_exit():  # bench/harness.py, Scratch: no removal between suites
        for name in args.suite or [s for s in SUITES if s not in ON_REQUEST]:
            module = importlib.import_module(SUITES[name])
            print(f"== {name}{' (quick)' if options.quick else ''} ==")
            timed = {"minutes": args.minutes} if args.minutes is not None else {}
            result = module.run(options, **timed)
            path = write_results(f"{name}-quick" if options.quick else name, result)
            print(f"results: {path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
