"""``python -m fuzz [--target NAME|all] [--inputs N] [--seed S] [--out DIR]``.

Prints one summary line per target (inputs, crashes, inputs over 1 s, the slowest input, the
time taken) and exits 1 when any target crashed or had a slow input. ``--replay FILE...`` runs
saved inputs (``var/fuzz/crashes/er7-<sha>.bin``: the target is the name's prefix) and prints
what each raises.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from pathlib import Path

from fuzz.runner import Stats, run_target
from fuzz.targets import TARGETS


def _print(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _replay(paths: list[Path]) -> int:
    bad = 0
    for path in paths:
        target = TARGETS[path.name.split("-", 1)[0]]
        try:
            target.run(path.read_bytes())
            _print(f"{path}: ok")
        except target.typed as exc:
            _print(f"{path}: typed {type(exc).__name__}: {exc}"[:300])
        except Exception:  # the finding, shown in full
            bad += 1
            _print(f"{path}: CRASH\n{traceback.format_exc()}")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__)
    parser.add_argument("--target", default="all", choices=[*TARGETS, "all"])
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("var/fuzz"))
    parser.add_argument("--slow-ms", type=float, default=1000.0)
    parser.add_argument(
        "--clock", choices=("cpu", "wall"), default="cpu", help="the time that judges slow inputs"
    )
    parser.add_argument("--progress", action="store_true", help="a line per round of inputs")
    parser.add_argument("--replay", type=Path, nargs="+", help="run saved inputs and stop")
    args = parser.parse_args(argv)
    # the engine logs what it tolerates (a reject it could not build ...): not the fuzzer's output
    logging.disable(logging.CRITICAL)
    if args.replay:
        return _replay(args.replay)
    names = list(TARGETS) if args.target == "all" else [args.target]
    failed = False

    def progress(stats: Stats) -> None:
        if args.progress:
            _print(f"  ... {stats.line()}")

    for name in names:
        stats = run_target(
            TARGETS[name],
            args.inputs,
            out=args.out,
            seed=args.seed,
            slow_s=args.slow_ms / 1000,
            clock=args.clock,
            progress=progress,
        )
        _print(stats.line())
        for key, path in stats.kinds.items():
            _print(f"  crash: {key} (first input {path})")
        failed = failed or bool(stats.crashes or stats.slow or stats.harness_errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
