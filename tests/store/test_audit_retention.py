"""The audit trail's own retention, run by the worker's retention loop beside (and apart from)
the messages': records older than ENGINE_AUDIT_RETENTION_DAYS go, the chain still verifies.
On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from engine.flow.worker import _retention
from engine.settings import Settings
from engine.store import SqlMessageStore
from engine.store.db import utcnow
from tests.store.audit_support import append_views


def test_default_is_six_years(tmp_path: Path) -> None:
    assert Settings(home=tmp_path).audit_retention_days == 2190


def test_the_retention_loop_prunes_old_records_and_keeps_the_chain(
    store: SqlMessageStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    old = utcnow() - timedelta(days=400)
    monkeypatch.setattr("engine.store.audit.utcnow", lambda: old)
    append_views(store, 5, "old")
    monkeypatch.undo()
    append_views(store, 2, "new")
    settings = Settings(home=tmp_path, audit_retention_days=365, retention_days=30)

    async def once() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(_retention(store, settings, stop))
        for _ in range(200):  # until the loop has pruned (its first round runs at once)
            head = store.audit_head()
            if head is not None and head.anchor_seq:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await task

    asyncio.run(once())
    head = store.audit_head()
    assert head is not None and head.anchor_seq == 5
    done = store.verify_audit()
    assert done.ok and done.count == 3, done.describe()  # two new ones and the prune's record
    details = [e.detail or "" for e in store.audit_entries()]
    assert details[0].startswith("5 records up to seq 5") and details[1:] == ["new 1", "new 0"]
