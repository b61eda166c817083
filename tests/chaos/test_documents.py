"""The campaign's documents (chaos/documents.py): dropped into the watched folder under a hidden
name and renamed, named by the folder's default pattern, and judged by SHA-256 at the
destination folder (sidecars left out)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from chaos.documents import (
    DocumentLoad,
    delivered_documents,
    document_problems,
    drop_documents,
    inbox_of,
)
from engine.settings import Settings


def test_documents_dropped_are_named_as_the_folder_reads_them_and_judged_by_hash(
    tmp_path: Path,
) -> None:
    inbox = inbox_of({}, tmp_path)
    assert inbox == tmp_path / "var" / "inbox"
    docs = DocumentLoad()

    async def drop_a_few() -> None:
        done = asyncio.Event()
        task = asyncio.create_task(drop_documents(inbox, done, docs, "t"))
        while len(docs.dropped) < 2:
            await asyncio.sleep(0.1)
        done.set()
        await task

    asyncio.run(drop_a_few())
    names = sorted(p.name for p in inbox.iterdir())
    assert len(names) == len(docs.dropped) >= 2  # no hidden file left behind
    pattern = re.compile(Settings().documents_name_pattern)
    assert all(pattern.match(n) and n.endswith(".pdf") for n in names)

    out = tmp_path / "outbox"
    out.mkdir()
    first, second = sorted(inbox.iterdir())[:2]
    (out / "1-d.pdf").write_bytes(first.read_bytes())
    (out / "1-d.meta.json").write_text("{}")
    (out / ".1-d.pdf.x1y2.tmp").write_bytes(first.read_bytes())  # a kill's leftover: not counted
    found = delivered_documents(out)
    problems = document_problems(docs, found, inbox)
    assert len(problems) == 1 and "still in the inbox" in problems[0]  # the others
    (out / "2-d.pdf").write_bytes(first.read_bytes())  # the same one again
    problems = document_problems(docs, delivered_documents(out), inbox)
    assert any("more than once" in p for p in problems)
