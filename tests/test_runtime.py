"""engine/runtime.py: the event loop the engine's processes run on, and freezing what start-up
loaded out of the collector's way (a reload frees what it replaced)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from engine.errors import ConfigError
from engine.runtime import event_loop_name, freeze_loaded, run

uvloop = pytest.importorskip("uvloop")


async def _loop_type() -> type:
    return type(asyncio.get_running_loop())


def test_uvloop_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENGINE_EVENT_LOOP", raising=False)
    assert event_loop_name() == "uvloop"
    assert run(_loop_type()) is uvloop.Loop


def test_asyncio_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENGINE_EVENT_LOOP", "asyncio")
    assert event_loop_name() == "asyncio"
    loop_type = run(_loop_type())
    assert loop_type is not uvloop.Loop
    assert issubclass(loop_type, asyncio.BaseEventLoop)


def test_an_unknown_loop_is_a_config_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENGINE_EVENT_LOOP", "tokio")
    with pytest.raises(ConfigError, match="ENGINE_EVENT_LOOP='tokio' is not one of auto"):
        event_loop_name()


@pytest.fixture
def thawed() -> Iterator[None]:
    yield
    gc.unfreeze()  # the rest of the test session collects as before


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


def test_freeze_then_refreeze_frees_what_was_replaced(thawed: None) -> None:
    old_config = _Node()
    gone = weakref.ref(old_config)
    freeze_loaded()
    assert gc.get_freeze_count() > 0
    del old_config
    gc.collect()
    assert gone() is not None, "a frozen cycle is left alone by collections"
    freeze_loaded()  # a reload: thaw, collect, freeze again
    assert gone() is None, "what the reload replaced is freed"
