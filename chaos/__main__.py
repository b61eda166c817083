"""``python -m chaos --scenario NAME|all [--messages N] [--seed S] [--out DIR]``.

Runs the scenarios (chaos/scenarios.py, chaos/infra.py, chaos/leader.py) one after the other,
each in a fresh directory under ``--out`` (default ``var/chaos``), prints one row per scenario
and writes the Markdown table to ``<out>/summary.md``. Exits 1 when any scenario lost, doubled,
reordered or left stuck an ACKed message or failed its own check (kill-leader: the payer asked
twice, a leader late), 2 when a scenario could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from chaos.harness import Row, Scenario, run_scenario
from chaos.infra import INFRA
from chaos.leader import LEADER
from chaos.scenarios import PROCESS_AND_DESTINATION

SCENARIOS: list[Scenario] = [*PROCESS_AND_DESTINATION, *INFRA, *LEADER]
COLUMNS = (
    "scenario",
    "sent",
    "acked",
    "delivered",
    "duplicates",
    "lost",
    "out of order",
    "stuck",
    "seconds",
    "NAKs",
    "FHIR replays",
)


def _cells(row: Row) -> list[str]:
    return [
        row.scenario,
        str(row.sent),
        str(row.acked),
        str(row.delivered),
        str(row.duplicates),
        str(row.lost),
        str(row.out_of_order),
        str(row.stuck),
        f"{row.seconds:.0f}",
        str(row.naks),
        str(row.replayed),
    ]


def markdown(rows: list[Row], header: str) -> str:
    lines = [header, "", "| " + " | ".join(COLUMNS) + " | faults |"]
    lines.append("|" + " --- |" * (len(COLUMNS) + 1))
    for row in rows:
        lines.append("| " + " | ".join(_cells(row)) + f" | {row.faults} |")
    for row in rows:
        for line in row.detail:
            lines.append(f"\n- {row.scenario}: {line}")
    return "\n".join(lines) + "\n"


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    # SIGTERM, and SIGINT even when started in the background (which ignores it): the running
    # scenario's engine, stub, database and mount are stopped and removed on the way out
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    names = [s.name for s in SCENARIOS]
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument("--scenario", default="all", help=f"all, or one of: {', '.join(names)}")
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument(
        "--rate", type=float, default=100.0, help="messages/s offered in all (0: back to back)"
    )
    parser.add_argument("--out", type=Path, default=Path("var/chaos"))
    parser.add_argument(
        "--keep", action="store_true", help="leave the postgres scenario's cluster running"
    )
    args = parser.parse_args(argv)
    wanted = [s for s in SCENARIOS if args.scenario in ("all", s.name)]
    if not wanted:
        parser.error(f"unknown scenario {args.scenario!r} (scenarios: {', '.join(names)})")
    if args.messages < args.senders:
        parser.error("--messages must be at least --senders")
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(" | ".join(COLUMNS))  # noqa: T201 (the campaign's report)
    rows: list[Row] = []
    failed_to_run = False
    for scenario in wanted:
        root = out / "runs"
        if (root / scenario.name).exists():
            shutil.rmtree(root / scenario.name)
        root.mkdir(exist_ok=True)
        try:
            row = asyncio.run(
                run_scenario(
                    scenario, root, args.messages, args.seed, args.senders, args.rate, args.keep
                )
            )
        except KeyboardInterrupt:
            print(f"{scenario.name}: interrupted (cleaned up)", file=sys.stderr)  # noqa: T201
            return 130
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            print(f"{scenario.name}: could not run: {exc}", file=sys.stderr)  # noqa: T201
            failed_to_run = True
            continue
        rows.append(row)
        print(" | ".join(_cells(row)) + f" | {row.faults}", flush=True)  # noqa: T201
        for line in row.detail:
            print(f"  {line}")  # noqa: T201
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = (
        f"# Fault campaign ({when}; {args.messages} messages from {args.senders} senders, "
        f"seed {args.seed}, offered {args.rate:g}/s)"
    )
    (out / "summary.md").write_text(markdown(rows, header))
    if failed_to_run:
        return 2
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
