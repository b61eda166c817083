"""The soak's verdict over its samples (one every ``--sample-s`` seconds), after the warm-up.

The warm-up is the first 10 % of the run, at least 2 minutes (``--warmup-s`` overrides it, for
a short smoke run); samples taken in it are shown but not judged. Of the rest:

* **flat** (resident memory of the receiver, of the worker; open descriptors of each; database
  connections): judged on one-minute medians (the median of each minute's samples, so that a
  connection being made or a document's buffer at the sampling instant is not taken for
  growth): the baseline is the first judged minute's median; the growth is ``max(minute
  medians) / baseline - 1``, and passes at most 10 %. Open descriptors are judged on each
  minute's *least* sample instead: a leaked descriptor is never closed, so it raises the
  floor, while the file drop's batch holds one descriptor a file for the few milliseconds
  between writing its files and naming them (engine/adapters/files.py), and at 1,000 msg/s
  half the samples of a minute caught a batch in flight (+20 to +35 descriptors; 5 December
  2026), which the median took for growth. Descriptors and connections
  are small integers, so for them the allowance is 10 % or 2, whichever is larger (a pool
  opening one more connection is not a leak; a leak grows without end and fails either way).
  The least-squares slope per hour is reported beside it (not judged). The SQLite store's
  write-ahead log file is judged the same way, with 10 % or 64 MB (checkpointed and restarted,
  it stays about one size; a log whose checkpoints never restart grows with every write, and
  every read searches it); on PostgreSQL it is 0.
* **ACK p99 steady**: each sample's window p99 (the ACKs of messages sent in that window);
  the median of the window p99s in the last quarter of the judged samples may be at most
  1.5 x that of the first quarter plus 1 ms (the latency does not creep up as the store grows),
  and the p99 over all judged ACKs is reported beside it.
* **backlog bounded**: messages not yet delivered never exceed 10 s of the offered load
  (``rate x 10``) in any judged sample, nor at the end.
* **nothing refused**: every message ACKed AA and every document answered 2xx (after warm-up and
  before: a refusal is never a warm-up effect).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["FLAT", "Criterion", "judge", "slope_per_hour", "warmup_s"]

#: (sample column, label, absolute allowance beside the 10 %)
FLAT = (
    ("receiver_rss_mb", "receiver RSS (MB)", 0.0),
    ("worker_rss_mb", "worker RSS (MB)", 0.0),
    ("receiver_fds", "receiver open fds", 2.0),
    ("worker_fds", "worker open fds", 2.0),
    ("db_connections", "database connections", 2.0),
    ("wal_mb", "SQLite WAL (MB)", 64.0),
)
#: the columns judged on each minute's least sample rather than its median (see the module)
FLOORED = frozenset({"receiver_fds", "worker_fds"})
FLAT_LIMIT = 0.10
P99_RATIO, P99_SLACK_MS = 1.5, 1.0
BACKLOG_SECONDS = 10.0


@dataclass
class Criterion:
    name: str
    ok: bool
    baseline: float | None
    worst: float | None
    limit: float | None
    detail: str

    def row(self) -> dict[str, Any]:
        return {
            "criterion": self.name,
            "ok": self.ok,
            "baseline": self.baseline,
            "worst": self.worst,
            "limit": self.limit,
            "detail": self.detail,
        }


def warmup_s(run_s: float) -> float:
    """The first 10 % of the run, at least 2 minutes."""
    return max(0.1 * run_s, 120.0)


def slope_per_hour(ts: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys over ts (seconds), per hour; 0 for fewer than two points."""
    if len(ts) < 2:
        return 0.0
    mt, my = statistics.fmean(ts), statistics.fmean(ys)
    den = sum((t - mt) ** 2 for t in ts)
    return (
        0.0
        if den == 0
        else 3600 * sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / den
    )


def per_minute(
    ts: Sequence[float],
    ys: Sequence[float],
    summary: Callable[[list[float]], float] = statistics.median,
) -> list[float]:
    """The median (or ``summary``) of the values in each minute since the first (``ts`` in
    seconds)."""
    minutes: dict[int, list[float]] = {}
    for t, y in zip(ts, ys, strict=True):
        minutes.setdefault(int((t - ts[0]) // 60), []).append(y)
    return [summary(v) for _, v in sorted(minutes.items())]


def _flat(judged: list[dict[str, Any]], key: str, label: str, slack: float) -> Criterion:
    ys = [float(s[key]) for s in judged]
    medians = per_minute(
        [float(s["t_s"]) for s in judged], ys, min if key in FLOORED else statistics.median
    )
    base = medians[0]
    worst = max(medians)
    limit = base + max(FLAT_LIMIT * base, slack)
    growth = (worst / base - 1) * 100 if base else 0.0
    slope = slope_per_hour([float(s["t_s"]) for s in judged], ys)
    return Criterion(
        f"{label} flat",
        worst <= limit,
        base,
        worst,
        limit,
        f"growth {growth:+.1f} %, slope {slope:+.2f}/h",
    )


def _p99_steady(judged: list[dict[str, Any]], all_ms: Sequence[float]) -> Criterion:
    p99s = [float(s["ack_p99_ms"]) for s in judged if s["acks"]]
    if not p99s:
        return Criterion("ACK p99 steady", False, None, None, None, "no ACKs after warm-up")
    q = max(1, len(p99s) // 4)
    first, last = statistics.median(p99s[:q]), statistics.median(p99s[-q:])
    limit = P99_RATIO * first + P99_SLACK_MS
    overall = _quantile(sorted(all_ms), 0.99)
    return Criterion(
        "ACK p99 steady",
        last <= limit,
        first,
        last,
        limit,
        f"median window p99 first/last quarter; all judged ACKs p99 {overall:.2f} ms, "
        f"worst window {max(p99s):.2f} ms",
    )


def _quantile(xs: Sequence[float], q: float) -> float:
    if not xs:
        return 0.0
    return float(xs[min(len(xs) - 1, int(q * len(xs)))])


def judge(
    samples: list[dict[str, Any]],
    *,
    warmup: float,
    until: float,
    rate: float,
    judged_ack_ms: Sequence[float],
    refused_acks: int,
    refused_docs: int,
) -> list[Criterion]:
    """The criteria above, over ``samples`` (dicts with the columns of soak.harness.COLUMNS)
    taken from ``warmup`` to ``until`` seconds (the last sample, taken as the load's connections
    close, is shown but not judged)."""
    judged = [s for s in samples if warmup <= float(s["t_s"]) <= until]
    if len(judged) < 3:
        return [Criterion("enough samples", False, None, len(judged), 3, "run longer")]
    out = [_flat(judged, key, label, slack) for key, label, slack in FLAT]
    out.append(_p99_steady(judged, judged_ack_ms))
    bound = rate * BACKLOG_SECONDS
    backlogs = [int(s["backlog"]) for s in judged]
    worst = max(backlogs)
    out.append(
        Criterion(
            "backlog bounded",
            worst <= bound and backlogs[-1] <= bound and min(backlogs) >= 0,
            float(backlogs[0]),
            float(worst),
            bound,
            f"messages not yet delivered; at the end {backlogs[-1]}",
        )
    )
    out.append(
        Criterion(
            "nothing refused",
            refused_acks == 0 and refused_docs == 0,
            None,
            float(refused_acks + refused_docs),
            0.0,
            f"{refused_acks} messages not ACKed AA, {refused_docs} documents not 2xx",
        )
    )
    return out
