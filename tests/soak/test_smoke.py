"""A short soak end to end (about a minute): the engine, the stubs and the load start, every
sample has the engine's figures, and the outputs and the verdict are written."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from soak.__main__ import main


def test_a_short_soak_samples_the_engine_and_judges(tmp_path: Path) -> None:
    args = ["--minutes", "0.5", "--rate", "50", "--sample-s", "5", "--warmup-s", "10"]
    args += ["--doc-interval", "5", "--doc-size", "65536", "--out", str(tmp_path)]
    code = main(args)
    [out] = list(tmp_path.iterdir())
    summary = json.loads((out / "summary.json").read_text())
    assert code == (0 if summary["ok"] else 1)
    names = {c["criterion"] for c in summary["criteria"]}
    assert {"worker RSS (MB) flat", "ACK p99 steady", "backlog bounded"} <= names
    assert summary["acks"] > 0.8 * 50 * 30 and summary["refused_acks"] == 0
    assert summary["documents"] >= 4 and summary["refused_documents"] == 0
    with (out / "samples.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 5
    for row in rows[:-1]:
        assert float(row["receiver_rss_mb"]) > 20 and float(row["worker_rss_mb"]) > 20
        assert int(row["receiver_fds"]) > 5 and int(row["db_connections"]) >= 1
        assert int(row["backlog"]) >= 0
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
