"""What the engine's long-running processes (``engine serve``, its worker process, ``engine
worker``) run on: the event loop, and the garbage collector's view of what they loaded.

**The event loop.** uvloop (libuv, in C) where it is installed, as it is with the engine's
dependencies on Linux and macOS; asyncio's own loop where it is not, or when
``ENGINE_EVENT_LOOP=asyncio`` asks for it (to tell a fault of the loop from one of ours). The
receiver's work is mostly the loop's: reading sockets, waking the coroutine a chunk or a
frame is for, handing blocking work to threads and taking the answer back. asyncio does that
in Python; uvloop does it in C. The HTTP parser follows the same rule on its own: uvicorn
parses with httptools (C) when it is installed, h11 (Python) when not.

**The collector.** A process has loaded, by the time it serves, every module, mapping,
route and the FHIR models' classes: hundreds of thousands of objects that live as long as
it does. Python's collector walks them again at every full collection, which the steady
allocation of serving triggers every few seconds under load. :func:`freeze_loaded` moves
what exists once start-up is done into the permanent generation (``gc.freeze``), so a full
collection walks only what serving made. Nothing is switched off: cycles made while serving
are collected as before, and a reload thaws, collects and freezes again (what it replaced is
freed).

Measured with the ``documents`` bench (README, "Benchmarks").
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

from engine.errors import ConfigError

__all__ = ["event_loop_name", "freeze_loaded", "run"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: ``ENGINE_EVENT_LOOP``: auto (uvloop when installed), uvloop (required), asyncio
_CHOICES = ("auto", "uvloop", "asyncio")


def _choice() -> str:
    choice = os.environ.get("ENGINE_EVENT_LOOP", "auto").strip().lower() or "auto"
    if choice not in _CHOICES:
        raise ConfigError(f"ENGINE_EVENT_LOOP={choice[:20]!r} is not one of {', '.join(_CHOICES)}")
    return choice


def _uvloop() -> Any:
    choice = _choice()
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("ENGINE_EVENT_LOOP=uvloop but uvloop is not installed") from None
        return None
    return uvloop


def event_loop_name() -> str:
    """``uvloop`` or ``asyncio``: what :func:`run` runs on here."""
    return "uvloop" if _uvloop() is not None else "asyncio"


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to its end on the engine's event loop (see the module docstring)."""
    uvloop = _uvloop()
    if uvloop is None:
        return asyncio.run(main)
    result: T = uvloop.run(main)
    return result


def freeze_loaded() -> None:
    """Once start-up is done, and again once a reloaded configuration runs: what the process
    holds is left out of later collections. What an earlier call froze is thawed and collected
    first, so the configuration a reload replaced is freed, cycles and all (a frozen object in
    a cycle is never collected). One full collection: a few hundred milliseconds at most, at
    start and at a reload only."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    log.debug("start-up objects frozen", extra={"objects": gc.get_freeze_count()})
