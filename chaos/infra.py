"""The database and the disk (scenarios 3 and 4)."""

from __future__ import annotations

from chaos.harness import Scenario

__all__ = ["INFRA"]

INFRA: list[Scenario] = []
