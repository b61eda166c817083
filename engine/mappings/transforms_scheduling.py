"""Transforms for the scheduling mappings (registered with :mod:`engine.mappings.transforms`)."""

from __future__ import annotations

from engine.mappings.transforms import Transform

__all__ = ["TRANSFORMS_EXTRA"]

TRANSFORMS_EXTRA: list[Transform] = []
