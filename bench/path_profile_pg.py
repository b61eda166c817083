"""Suite ``path-profile-pg``: :mod:`bench.path_profile` on PostgreSQL (the machine's database, a
schema of its own), ``engine serve`` with its default two worker processes, each profiled."""

from __future__ import annotations

from typing import Any

from bench.harness import Options
from bench.path_profile import run as _run

__all__ = ["run"]


def run(options: Options) -> dict[str, Any]:
    return _run(options, backend="postgresql")
