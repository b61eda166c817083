"""Run one target for N inputs: hypothesis generates, each input is timed, crashes are kept.

A crash is any exception other than the target's typed errors (the engine's error tree,
:class:`engine.errors.EngineError`, and the module's own error classes a target names, such as
MLLP's ``FrameTooLarge``); an oracle a target checks (a round trip, chunking invariance) fails
with :class:`Oracle`, which is a crash too. A slow input is one that takes longer than the limit
(1 s) of CPU time (``time.process_time``: on a machine shared with other work, wall time measures
the scheduler as much as the input); its wall time is measured and reported beside it, and
``--clock wall`` judges by wall time instead. An input still running after :data:`HANG_S` (wall)
is stopped by a timer and counted both slow and a crash.

Each crashing input is written to ``<out>/crashes/<target>-<sha256[:16]>.bin``, each slow one
to ``<out>/slow/``; the slowest input of the run is kept as ``<out>/slowest-<target>.bin``.

Hypothesis runs in rounds of :data:`ROUND` examples (each with its own seed, derived from the
campaign's), generation only: no shrinking, no example database, no deadline (the runner times
inputs itself), health checks off (the strategies are meant to be large and slow to draw).
"""

from __future__ import annotations

import hashlib
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from engine.errors import EngineError

__all__ = ["HANG_S", "ROUND", "Oracle", "Stats", "Target", "run_target"]

HANG_S = 20.0
ROUND = 5_000


class Oracle(AssertionError):
    """An input broke an invariant the target checks (not an exception of the engine)."""


class _Hang(BaseException):
    """Raised by the timer in an input running past :data:`HANG_S` (a BaseException, so no
    ``except Exception`` in the engine can swallow it)."""


@dataclass(frozen=True)
class Target:
    """One fuzzing target: a strategy of inputs (bytes) and the code that runs one."""

    name: str
    strategy: Callable[[], st.SearchStrategy[bytes]]
    run: Callable[[bytes], Any]
    #: exceptions that are the engine's answer to bad input, not crashes
    typed: tuple[type[BaseException], ...] = (EngineError,)
    #: what the target runs (one line, for the summary and the notes)
    about: str = ""
    #: run once before the first input (what the engine does once at start: load the mapping
    #: files, import the FHIR models), so no input is charged for it
    setup: Callable[[], Any] | None = None


@dataclass
class Stats:
    target: str
    inputs: int = 0
    typed: int = 0
    crashes: int = 0
    slow: int = 0
    #: the slowest input by the clock judged, and its time on the other clock
    slowest_s: float = 0.0
    slowest_other_s: float = 0.0
    clock: str = "cpu"
    #: rounds ended by an error of the harness itself (a strategy), not of the engine
    harness_errors: int = 0
    seconds: float = 0.0
    #: distinct crashes: (exception type, where in the engine) -> first input's file
    kinds: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        other = "wall" if self.clock == "cpu" else "cpu"
        return (
            f"{self.target}: {self.inputs} inputs, {self.crashes} crashes "
            f"({len(self.kinds)} distinct), {self.slow} over 1 s, slowest "
            f"{self.slowest_s * 1000:.1f} ms {self.clock} ({self.slowest_other_s * 1000:.1f} ms "
            f"{other}), {self.seconds:.0f} s (typed errors {self.typed})"
            + (f", {self.harness_errors} HARNESS ERRORS" if self.harness_errors else "")
        )


def crash_key(exc: BaseException) -> str:
    """``TypeError at engine/hl7v2/codec.py:123 in get``: the deepest frame in the engine (or
    the last one when none is)."""
    frames = traceback.extract_tb(exc.__traceback__)
    here = next(
        (f for f in reversed(frames) if "/engine/" in f.filename),
        frames[-1] if frames else None,
    )
    where = ""
    if here is not None:
        name = here.filename
        name = name[name.rfind("/engine/") + 1 :] if "/engine/" in name else Path(name).name
        where = f" at {name}:{here.lineno} in {here.name}"
    return f"{type(exc).__name__}{where}"


def _save(directory: Path, name: str, data: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}-{hashlib.sha256(data).hexdigest()[:16]}.bin"
    path.write_bytes(data)
    return path


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise _Hang(f"input still running after {HANG_S} s")


def run_target(
    target: Target,
    inputs: int,
    *,
    out: Path,
    seed: int = 0,
    slow_s: float = 1.0,
    clock: str = "cpu",
    progress: Callable[[Stats], None] | None = None,
) -> Stats:
    """Run ``inputs`` inputs of ``target``; crashes and slow inputs saved under ``out``."""
    stats = Stats(target.name, clock=clock)
    if target.setup is not None:
        target.setup()
    strategy = target.strategy()
    typed = target.typed
    slowest: list[bytes] = [b""]
    old = signal.signal(signal.SIGALRM, _on_alarm)

    def one(data: bytes) -> None:
        if stats.inputs >= inputs:
            return
        stats.inputs += 1
        signal.setitimer(signal.ITIMER_REAL, HANG_S)
        t0, c0 = time.perf_counter(), time.process_time()
        failure: BaseException | None = None
        try:
            target.run(data)
        except typed:
            stats.typed += 1
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: B036 - every other exception is the finding
            failure = exc
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        took, other = (cpu, wall) if clock == "cpu" else (wall, cpu)
        if took > stats.slowest_s:
            stats.slowest_s, stats.slowest_other_s = took, other
            slowest[0] = data
        if took > slow_s or isinstance(failure, _Hang):
            stats.slow += 1
            _save(out / "slow", target.name, data)
        if failure is not None:
            stats.crashes += 1
            key = crash_key(failure)
            path = _save(out / "crashes", target.name, data)
            if key not in stats.kinds:
                stats.kinds[key] = str(path)
                detail = "".join(traceback.format_exception(failure)[-6:])
                (path.with_suffix(".txt")).write_text(f"{key}\n\n{detail}", "utf-8")

    t_start = time.perf_counter()
    try:
        rounds = 0
        while stats.inputs < inputs and rounds < 4 * (inputs // ROUND + 1):
            n = min(ROUND, inputs - stats.inputs)

            @hypothesis_seed(seed * 1_000_003 + rounds)
            @settings(
                max_examples=n,
                database=None,
                deadline=None,
                derandomize=False,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
                report_multiple_bugs=False,
            )
            @given(strategy)
            def drive(data: bytes) -> None:
                one(data)

            try:
                drive()
            except Exception as exc:  # the harness's own fault (a strategy): kept, not hidden
                stats.harness_errors += 1
                out.mkdir(parents=True, exist_ok=True)
                (out / f"harness-{target.name}.txt").write_text(
                    "".join(traceback.format_exception(exc)), "utf-8"
                )
            rounds += 1
            stats.seconds = time.perf_counter() - t_start
            if progress is not None:
                progress(stats)
    finally:
        signal.signal(signal.SIGALRM, old)
    stats.seconds = time.perf_counter() - t_start
    if slowest[0]:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"slowest-{target.name}.bin").write_bytes(slowest[0])
    return stats
