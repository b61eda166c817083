"""SqlMessageStore combines the store's parts: none of them hides another's statement or method."""

from __future__ import annotations

from itertools import combinations

from engine.store import SqlMessageStore
from engine.store.db import Repository


def test_no_part_shadows_another() -> None:
    """Each part keeps its statements as class attributes beside the methods that run them;
    combined by inheritance, a name defined in two parts would silently run the wrong one."""
    parts = [
        c for c in SqlMessageStore.__mro__ if issubclass(c, Repository) and c is not Repository
    ]
    # every part, and what the whole store adds
    assert len(parts) == len(SqlMessageStore.__bases__) + 1 >= 5
    own = {c: {n for n in vars(c) if not n.startswith("__")} for c in parts}
    clashes = {
        (a.__name__, b.__name__): sorted(own[a] & own[b])
        for a, b in combinations(parts, 2)
        if own[a] & own[b]
    }
    assert clashes == {}
