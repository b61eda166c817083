"""The file drop destination: one file per message and destination in a directory.

A file is written atomically: the body goes to a temporary file in the same directory, is flushed
to disk (``fsync``), then renamed over the final name (``os.replace``, atomic on POSIX and
Windows within one file system), and the directory entry is flushed too. A reader polling the
directory sees either no file or the whole file, never half of one; temporary files start with a
dot and end in ``.tmp`` so pollers can skip them.

The name is ``<message id>-<destination>.json`` (FHIR Bundle) or ``.hl7`` (HL7v2), so a redelivery
of the same message overwrites the same file: delivering twice is harmless (idempotent).

Errors that may pass (disk full, I/O error, a busy file) are retryable; errors that the next try
will meet again (permission denied, read-only file system, a name too long, a directory in the way)
are permanent.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from engine.adapters.destination import DeliveryResult, Payload

__all__ = ["FileDestination", "FileDropDestination", "file_name"]

log = logging.getLogger(__name__)

_EXTENSIONS = {"fhir-bundle": ".json", "hl7v2": ".hl7"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_PERMANENT = frozenset(
    {
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENAMETOOLONG,
        errno.EISDIR,
        errno.ENOTDIR,
        errno.EEXIST,  # a file where the directory should be
    }
)


class FileDestination(BaseModel):
    """A route file's ``type: file`` destination: a directory, one file per message and
    destination, written atomically."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    directory: Path


def file_name(payload: Payload) -> str:
    """``<message id>-<destination>.<json|hl7>``, the destination reduced to safe characters."""
    return (
        f"{payload.message_id}-{_UNSAFE.sub('_', payload.destination)}{_EXTENSIONS[payload.kind]}"
    )


def _write_atomic(directory: Path, name: str, body: bytes) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, directory / name)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX)
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class FileDropDestination:
    """Writes each payload to ``directory`` (created when missing)."""

    def __init__(self, name: str, config: FileDestination) -> None:
        self.name = name
        self.config = config
        self.directory = config.directory

    async def deliver(self, payload: Payload) -> DeliveryResult:
        name = file_name(payload)
        try:
            await asyncio.to_thread(_write_atomic, self.directory, name, payload.body)
        except OSError as exc:
            code = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
            detail = f"file: {code}"
            log.warning(
                "file delivery failed",
                extra={"destination": self.name, "message_id": payload.message_id, "error": code},
            )
            if exc.errno in _PERMANENT:
                return DeliveryResult.fail(detail)
            return DeliveryResult.retry(detail)
        return DeliveryResult.success(f"file: wrote {name} ({len(payload.body)} bytes)")

    async def close(self) -> None:
        """Nothing is held open between deliveries."""
