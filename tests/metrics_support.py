"""Helpers for the metrics tests: a strict reader of the exposition text, processes that record.

``parse`` checks the page itself (text exposition format 0.0.4) with our own rules rather than
prometheus_client's parser, so the library is not asked to vouch for its own output.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = ["families", "parse", "record_in_process"]

_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
SAMPLE = re.compile(
    rf"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{{(?P<labels>{_LABEL}(?:,{_LABEL})*)\}})?"
    r" (?P<value>[+-]?(?:\d+(?:\.\d*)?(?:e[+-]?\d+)?|Inf|NaN))$"
)
HELP = re.compile(r"^# HELP (?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*) (?:[^\\\n]|\\[\\n])*$")
TYPE = re.compile(r"^# TYPE (?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram)$")


def parse(text: str) -> dict[str, float]:
    """Check every line's syntax and family order; samples as ``name{labels}`` → value."""
    assert text.endswith("\n")
    samples: dict[str, float] = {}
    family = None
    for line in text.splitlines():
        if m := HELP.match(line):
            family = m["name"]
        elif m := TYPE.match(line):
            assert m["name"] == family, "TYPE follows the HELP of the same family"
        else:
            m = SAMPLE.match(line)
            assert m, f"not a valid sample line: {line!r}"
            assert family and m["name"].startswith(family)
            key = f"{m['name']}{{{m['labels']}}}" if m["labels"] else m["name"]
            assert key not in samples, f"{key} twice"
            samples[key] = float(m["value"].replace("Inf", "inf"))
    return samples


def families(text: str) -> dict[str, str]:
    """Family name → type, from the ``# TYPE`` lines."""
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


#: a worker process's share: delivers ``n`` times to a destination, gives up once, routes once
_RECORDER = """
import os, sys
from pathlib import Path
from engine.metrics import EngineMetrics

directory, destination, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
metrics = EngineMetrics(multiprocess_dir=directory, latency_buckets=(0.1, 1.0))
metrics.worker_running()
for _ in range(n):
    metrics.delivered(destination, 0.5, True, False)
metrics.delivered(destination, 0.0, False, True)
metrics.record_routed(["adt-to-fhir"])
print(os.getpid())
"""


def record_in_process(
    directory: Path, destination: str, n: int, *, inherit_env: bool
) -> subprocess.Popen[str]:
    """Start a Python process that records metrics into ``directory`` (multiprocess mode).

    ``inherit_env``: the process finds PROMETHEUS_MULTIPROC_DIR set when it starts, as a worker
    spawned by the receiver does; otherwise it switches on its own (as the receiver does).
    """
    env: Mapping[str, str] = {
        key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"
    }
    if inherit_env:
        env = {**env, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    return subprocess.Popen(
        [sys.executable, "-c", _RECORDER, str(directory), destination, str(n)],
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
