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
for a sidecar written after it before it is refused. A sidecar is read once it too is stable
(and not empty, unless it stays so a minute); each value as the text written (YAML's
``0012345`` is that MRN, not a number), a value that is not text (a list, a mapping) refused.
A sidecar named by a stem two documents share (``scan-2.json`` beside ``scan-2.pdf`` and
``scan-2.png``) describes neither: the first is refused with it, asking for whole-name sidecars.
A file whose name is not UTF-8 is refused and moved under a name with those bytes replaced.

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
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from engine.documents.intake import (
    DocumentChanged,
    DocumentFields,
    DocumentIntake,
    StoreUnavailable,
)
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
#: how long an empty file (document or sidecar) is waited for before it is taken as it is
_EMPTY_WAIT_S = 60.0
#: a file whose handling failed unexpectedly is tried again after this long
_RETRY_S = 60.0


@dataclass(frozen=True)
class _Seen:
    size: int
    mtime_ns: int


def _looked_at(path: Path) -> _Seen | None:
    """The file's size and time now (None: gone)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return _Seen(st.st_size, st.st_mtime_ns)


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
        self._sidecars_seen: dict[str, _Seen] = {}
        self._stable_since: dict[str, float] = {}
        self._retry_at: dict[str, float] = {}
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
        """Look once: take every file stable since the last look. How many were handled.

        A file whose handling fails unexpectedly (out of memory, an unreadable file) is logged
        and tried again a minute later: one bad file never stops the others."""
        listing, sidecars = await self.intake.run(self._list)
        stable = {
            n for n, s in sidecars.items() if self._sidecars_seen.get(n) == s and self._full(s)
        }
        self._sidecars_seen = sidecars
        handled = 0
        now = time.monotonic()
        for name, seen in listing.items():
            before = self._seen.get(name)
            if before != seen or (seen.size == 0 and not self._old_enough(name, now, 60.0)):
                # new or still changing (an empty file: a scanner that has not begun writing)
                if before != seen:
                    self._stable_since[name] = now  # the wait for a sidecar starts again
                continue
            if self._retry_at.get(name, 0.0) > now:
                continue
            try:
                if await self._take(name, now, listing, stable):
                    handled += 1
            except Exception as exc:
                self._retry_at[name] = now + _RETRY_S
                log.warning(
                    "document folder: a file could not be handled; tried again later",
                    extra={"error": type(exc).__name__, "retry_s": _RETRY_S},
                )
        self._seen = {n: s for n, s in listing.items() if (self.inbox / n).exists()}
        self._stable_since = {n: t for n, t in self._stable_since.items() if n in self._seen}
        self._retry_at = {n: t for n, t in self._retry_at.items() if n in self._seen}
        return handled

    @staticmethod
    def _full(seen: _Seen) -> bool:
        """A sidecar is read once it has something in it, or has stayed empty a minute (its
        writer has given up: read as it is, it is refused)."""
        return seen.size > 0 or time.time_ns() - seen.mtime_ns > _EMPTY_WAIT_S * 1e9

    def _old_enough(self, name: str, now: float, wait_s: float) -> bool:
        return now - self._stable_since.get(name, now) >= wait_s

    def _list(self) -> tuple[dict[str, _Seen], dict[str, _Seen]]:
        """The candidate documents in the inbox (regular, visible, not sidecars), and the
        sidecars (a sidecar is read only once it too is stable)."""
        found: dict[str, _Seen] = {}
        sidecars: dict[str, _Seen] = {}
        try:
            entries = list(os.scandir(self.inbox))
        except FileNotFoundError:
            self.inbox.mkdir(parents=True, exist_ok=True)
            return found, sidecars
        for entry in entries:
            name = entry.name
            if name.startswith(".") or name.lower().endswith(_NOT_DOCUMENTS):
                continue
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    into = sidecars if name.lower().endswith(_SIDECARS) else found
                    into[name] = _Seen(st.st_size, st.st_mtime_ns)
        return found, sidecars

    def _sidecar(self, name: str, names: Collection[str]) -> tuple[Path | None, list[str]]:
        """The document's sidecar (its whole name's first, then its stem's), and the other
        documents in the inbox that a stem's sidecar could as well be describing."""
        stem = Path(name).stem
        for base in (name, stem):
            for ext in _SIDECARS:
                path = self.inbox / f"{base}{ext}"
                if path.is_file():
                    others = [] if base == name else _same_stem(name, names)
                    return path, others
        return None, []

    def _fields_from_sidecar(self, path: Path) -> DocumentFields:
        try:
            if path.stat().st_size > _SIDECAR_BYTES:
                raise _SidecarProblem(f"larger than {_SIDECAR_BYTES} bytes")
            text = path.read_text(encoding="utf-8")
            # YAML: every value as the text written (safe_load reads 0012345 as the number
            # 5349), and aliases never expanded (a value that is not text is refused below);
            # BaseLoader constructs only str, list and dict
            data: Any = (
                json.loads(text)
                if path.suffix == ".json"
                else yaml.load(text, Loader=yaml.BaseLoader)
            )
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
        values: dict[str, str] = {}
        for key, value in data.items():
            if key not in _KEYS or value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise _SidecarProblem(f"{key} is not a single value (text such as MRN1001)")
            values[_KEYS[key]] = str(value)
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

    def _fields(
        self, name: str, sidecar: Path | None, others: list[str], now: float
    ) -> DocumentFields | None:
        """Who and what, from the sidecar or the name; None to wait for a sidecar a little
        longer; DocumentRefused when neither tells (or a stem's sidecar could be describing
        ``others`` as well)."""
        if sidecar is not None and others:
            sharing = sorted([name, *others])[:5]
            raise DocumentRefused(
                f"sidecar {sidecar.name} is named after a stem {len(others) + 1} documents share "
                f"({', '.join(sharing)}): name each sidecar after its document's whole file "
                f"name ({', '.join(f'{n}.json' for n in sharing)})",
                kind="metadata",
            )
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

    async def _take(
        self, name: str, now: float, names: Mapping[str, _Seen], stable: Collection[str]
    ) -> bool:
        """Accept or refuse one stable file, then move it; False when it waits (for a sidecar,
        for its sidecar to be written, or for the store to come back). ``names``: the
        listing, as it was seen."""
        path = self.inbox / name
        sidecar, others = await self.intake.run(self._sidecar, name, names)
        if sidecar is not None and sidecar.name not in stable:
            return False  # the sidecar is new or still being written: read it once it is not
        safe = _safe_name(name)
        origin: dict[str, Any] = {
            "channel": "folder",
            "sender": self.sender,
            "peer": str(self.inbox)[:255],
        }
        try:
            try:
                if safe != name:
                    raise DocumentRefused(
                        f"the file name is not UTF-8 text (moved to error/ as {safe}): rename "
                        "it and drop it in again",
                        kind="metadata",
                    )
                fields = await self.intake.run(self._fields, name, sidecar, others, now)
            except DocumentRefused as refused:
                raise await self.intake.refuse(
                    str(refused),
                    kind=refused.kind,
                    fields=DocumentFields(),
                    file_name=safe,
                    size=path.stat().st_size,
                    **origin,
                ) from None
            if fields is None:
                return False
            accepted = await self.intake.accept_file(path, fields, file_name=name, **origin)
        except StoreUnavailable:
            return False  # nothing moves: tried again at the next poll
        except DocumentChanged:  # the file changed while it was stored: look again
            self._seen.pop(name, None)
            return False
        except DocumentRefused as refused:
            await self.intake.run(self._move_refused, path, sidecar, refused)
            return True
        looked = await self.intake.run(_looked_at, path)
        if looked is not None and looked != names.get(name):
            # written to after it was taken (a fax server's next page after a pause longer
            # than the two looks): what was stored is what was read, but not all of the file;
            # it stays, and is taken again a minute later once stable (new bytes: a document
            # of its own), not at every pause of its writer
            self._retry_at[name] = now + _RETRY_S
            log.warning(
                "document in the folder changed after it was taken: left to be taken again",
                extra={"document_id": accepted.document_id, "retry_s": _RETRY_S},
            )
            return True
        await self.intake.run(self._move, path, sidecar, self.done)
        log.info(
            "document taken from the folder",
            extra={"document_id": accepted.document_id, "duplicate": accepted.duplicate},
        )
        return True

    def _move(self, path: Path, sidecar: Path | None, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        target = _free_name(folder, _safe_name(path.name))
        with contextlib.suppress(FileNotFoundError):  # removed by hand once taken: its sidecar
            os.replace(path, target)
        if sidecar is not None:
            with contextlib.suppress(FileNotFoundError):
                os.replace(sidecar, _free_name(folder, _safe_name(sidecar.name)))
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


def _safe_name(name: str) -> str:
    """``name`` as UTF-8 text: bytes that are not (the surrogates os.scandir decodes them to)
    replaced by ``_``, so the name can be stored, logged and written in a reason file."""
    return os.fsencode(name).decode("utf-8", "replace").replace("\ufffd", "_")


def _same_stem(name: str, names: Collection[str]) -> list[str]:
    """The other documents in ``names`` with ``name``'s stem (``scan-2.png`` for
    ``scan-2.pdf``)."""
    stem = Path(name).stem
    return sorted(n for n in names if n != name and Path(n).stem == stem)


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
