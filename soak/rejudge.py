"""``python -m soak.rejudge var/soak/<time>``: the verdict again, over a finished run's
samples.csv and acks.csv with the criteria of this checkout (soak/verdict.py), for a run made
before the criteria changed. Rewrites summary.json's criteria (``"rejudged": true``) and prints
the table; exits 1 when a criterion fails."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

from soak.report import say, table, write_summary
from soak.verdict import FLAT, Criterion, judge


def _number(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value


def rejudge(run: Path) -> int:
    summary: dict[str, Any] = json.loads((run / "summary.json").read_text())
    with (run / "samples.csv").open() as f:
        samples = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
    for s in samples:  # a run older than a column: the column reads 0 (flat)
        for key, _, _ in FLAT:
            s.setdefault(key, 0.0)
    with (run / "acks.csv").open() as f:
        acks = [r for r in csv.reader(f) if r and r[0] != "sent"]
    warmup = float(summary["warmup_s"])
    first = float(acks[0][0]) if acks else 0.0
    judged_ms = [
        float(r[1]) for r in acks if r[2] in ("AA", "CA") and float(r[0]) >= first + warmup
    ]
    options = summary["options"]
    criteria = judge(
        samples,
        warmup=warmup,
        until=float(options["minutes"]) * 60,
        rate=float(options["rate"]),
        judged_ack_ms=judged_ms,
        refused_acks=int(summary["refused_acks"]),
        refused_docs=int(summary["refused_documents"]),
    )
    stopped = summary.get("stopped_early", "")
    criteria.append(
        Criterion(
            "ran to the end",
            not stopped,
            None,
            None,
            None,
            f"stopped early: {stopped}" if stopped else "",
        )
    )
    summary["criteria"] = [c.row() for c in criteria]
    summary["ok"] = all(c.ok for c in criteria)
    summary["rejudged"] = True
    write_summary(run / "summary.json", summary)
    say(table(criteria))
    say(f"\nsoak: {'passed' if summary['ok'] else 'FAILED'} (rejudged); {run}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(rejudge(Path(sys.argv[1])))
