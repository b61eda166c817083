"""Other projects' test messages (tests/corpus/hl7v2, sources in tests/corpus/SOURCES.md) through
the receiver, on both databases: many reuse a sender and control ID (MSH-3, MSH-4, MSH-10) for
different content, which the receiver once took for resends, answering AA and storing nothing.
Every message must now have a row holding its own content, and a second pass of the same
messages must be answered entirely from those rows."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from engine.flow.ingest import Ingest, Receipt
from engine.hl7v2.codec import split_messages
from engine.store import SqlMessageStore

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "hl7v2"


def _messages() -> list[tuple[str, bytes]]:
    found = []
    for path in sorted(CORPUS.glob("*/*.hl7")):
        for n, (_line, raw) in enumerate(split_messages(path.read_bytes()), 1):
            found.append((f"{path.parent.name}/{path.name} #{n}", raw))
    return found


def _same_message(a: bytes, b: bytes) -> bool:
    """Written apart from engine/store/resends.py: the segments compared, MSH-7 aside."""

    def segments(raw: bytes) -> list[bytes]:
        parts = [p for p in re.split(rb"[\r\n]+", raw.lstrip(b"\xef\xbb\xbf")) if p.strip()]
        if parts and parts[0].startswith(b"MSH"):
            fields = parts[0].split(parts[0][3:4])
            parts[0] = b"|".join(fields[:6] + fields[7:])
        return parts

    return segments(a) == segments(b)


async def _send_all(ing: Ingest, corpus: list[tuple[str, bytes]]) -> list[Receipt]:
    """Sixteen senders at once, as the listeners hand messages over: batches (group commits)
    hold several messages, some under the same key."""
    await ing.start()
    try:
        receipts: list[Receipt] = []
        for at in range(0, len(corpus), 16):
            receipts += await asyncio.gather(
                *(
                    ing.receive(raw, channel="mllp", peer="127.0.0.1:9")
                    for _, raw in corpus[at : at + 16]
                )
            )
        return receipts
    finally:
        await ing.stop()


@pytest.fixture(scope="module")
def corpus() -> list[tuple[str, bytes]]:
    found = _messages()
    assert len(found) >= 250
    return found


def test_every_corpus_message_is_stored_as_itself(
    store: SqlMessageStore, corpus: list[tuple[str, bytes]]
) -> None:
    postgres = store.db_engine.dialect.name == "postgresql"
    ing = Ingest(store, identity=("ENGINE", "HUB"), writers=2 if postgres else 1)
    first = asyncio.run(_send_all(ing, corpus))
    lost = []
    for (name, raw), receipt in zip(corpus, first, strict=True):
        assert receipt.message_id is not None, name
        stored = store.raw(receipt.message_id)
        assert stored is not None, name
        if receipt.duplicate:
            if not _same_message(stored, raw):
                lost.append(name)
        else:
            assert stored == raw, name
    # before 7 December, 99 of them were answered as resends of another message (AA, no row)
    assert lost == []
    new = {r.message_id for r in first if not r.duplicate}
    assert len(new) == sum(1 for r in first if not r.duplicate)
    accepted = [r for r in first if not r.duplicate and r.state == "received"]
    assert len(accepted) >= 200  # 208 on 7 December (10 more were resends, 45 refused)

    again = asyncio.run(_send_all(ing, corpus))
    for (name, _raw), before, after in zip(corpus, first, again, strict=True):
        if before.state == "received":  # accepted: now a resend of its row
            assert (after.duplicate, after.message_id) == (True, before.message_id), name
        else:  # refused: stored again as received, never taken for a resend
            assert not after.duplicate and after.message_id not in new, name
