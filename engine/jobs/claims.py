"""Claims on scheduled runs (``job_runs``) that this process must not leave behind.

The leader resumes a run only when its node is dead or it was given back (engine/store/nodes.py
``interrupted_runs``). A run its node holds but no longer works on is therefore never resumed
while that node lives: a leader stepping down while the database is away could not give its run
back, the database came back, its heartbeat went on within the takeover limit, and the rest of
the night's eligibility run waited for the process to stop. The same when a claim's reply is
lost after its commit (the run this node's, no task of it running it), or when the caller is
cancelled while the claim is under way.

So each such write (the give-back, or the run's end) is made now if the database takes it, and
otherwise kept: tried again every :data:`RETRY_S` until it does, whether this node leads or not,
and at each look of the leader for runs to resume (engine/jobs/scheduler.py
``resume_interrupted``, at the start of a term too). Every one of these writes is conditional
on the run still being this node's: a give-back of a run another node has taken over, or of a
claim that never committed, changes nothing, so trying one again is safe.

Kept per event loop (a process runs one; each test's loop has its own), by (job id, fire time):
a run this node claims or resumes anew drops what was kept for it (:func:`claim`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any
from weakref import WeakKeyDictionary

__all__ = ["RETRY_S", "claim", "release", "settle"]

log = logging.getLogger(__name__)

#: how often a kept write is tried again
RETRY_S = 2.0

_Key = tuple[str, datetime]


class _Kept:
    """One event loop's kept writes, and the task trying them again."""

    def __init__(self) -> None:
        self.writes: dict[_Key, Callable[[], object]] = {}
        self.task: asyncio.Task[None] | None = None


_BY_LOOP: WeakKeyDictionary[asyncio.AbstractEventLoop, _Kept] = WeakKeyDictionary()


def _kept() -> _Kept:
    loop = asyncio.get_running_loop()
    kept = _BY_LOOP.get(loop)
    if kept is None:
        kept = _BY_LOOP[loop] = _Kept()
    return kept


def _keep(job_id: str, run_at: datetime, write: Callable[[], object]) -> None:
    """Keep ``write`` for ``job_id``'s run at ``run_at``, to be tried again until it is made."""
    kept = _kept()
    kept.writes[(job_id, run_at)] = write
    if kept.task is None or kept.task.done():
        kept.task = asyncio.get_running_loop().create_task(_retry(kept), name="job-run-claims")


async def _retry(kept: _Kept) -> None:
    while kept.writes:
        await asyncio.sleep(RETRY_S)
        await _try_each(kept)


async def _try_each(kept: _Kept) -> None:
    for key, write in list(kept.writes.items()):
        try:
            await asyncio.to_thread(write)
        except Exception:  # the database still away: the next round
            continue
        if kept.writes.get(key) is write:  # (not replaced meanwhile)
            del kept.writes[key]
            log.warning("job run settled once the database answered", extra={"job": key[0]})


async def settle() -> None:
    """Try each kept write once, now (the leader, before it looks for runs to resume)."""
    kept = _BY_LOOP.get(asyncio.get_running_loop())
    if kept is not None and kept.writes:
        await _try_each(kept)


def _kept_if_failed(
    job_id: str, run_at: datetime, write: Callable[[], object], attempt: asyncio.Future[Any]
) -> None:
    """``attempt``'s done callback: its write kept when it failed."""
    if attempt.cancelled() or attempt.exception() is not None:
        error = "CancelledError" if attempt.cancelled() else type(attempt.exception()).__name__
        log.warning(
            "job run not settled: tried again until the database answers",
            extra={"job": job_id, "error": error},
        )
        _keep(job_id, run_at, write)


async def release(job_id: str, run_at: datetime, write: Callable[[], Any]) -> Any:
    """Make ``write`` (the run given back, or its end recorded) now, in a thread; its result,
    or None when it failed: then it is kept and tried again. Kept too when the caller is
    cancelled before it is made (the write goes on, and is kept if it fails)."""
    attempt = asyncio.ensure_future(asyncio.to_thread(write))
    attempt.add_done_callback(partial(_kept_if_failed, job_id, run_at, write))
    try:
        return await asyncio.shield(attempt)
    except Exception:
        return None


def _give_back_unless_failed(
    job_id: str, run_at: datetime, give_back: Callable[[], object], attempt: asyncio.Future[Any]
) -> None:
    """A claim its caller stopped waiting for: once it is made, given back (kept, tried after
    :data:`RETRY_S`) unless it surely failed to take the run (no error, and False)."""
    if not attempt.cancelled() and attempt.exception() is None and not attempt.result():
        return
    _keep(job_id, run_at, give_back)


async def claim(
    job_id: str, run_at: datetime, take: Callable[[], bool], give_back: Callable[[], object]
) -> bool:
    """Claim a run for this node by ``take`` (a start or a resumption, in a thread): True when
    it is this node's now, and nothing kept for it any more. When ``take`` fails (its reply lost:
    it may have committed) or the caller is cancelled meanwhile, ``give_back`` is kept (the run
    would otherwise be this node's with nothing running it) and the error raised."""
    attempt = asyncio.ensure_future(asyncio.to_thread(take))
    try:
        taken = await asyncio.shield(attempt)
    except asyncio.CancelledError:
        attempt.add_done_callback(partial(_give_back_unless_failed, job_id, run_at, give_back))
        raise
    except Exception:
        _keep(job_id, run_at, give_back)
        raise
    if taken:
        kept = _BY_LOOP.get(asyncio.get_running_loop())
        if kept is not None:
            kept.writes.pop((job_id, run_at), None)
    return bool(taken)
