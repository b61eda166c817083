"""Compare FHIR output with an expected (golden) file on meaning, and say where they differ.

Used by ``engine mappings test`` and the golden tests. "On meaning": instants and dateTimes are
compared as points in time (``2026-01-02T03:04:05-05:00`` equals ``2026-01-02T08:04:05Z``),
decimals as numbers, and object keys in any order; list order matters (FHIR gives it meaning).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

__all__ = ["differences", "same_instant"]

_DT_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$")


def same_instant(a: str, b: str) -> bool:
    """True when two FHIR dateTimes with offsets name the same instant."""
    try:
        return datetime.fromisoformat(a.replace("Z", "+00:00")) == datetime.fromisoformat(
            b.replace("Z", "+00:00")
        )
    except ValueError:
        return a == b


def differences(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Every place where ``actual`` differs from ``expected``, as readable lines."""
    here = path or "(root)"
    if isinstance(expected, dict) and isinstance(actual, dict):
        out: list[str] = []
        for key in expected:
            sub = f"{path}.{key}" if path else key
            if key not in actual:
                out.append(f"{sub}: missing (expected {_short(expected[key])})")
            else:
                out += differences(expected[key], actual[key], sub)
        for key in actual:
            if key not in expected:
                sub = f"{path}.{key}" if path else key
                out.append(f"{sub}: unexpected {_short(actual[key])}")
        return out
    if isinstance(expected, list) and isinstance(actual, list):
        out = []
        for i, (e, a) in enumerate(zip(expected, actual, strict=False)):
            out += differences(e, a, f"{path}[{i}]")
        if len(expected) != len(actual):
            out.append(f"{here}: {len(actual)} items, expected {len(expected)}")
        return out
    if isinstance(expected, str) and isinstance(actual, str):
        if expected == actual:
            return []
        if _DT_RE.match(expected) and _DT_RE.match(actual) and same_instant(expected, actual):
            return []
        return [f"{here}: {_short(actual)}, expected {_short(expected)}"]
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        if not isinstance(expected, bool) and not isinstance(actual, bool):
            return (
                []
                if float(expected) == float(actual)
                else [f"{here}: {actual}, expected {expected}"]
            )
    if expected == actual and type(expected) is type(actual):
        return []
    return [f"{here}: {_short(actual)}, expected {_short(expected)}"]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
