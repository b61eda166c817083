"""The audit trail's key: the secret the chain's records are hashed with (HMAC-SHA256).

The key is a file of exactly 32 bytes (``ENGINE_AUDIT_KEY_FILE``; default ``var_dir/audit-key``,
made with 32 random bytes and mode 0600 on first use). It lives outside the database and the
repository: whoever can write the database but cannot read this file cannot recompute a record's
hash, so a changed record is found even when its hash was recomputed. Every node sharing one
database must share the file (copy it, 0600, to each); a node with another key reads records it
did not make as "made with key id X".

A record names its key by a **key id** (:func:`key_id_of`: the first 16 hex digits of SHA-256
over ``engine-audit-key-id`` and the key), never by the key. The key is never logged or printed:
:class:`AuditKey` leaves it out of its ``repr``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import ConfigError

__all__ = ["KEY_BYTES", "KEY_FILE_NAME", "AuditKey", "audit_key_for", "key_id_of", "load_audit_key"]

#: the key's length, in bytes (the file holds exactly these, nothing else)
KEY_BYTES = 32
#: the default file's name, under ``var_dir``
KEY_FILE_NAME = "audit-key"
_SETTING = "ENGINE_AUDIT_KEY_FILE"


def key_id_of(secret: bytes) -> str:
    """The id a record names its key by: 16 hex digits, which tell keys apart but not the key."""
    return hashlib.sha256(b"engine-audit-key-id" + secret).hexdigest()[:16]


@dataclass(frozen=True)
class AuditKey:
    """The audit key read from its file: the secret (never in ``repr``) and its id."""

    secret: bytes = field(repr=False)
    key_id: str
    path: Path


def audit_key_for(settings: Any) -> AuditKey:
    """The key ``settings`` name (``audit_key_file``, else ``var_dir/audit-key``), made on first
    use; a :class:`ConfigError` naming the file when it is unfit."""
    path = settings.audit_key_file or settings.var_dir / KEY_FILE_NAME
    return load_audit_key(Path(path))


def load_audit_key(path: Path, *, create: bool = True) -> AuditKey:
    """Read the key at ``path``; when there is no file and ``create``, make one (32 random
    bytes, mode 0600, written once: a second process starting at the same moment reads the
    first one's). Refused with a :class:`ConfigError` naming the file: a file readable or
    writable by group or others, one of another length, a folder, an unreadable file."""
    if create and not path.exists():
        _create(path)
    try:
        info = path.stat()
    except OSError as exc:
        raise ConfigError(f"{_SETTING}: {path} cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{_SETTING}: {path} is not a file")
    if os.name == "posix" and info.st_mode & 0o077:
        raise ConfigError(
            f"{_SETTING}: {path} is open to group or others (mode "
            f"{stat.S_IMODE(info.st_mode):04o}): the audit key must be the engine user's "
            f"alone (chmod 600 {path})"
        )
    secret = _read(path)
    if len(secret) != KEY_BYTES:
        raise ConfigError(
            f"{_SETTING}: {path} holds {len(secret)} bytes; an audit key is exactly {KEY_BYTES} "
            f"bytes (make one with: head -c {KEY_BYTES} /dev/urandom > {path}; chmod 600 {path})"
        )
    return AuditKey(secret, key_id_of(secret), path)


def _create(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(secrets.token_bytes(KEY_BYTES))
    except OSError as exc:
        raise ConfigError(f"{_SETTING}: {path} cannot be made ({exc.strerror})") from None


def _read(path: Path) -> bytes:
    secret = b""
    for _ in range(50):  # another process may be writing it this moment
        try:
            secret = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{_SETTING}: {path} cannot be read ({exc.strerror})") from None
        if secret:
            break
        time.sleep(0.02)
    return secret
