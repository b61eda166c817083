"""The watched folder: scanners and fax servers drop documents into it; ``engine serve`` polls it
every second (``ENGINE_DOCUMENTS_INBOX``, default ``var/inbox``; empty: no folder).

A file is taken only once it is *stable*: the same size and modification time at two polls in a
row (a scanner writes a multi-page scan slowly, and a fax server appends page by page). Hidden
files (a name starting with ``.``: the usual way to write a file then rename it into place) and
the sidecars are never taken by themselves.

Who and what comes from a **sidecar** beside it, ``<name>.json`` or ``<name>.yaml`` (``<name>``
the document's whole file name or its stem: ``scan-17.pdf.json`` or ``scan-17.json``), holding
``mrn``, ``document_type``, ``date`` and optionally ``appointment``, ``authority``, ``practice``,
``department``, ``encounter``, ``author``, ``title``; without one, from the **file name**, by
``ENGINE_DOCUMENTS_NAME_PATTERN`` (named groups ``mrn``, ``type``, ``date``: by default
``MRN1001_insurance-card_20261201.pdf``). A stable file with neither waits ``sidecar_wait_s``
for a sidecar written after it before it is refused.

Accepted files move to ``done/`` (with their sidecars) once the store has committed them; refused
ones to ``error/`` with ``<name>.reason.txt`` saying why (and the refusal recorded in the store).
The move comes after the commit, so a crash in between leaves the file where it was: taken again
on restart, it is the same bytes for the same patient and stored once (a duplicate). When the store
is down nothing moves, and the file is tried again at the next poll.

Files are moved to ``done/`` rather than deleted: the practice can see what was taken (and the
scanner's operator what was not), and a file is never gone unless the store holds it. The engine
removes files from ``done/`` once they are older than ``retention_days`` (the store holds them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from engine.documents.intake import DocumentFields, DocumentIntake, StoreUnavailable
from engine.documents.sniff import DocumentRefused

__all__ = ["WatchedFolder"]

log = logging.getLogger(__name__)

_SIDECARS = (".json", ".yaml", ".yml")
#: what else is never a document: a refusal's reason, partial downloads
_NOT_DOCUMENTS = (".reason.txt", ".part", ".tmp", ".crdownload")
#: the largest sidecar read
_SIDECAR_BYTES = 64 * 1024
_KEYS = {
    "mrn": "mrn",
    "document_type": "document_type",
    "type": "document_type",
    "date": "date",
    "appointment": "appointment",
    "authority": "authority",
    "practice": "practice",
    "department": "department",
    "encounter": "encounter",
    "author": "author",
    "title": "title",
}
#: how often done/ is swept of files past retention
_SWEEP_S = 3600.0


@dataclass(frozen=True)
class _Seen:
    size: int
    mtime_ns: int


class _SidecarProblem(Exception):
    pass


class WatchedFolder:
    """Polls ``inbox`` and hands each stable file to the intake (see the module docstring)."""

    def __init__(
        self,
        inbox: Path,
        intake: DocumentIntake,
        *,
        name_pattern: str,
        sender: str = "inbox",
        sidecar_wait_s: float = 5.0,
        retention_days: int | None = None,
    ) -> None:
        self.inbox = inbox
        self.done = inbox / "done"
        self.error = inbox / "error"
        self.intake = intake
        self.pattern = re.compile(name_pattern)
        self.sender = sender
        self.sidecar_wait_s = sidecar_wait_s
        self.retention_days = retention_days
        self._seen: dict[str, _Seen] = {}
        self._stable_since: dict[str, float] = {}
        self._swept = 0.0

    async def run(self, stop: asyncio.Event, poll_s: float = 1.0) -> None:
        """Poll every ``poll_s`` until ``stop`` is set; a failing poll is logged and retried."""
        while not stop.is_set():
            try:
                await self.poll()
                if self.retention_days is not None and time.monotonic() - self._swept > _SWEEP_S:
                    self._swept = time.monotonic()
                    await self.intake.run(self.sweep_done, self.retention_days)
            except Exception as exc:  # the folder unmounted, permissions: try again later
                log.warning("document folder poll failed", extra={"error": type(exc).__name__})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), poll_s)

    async def poll(self) -> int:
        """Look once: take every file stable since the last look. How many were handled."""
        listing = await self.intake.run(self._list)
        handled = 0
        now = time.monotonic()
        for name, seen in listing.items():
            before = self._seen.get(name)
            if before != seen or (seen.size == 0 and not self._old_enough(name, now, 60.0)):
                # new or still changing (an empty file: a scanner that has not begun writing)
                if before != seen:
                    self._stable_since[name] = now  # the wait for a sidecar starts again
                continue
            if await self._take(name, now):
                handled += 1
        self._seen = {n: s for n, s in listing.items() if (self.inbox / n).exists()}
        self._stable_since = {n: t for n, t in self._stable_since.items() if n in self._seen}
        return handled

    def _old_enough(self, name: str, now: float, wait_s: float) -> bool:
        return now - self._stable_since.get(name, now) >= wait_s

    def _list(self) -> dict[str, _Seen]:
        """The candidate documents in the inbox: regular, visible, not sidecars."""
        found: dict[str, _Seen] = {}
        try:
            entries = list(os.scandir(self.inbox))
        except FileNotFoundError:
            self.inbox.mkdir(parents=True, exist_ok=True)
            return found
        for entry in entries:
            name = entry.name
            if name.startswith(".") or name.lower().endswith(_SIDECARS + _NOT_DOCUMENTS):
                continue
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    found[name] = _Seen(st.st_size, st.st_mtime_ns)
        return found

    def _sidecar(self, name: str) -> Path | None:
        stem = Path(name).stem
        for base in (name, stem):
            for ext in _SIDECARS:
                path = self.inbox / f"{base}{ext}"
                if path.is_file():
                    return path
        return None

    def _fields_from_sidecar(self, path: Path) -> DocumentFields:
        try:
            if path.stat().st_size > _SIDECAR_BYTES:
                raise _SidecarProblem(f"larger than {_SIDECAR_BYTES} bytes")
            text = path.read_text(encoding="utf-8")
            data: Any = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
            if isinstance(exc, _SidecarProblem):
                raise
            raise _SidecarProblem(f"not readable as {path.suffix[1:].upper()}") from None
        if not isinstance(data, dict):
            raise _SidecarProblem("not a mapping of keys (mrn, document_type, date, ...)")
        unknown = sorted(str(k) for k in data if k not in _KEYS and k != "sender")
        if unknown:
            raise _SidecarProblem(
                f"unknown keys {', '.join(k[:32] for k in unknown[:5])} (it takes "
                f"{', '.join(sorted(set(_KEYS)))})"
            )
        values = {_KEYS[k]: str(v) for k, v in data.items() if k in _KEYS and v is not None}
        return DocumentFields(**values)

    def _fields_from_name(self, name: str) -> DocumentFields | None:
        match = self.pattern.match(name)
        if match is None:
            return None
        groups = match.groupdict()
        day = groups.get("date")
        if day and re.fullmatch(r"\d{8}", day):
            day = f"{day[:4]}-{day[4:6]}-{day[6:]}"
        return DocumentFields(mrn=groups.get("mrn"), document_type=groups.get("type"), date=day)

    def _fields(self, name: str, sidecar: Path | None, now: float) -> DocumentFields | None:
        """Who and what, from the sidecar or the name; None to wait for a sidecar a little
        longer; DocumentRefused when neither tells."""
        if sidecar is not None:
            try:
                return self._fields_from_sidecar(sidecar)
            except _SidecarProblem as problem:
                raise DocumentRefused(
                    f"sidecar {sidecar.name}: {problem}", kind="metadata"
                ) from None
        found = self._fields_from_name(name)
        if found is None:
            if not self._old_enough(name, now, self.sidecar_wait_s):
                return None
            raise DocumentRefused(
                "no sidecar (<name>.json or <name>.yaml) and the file name does not match "
                "ENGINE_DOCUMENTS_NAME_PATTERN: cannot tell the patient and the type",
                kind="metadata",
            )
        return found

    async def _take(self, name: str, now: float) -> bool:
        """Accept or refuse one stable file, then move it; False when it waits (for a sidecar,
        or for the store to come back)."""
        path = self.inbox / name
        sidecar = await self.intake.run(self._sidecar, name)
        origin: dict[str, Any] = {
            "channel": "folder",
            "sender": self.sender,
            "peer": str(self.inbox)[:255],
        }
        try:
            try:
                fields = await self.intake.run(self._fields, name, sidecar, now)
            except DocumentRefused as refused:
                raise await self.intake.refuse(
                    str(refused),
                    kind=refused.kind,
                    fields=DocumentFields(),
                    file_name=name,
                    size=path.stat().st_size,
                    **origin,
                ) from None
            if fields is None:
                return False
            accepted = await self.intake.accept_file(path, fields, file_name=name, **origin)
        except StoreUnavailable:
            return False  # nothing moves: tried again at the next poll
        except ValueError:  # the file changed while it was stored: look again
            self._seen.pop(name, None)
            return False
        except DocumentRefused as refused:
            await self.intake.run(self._move_refused, path, sidecar, refused)
            return True
        await self.intake.run(self._move, path, sidecar, self.done)
        log.info(
            "document taken from the folder",
            extra={"document_id": accepted.document_id, "duplicate": accepted.duplicate},
        )
        return True

    def _move(self, path: Path, sidecar: Path | None, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        target = _free_name(folder, path.name)
        os.replace(path, target)
        if sidecar is not None:
            with contextlib.suppress(FileNotFoundError):
                os.replace(sidecar, _free_name(folder, sidecar.name))
        return target

    def _move_refused(self, path: Path, sidecar: Path | None, refused: DocumentRefused) -> None:
        target = self._move(path, sidecar, self.error)
        record = f" (recorded as message {refused.message_id})" if refused.message_id else ""
        target.with_name(target.name + ".reason.txt").write_text(
            f"{refused}{record}\n", encoding="utf-8"
        )

    def sweep_done(self, retention_days: int) -> int:
        """Remove files in done/ older than ``retention_days`` (the store holds their bytes)."""
        if not self.done.is_dir():
            return 0
        cutoff = time.time() - retention_days * 86400
        removed = 0
        for entry in os.scandir(self.done):
            with contextlib.suppress(OSError):
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
        return removed


def _free_name(folder: Path, name: str) -> Path:
    """``folder/name``, or ``stem-2.ext``, ``stem-3.ext`` ... when taken (a re-scan of the same
    name must not overwrite the first)."""
    target = folder / name
    n = 2
    path = Path(name)
    while target.exists():
        target = folder / f"{path.stem}-{n}{path.suffix}"
        n += 1
    return target
