"""The inbound mapper's resource UUIDs (engine/mappings/entries.py ``_uuid5``): RFC 4122
name-based UUIDs, and the cache that remembers them bounded to a small size, since most names
(an encounter named by its message's control id) are never seen again."""

from __future__ import annotations

import tracemalloc
import uuid

from engine.mappings import entries


def test_the_uuids_are_rfc_4122_name_based_ones() -> None:
    for name in ["Patient|urn:engine:identifier:CLINIC|SK1000", "Location|Clínica Ñ", ""]:
        assert entries._uuid5(name) == str(uuid.uuid5(entries._NS, name))


def test_the_cache_stays_small_however_many_names_come() -> None:
    """20,000 names never seen before (a day of encounters): the cache keeps its 4,096 of
    them, about 1 MB. At 65,536 it held about 17 MB of the worker's memory (265 bytes an
    entry), full within 5 minutes at 200 messages/s and within hours at a clinic's pace, which
    looked like growth. 4,096 mapped 80,000 soak messages (each once, alternating, 5 December
    2026) at 13.1-13.3k a second against 13.4-13.5k: about 1.6 microseconds a message."""
    entries._uuid5.cache_clear()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i in range(20_000):
            entries._uuid5(f"Encounter|SOAK|CLINIC|S1-{i}-783152551649|encounter|0")
        after = tracemalloc.take_snapshot()
        kept = entries._uuid5.cache_info().currsize
    finally:
        tracemalloc.stop()
        entries._uuid5.cache_clear()
    held = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert held < 2_500_000, f"the cache held {held:,} bytes"
    assert kept == entries._uuid5.cache_info().maxsize == 4096
