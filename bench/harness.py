"""What every benchmark suite shares: options, timing, the results table and the JSON file.

A suite is a module with ``run(options) -> dict``; :mod:`bench.__main__` lists the suites. Timing is
wall-clock (:func:`time.perf_counter`) with the garbage collector left on, as in production; each
contestant runs ``repeat`` times over the same pre-built inputs and reports the best and the mean.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "BENCH_DIR",
    "DATA_DIR",
    "RESULTS_DIR",
    "Options",
    "Timing",
    "environment",
    "format_table",
    "measure",
    "write_results",
]

BENCH_DIR = Path(__file__).resolve().parent
DATA_DIR = BENCH_DIR / "data"
RESULTS_DIR = BENCH_DIR / "results"


@dataclass(frozen=True)
class Options:
    """Command-line choices every suite receives."""

    quick: bool = False
    repeat: int = 3
    regenerate: bool = False


class Scratch:
    """Directories for a suite's cases (their stores and file drops), all removed when the suite
    ends, not each after its case (``with Scratch() as scratch: var = scratch.new()``).

    This machine's root file system is ext4 without a journal, where a new inode is never one
    freed in the last 60 s (6 minutes while its inode table's block is not yet written back):
    the kernel walks past each of them, a lookup each. Removing one case's drop of 13,000
    files made the next case's file creations that walk: ``perf`` over a PostgreSQL case with
    its worker, run right after such a removal, put 9 % of the whole machine's CPU in it
    (``recently_deleted`` under ``ext4_tmpfile``), and 0.6 % when the case ran 100 s after it
    (6 December 2026). The engine deletes nothing in a drop; the cleanup of the case before
    was being measured, and a suite that deletes only at its end measures the engine."""

    def __init__(self, prefix: str = "bench-") -> None:
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        self._count = 0

    def new(self) -> Path:
        """A new empty directory for one case."""
        self._count += 1
        path = self.root / f"case{self._count}"
        path.mkdir()
        return path

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, *exc: object) -> None:
        if _DEFERRED is not None:  # python -m bench: once every suite has run
            _DEFERRED.append(self.root)
        else:
            shutil.rmtree(self.root, ignore_errors=True)


#: the scratch directories to remove when ``python -m bench`` ends (None: each when its suite
#: ends): removed after a suite, they would slow the next suite's new files the same way
_DEFERRED: list[Path] | None = None


@contextlib.contextmanager
def scratch_removed_at_exit() -> Iterator[None]:
    """Within it, :class:`Scratch` directories are removed when it ends, not when their suite
    does (``python -m bench`` runs its suites inside it)."""
    global _DEFERRED
    _DEFERRED = []
    try:
        yield
    finally:
        for root in _DEFERRED:
            shutil.rmtree(root, ignore_errors=True)
        _DEFERRED = None


@dataclass
class Timing:
    """One contestant's measurements over ``messages`` inputs."""

    key: str
    label: str
    messages: int
    seconds: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def best_rate(self) -> float:
        return self.messages / min(self.seconds)

    @property
    def mean_rate(self) -> float:
        return self.messages / statistics.fmean(self.seconds)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["best_msgs_per_s"] = round(self.best_rate, 1)
        d["mean_msgs_per_s"] = round(self.mean_rate, 1)
        d["best_us_per_msg"] = round(1e6 / self.best_rate, 2)
        return d


def measure(
    key: str,
    label: str,
    fn: Callable[[Any], object],
    inputs: Sequence[Any],
    repeat: int,
    note: str = "",
) -> Timing:
    """Call ``fn`` on every input, ``repeat`` times; results are discarded as they are made."""
    timing = Timing(key, label, len(inputs), note=note)
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        for item in inputs:
            fn(item)
        timing.seconds.append(time.perf_counter() - start)
    return timing


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_speed_ms() -> float:
    """How fast this machine runs Python now: the best of five times of a fixed loop (a
    million additions), in ms. A shared or throttled virtual machine can run the same code
    half as fast from one hour to the next; figures from different runs compare only at a
    like speed, so each suite records it beside its figures (``environment``)."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        total = 0
        for i in range(1_000_000):
            total += i
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 1)


def environment(packages: Sequence[str]) -> dict[str, Any]:
    """Where the numbers came from: interpreter, machine and package versions, and the
    machine's speed when they were taken (:func:`cpu_speed_ms`)."""
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu": _cpu(),
        "cpus": os.cpu_count(),
        "cpu_speed_ms": cpu_speed_ms(),
        "packages": versions,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _ratio(r: float) -> str:
    return f"{r:.3f}x" if r < 1 else f"{r:,.1f}x"


def format_table(timings: Sequence[Timing], baselines: Sequence[tuple[str, str]]) -> str:
    """A plain-text table; ``baselines`` are ``(key, column title)`` pairs for the ratio columns."""
    refs = {key: t.best_rate for key, _ in baselines for t in timings if t.key == key}
    head = ["", "contestant", "msgs", "best msg/s", "mean msg/s", "us/msg"]
    head += [title for _, title in baselines]
    rows = [head]
    for t in timings:
        row = [
            t.key,
            t.label,
            f"{t.messages:,}",
            f"{t.best_rate:,.0f}",
            f"{t.mean_rate:,.0f}",
            f"{1e6 / t.best_rate:,.1f}",
        ]
        row += [_ratio(t.best_rate / refs[key]) if key in refs else "-" for key, _ in baselines]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = []
    for n, r in enumerate(rows):
        cells = [
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_results(name: str, data: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` (not committed: results belong to one machine)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
