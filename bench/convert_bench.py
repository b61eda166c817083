"""Whole-process ``engine convert`` of ADT^A04 messages to NDJSON, beside the parse rates of
python-hl7 and hl7apy measured in the same run.

The issue's goal: >= 4,000 messages/s on the 2-core reference machine, >= 100x hl7apy's parse rate
and >= 3x python-hl7's. ``engine convert`` is timed as a user runs it (a new process, reading the
file, writing NDJSON to a file), so start-up and I/O are in the figure. By default it uses one
worker process per core for files of 2,000+ messages; the single-process figure is reported too.
Validation of every resource with fhir.resources is a setting; its cost is measured on a sample.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench.codec_bench import _data_file, _hl7apy, _python_hl7
from bench.harness import DATA_DIR, Options, Timing, environment, format_table, measure

__all__ = ["run"]

FULL_COUNT = 20_000
QUICK_COUNT = 2_000
VALIDATE_SAMPLE = 1_000
HL7APY_SAMPLE = 200


def _engine(*args: str, out: Path) -> float:
    """Seconds for one ``engine convert`` run (a fresh interpreter), stdout to ``out``."""
    with out.open("wb") as fh:
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "engine", "convert", *args],
            stdout=fh,
            stderr=subprocess.PIPE,
            check=False,
        )
        elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"engine convert failed: {proc.stderr.decode()[-500:]}")
    return elapsed


def _count_bundles(path: Path) -> int:
    n = 0
    with path.open("rb") as fh:
        for line in fh:
            bundle = orjson.loads(line)
            assert bundle["resourceType"] == "Bundle" and bundle["entry"]
            n += 1
    return n


def run(options: Options) -> dict[str, Any]:
    count = QUICK_COUNT if options.quick else FULL_COUNT
    path, texts, _ = _data_file(count, options.regenerate)
    repeat = options.repeat
    print(
        f"convert: {path.relative_to(DATA_DIR.parent.parent)}: {count:,} ADT^A04 messages; "
        f"best of {repeat}"
    )
    timings: list[Timing] = [
        measure("a", "python-hl7 hl7.parse (parse only)", _python_hl7, texts, repeat),
        measure(
            "b",
            f"hl7apy parse_message (parse only, sample of {HL7APY_SAMPLE})",
            _hl7apy,
            texts[:HL7APY_SAMPLE],
            repeat,
        ),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.ndjson"
        runs = [
            ("c", "engine convert → NDJSON (whole process, default jobs)", []),
            ("d", "engine convert → NDJSON (whole process, --jobs 1)", ["--jobs", "1"]),
        ]
        for key, label, extra in runs:
            t = Timing(key, label, count)
            for _ in range(repeat):
                t.seconds.append(_engine(*extra, str(path), out=out))
            assert _count_bundles(out) == count, f"{label}: wrong number of bundles"
            timings.append(t)
            print(f"  {key}  {label}: {t.best_rate:,.0f} msg/s", flush=True)
        sample = Path(tmp) / "sample.hl7"
        sample.write_text("\r\n".join(texts[:VALIDATE_SAMPLE]))
        plain = Timing("e", f"convert {VALIDATE_SAMPLE:,}, --jobs 1", VALIDATE_SAMPLE)
        checked = Timing("f", f"convert {VALIDATE_SAMPLE:,}, --jobs 1 --validate", VALIDATE_SAMPLE)
        for _ in range(repeat):
            plain.seconds.append(_engine("--jobs", "1", str(sample), out=out))
            checked.seconds.append(_engine("--jobs", "1", "--validate", str(sample), out=out))
        timings += [plain, checked]
    print()
    print(format_table(timings, [("a", "vs python-hl7"), ("b", "vs hl7apy")]))
    rates = {t.key: t.best_rate for t in timings}
    goals = {
        ">= 4,000 msg/s": rates["c"] >= 4000,
        ">= 100x hl7apy": rates["c"] >= 100 * rates["b"],
        ">= 3x python-hl7": rates["c"] >= 3 * rates["a"],
    }
    per_msg = 1e6 / rates["f"] - 1e6 / rates["e"]
    print(
        "\ngoals (default jobs): "
        + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in goals.items())
        + f"\nvalidation with fhir.resources costs {per_msg:,.0f} us per message "
        f"({rates['e'] / rates['f']:.1f}x slower)"
    )
    return {
        "suite": "convert",
        "quick": options.quick,
        "environment": environment(["hl7", "hl7apy", "fhir.resources", "hl7-engine"]),
        "data": {"file": str(path), "messages": count},
        "timings": [t.as_dict() for t in timings],
        "goals": goals,
        "validation_us_per_message": round(per_msg, 1),
    }
