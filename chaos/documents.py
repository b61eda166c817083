"""Documents in the campaign's load: while the senders run, a synthetic PDF (unique bytes, about
20 KB) is dropped into the engine's watched folder (``var/inbox``, engine/documents/folder.py)
every 1-3 s, named by the folder's default pattern (``CH0042_referral_20261204-7.pdf``: the MRN,
the type, the date); each is written under a hidden name and renamed into place, as a scanner's
software does. The routes send every document as received to ``<outbox>/documents``
(harness.py), where the engine writes its bytes and a JSON sidecar.

The verdict (by SHA-256 of the bytes): every document dropped must be in that folder exactly
once once the queues are drained; a document still in the inbox, refused to ``inbox/error``, or
missing, is named. A drop the fault itself made impossible (the disk full: ENOSPC while writing
it) is not a document dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from engine.sim.pdf import synthetic_pdf

__all__ = ["DocumentLoad", "delivered_documents", "document_problems", "drop_documents"]

#: how long the documents left in the inbox may take to be taken once the queues are drained
TAKE_BOUND_S = 60.0


@dataclass
class DocumentLoad:
    """The documents dropped (SHA-256 → file name) and the drops the disk refused."""

    dropped: dict[str, str] = field(default_factory=dict)
    refused_by_disk: int = 0


def inbox_of(env: dict[str, str], home: Path) -> Path:
    """The engine's watched folder: ``ENGINE_VAR_DIR`` (else ``<home>/var``) ``/inbox``."""
    return Path(env.get("ENGINE_VAR_DIR") or home / "var") / "inbox"


def _drop(inbox: Path, n: int, patient: int, docs: DocumentLoad) -> None:
    day = datetime.now(UTC).strftime("%Y%m%d")
    body = synthetic_pdf("referral", f"Chaos, Patient{patient}", mrn=f"CH{patient:04d}")
    name = f"CH{patient:04d}_referral_{day}-{n}.pdf"
    hidden = inbox / f".{name}"
    try:
        inbox.mkdir(parents=True, exist_ok=True)
        hidden.write_bytes(body)
        hidden.rename(inbox / name)
    except OSError:  # the disk full (disk-full): not dropped
        docs.refused_by_disk += 1
        with contextlib.suppress(OSError):
            hidden.unlink()
        return
    docs.dropped[hashlib.sha256(body).hexdigest()] = name


async def drop_documents(
    inbox: Path, done: asyncio.Event, docs: DocumentLoad, seed: int | str
) -> DocumentLoad:
    """A document every 1-3 s into ``inbox`` until ``done``."""
    rng = random.Random(seed)  # not the faults' generator: their moments stay as they were
    n = 0
    while not done.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), rng.uniform(1, 3))
        if done.is_set():
            break
        await asyncio.to_thread(_drop, inbox, n, rng.randrange(200), docs)
        n += 1
    return docs


def _pending(inbox: Path) -> int:
    return sum(1 for p in inbox.glob("*.pdf")) if inbox.is_dir() else 0


async def wait_taken(inbox: Path) -> None:
    """Until the inbox has no document left to take (or :data:`TAKE_BOUND_S`)."""
    end = time.monotonic() + TAKE_BOUND_S
    while _pending(inbox) and time.monotonic() < end:
        await asyncio.sleep(1)


def delivered_documents(folder: Path) -> Counter[str]:
    """SHA-256 of every document's bytes in the destination folder: its sidecars and hidden
    files left out, as a consumer of the folder leaves them (the engine writes a hidden
    ``.<name>.<random>.tmp`` and links it into place; a kill in between leaves it there)."""
    found: Counter[str] = Counter()
    for path in folder.iterdir() if folder.is_dir() else ():
        if path.suffix != ".json" and not path.name.startswith(".") and path.is_file():
            found[hashlib.sha256(path.read_bytes()).hexdigest()] += 1
    return found


def leftover_temps(folder: Path) -> int:
    """Hidden temporary files a kill left behind in the destination folder."""
    return sum(1 for _ in folder.glob(".*.tmp")) if folder.is_dir() else 0


def document_problems(docs: DocumentLoad, found: Counter[str], inbox: Path) -> list[str]:
    """What is wrong: documents dropped and not delivered (where they are), or delivered more
    than once (or delivered without having been dropped)."""
    problems = []
    missing = [name for sha, name in docs.dropped.items() if found[sha] == 0]
    if missing:
        where = {
            name: "still in the inbox"
            if (inbox / name).exists()
            else "refused"
            if (inbox / "error" / name).exists()
            else "missing"
            for name in missing
        }
        problems.append(f"{len(missing)} documents not delivered: {dict(list(where.items())[:5])}")
    twice = sorted(sha[:12] for sha, n in found.items() if n > 1)
    if twice:
        problems.append(f"{len(twice)} documents delivered more than once: {twice[:5]}")
    strays = [sha[:12] for sha in found if sha not in docs.dropped]
    if strays:
        problems.append(f"{len(strays)} documents delivered that were never dropped")
    return problems


def summary(docs: DocumentLoad, found: Counter[str], temps: int = 0) -> str:
    once = sum(1 for sha in docs.dropped if found[sha] == 1)
    line = f"documents: {len(docs.dropped)} dropped in the watched folder, {once} delivered once"
    if docs.refused_by_disk:
        line += f" ({docs.refused_by_disk} drops refused by the full disk)"
    if temps:
        line += f"; {temps} hidden temporary files left in the destination folder by kills"
    return line
