"""engine/memory.py: glibc's malloc told to give large freed buffers back."""

from __future__ import annotations

import subprocess
import sys

import pytest

from engine import memory


def test_glibc_takes_the_settings() -> None:
    # the machines the engine runs on are glibc Linux: the settings must be taken there
    assert sys.platform.startswith("linux")
    assert memory.keep_little_freed_memory() is True


def test_elsewhere_nothing_is_done(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory.sys, "platform", "darwin")
    assert memory.keep_little_freed_memory() is False


def test_a_freed_large_buffer_is_given_back() -> None:
    """After a first large buffer is freed, glibc serves later 1 MiB buffers from its heap (its
    mmap threshold rises), between smaller blocks that outlive them; with the settings each is
    mapped and unmapped on its own, so none stays resident once freed."""
    probe = """
import sys
from engine.memory import keep_little_freed_memory
if sys.argv[1] == "on":
    keep_little_freed_memory()
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])
b = bytearray(4 << 20); del b   # the first large free: glibc raises its threshold here
base = rss()
big, small = [], []
for _ in range(48):   # a request's buffer, and something small that outlives it
    big.append(bytearray(b"x" * (1 << 20)))
    small.append(bytearray(4096))  # past pymalloc: from the same malloc heap
del big   # the buffers freed; the small objects between them stay
print(rss() - base)
"""
    grown = {}
    for mode in ("on",):
        out = subprocess.run(
            [sys.executable, "-c", probe, mode], capture_output=True, text=True, check=True
        )
        grown[mode] = int(out.stdout.strip())
    assert grown["on"] < 1024, grown  # KiB: the 48 MiB went back
