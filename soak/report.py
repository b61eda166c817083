"""The soak's outputs: samples.csv, summary.json, plot.png and the table on the terminal."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

from soak.verdict import Criterion

__all__ = ["plot", "table", "write_csv", "write_summary"]


def write_csv(path: Path, columns: tuple[str, ...], samples: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns))
        w.writeheader()
        for s in samples:
            w.writerow({k: s.get(k, "") for k in columns})


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:,.2f}"


def table(criteria: list[Criterion]) -> str:
    head = f"  {'criterion':<30} {'baseline':>10} {'worst':>10} {'limit':>10}  verdict  detail"
    lines = [head]
    for c in criteria:
        lines.append(
            f"  {c.name:<30} {_fmt(c.baseline):>10} {_fmt(c.worst):>10} {_fmt(c.limit):>10}  "
            f"{'ok' if c.ok else 'FAILED':<7}  {c.detail}"
        )
    return "\n".join(lines)


def plot(path: Path, samples: list[dict[str, Any]], warmup: float, title: str) -> None:
    """RSS, descriptors, connections, ACK p50/p99 and backlog over time, warm-up shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [float(s["t_s"]) / 60 for s in samples]
    panels: list[tuple[str, list[tuple[str, str]]]] = [
        ("RSS (MB)", [("receiver_rss_mb", "receiver"), ("worker_rss_mb", "worker")]),
        ("open fds", [("receiver_fds", "receiver"), ("worker_fds", "worker")]),
        ("DB connections", [("db_connections", "receiver + worker")]),
        ("SQLite WAL (MB)", [("wal_mb", "engine.db-wal")]),
        ("ACK latency (ms)", [("ack_p50_ms", "p50"), ("ack_p99_ms", "p99")]),
        ("backlog (messages)", [("backlog", "not yet delivered")]),
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 14), sharex=True)
    for ax, (ylabel, series) in zip(axes, panels, strict=True):
        for key, label in series:
            ax.plot(t, [float(s[key]) for s in samples], label=label, linewidth=1.2)
        ax.axvspan(0, warmup / 60, color="0.9", label="warm-up")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(True, linewidth=0.3)
        ax.legend(loc="upper left", fontsize=8)
    axes[-1].set_xlabel("minutes")
    axes[0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
