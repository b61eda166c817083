"""The engine's own signing keys: a folder of private keys and a small JSON index beside them.

These keys *sign* what the engine sends (SMART Backend Services client assertions, RFC 7523, for
Epic); they are not the keys that *verify* tokens presented to the engine's API
(engine/api/keys.py). The folder is ``VAR_DIR/keys`` (under the engine home, never in the
repository), made 0700; each private key is a PKCS#8 PEM file made 0600; ``keys.json`` holds, for
every key, its ``kid``, ``alg``, state, times, file name and *public* JWK (so the JWKS endpoint
never opens a private key).

A key is **active** (the one that signs; at most one), **previous** (rotated out: still published,
so a verifier accepts assertions signed before the rotation) or **retired** (not published; its
private key file deleted). ``kid`` is the RFC 7638 JWK thumbprint (SHA-256), so the same key always
has the same ``kid``. RS384 keys are RSA 3072 bits; ES384 keys are EC P-384 (RFC 7518 §3.1).

Key generation and the thumbprint use ``cryptography`` directly: python-jose (the project's JWT
library, used here for the JWK export and the signing) generates no keys and has no thumbprint.
Changes are serialised by an exclusive lock on ``keys.lock`` and the index is replaced atomically,
so two ``engine keys`` commands at once cannot leave two active keys.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwk

from engine.errors import EngineError

__all__ = [
    "ACTIVE",
    "ALGORITHMS",
    "PREVIOUS",
    "RETIRED",
    "KeyRecord",
    "Keyring",
    "SigningKey",
    "SigningKeyError",
    "thumbprint",
]

ACTIVE, PREVIOUS, RETIRED = "active", "previous", "retired"
ALGORITHMS = ("RS384", "ES384")
RSA_BITS = 3072
INDEX_NAME = "keys.json"
LOCK_NAME = "keys.lock"
MAX_INDEX_BYTES = 1024 * 1024
#: the members of a public JWK that RFC 7638 §3.2 hashes, by key type
_REQUIRED = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}
_PUBLIC = {"RSA": ("kty", "n", "e"), "EC": ("kty", "crv", "x", "y")}


class SigningKeyError(EngineError):
    """A signing key cannot be made, changed or used (no active key, unknown kid, unsafe file)."""


@dataclass(frozen=True)
class KeyRecord:
    """One key's entry in the index: no private material."""

    kid: str
    alg: str
    state: str
    created: str
    file: str | None  # the private key's file name in the folder; None once retired
    public: dict[str, str]  # the public JWK members (kty and n/e or crv/x/y)
    rotated: str | None = None
    retired: str | None = None


@dataclass(frozen=True)
class SigningKey:
    """The active key, ready to sign: its ``kid``, ``alg`` and a python-jose key."""

    kid: str
    alg: str
    key: Any


def thumbprint(public: dict[str, str]) -> str:
    """The RFC 7638 thumbprint: SHA-256 of the required members in lexicographic order, no
    whitespace, base64url without padding."""
    members = {name: public[name] for name in _REQUIRED[public["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    digest = hashlib.sha256(canonical).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Keyring:
    """The keys in ``folder``; every change under the folder's lock."""

    def __init__(self, folder: Path, *, clock: Callable[[], str] = _now) -> None:
        self.folder = folder
        self.index = folder / INDEX_NAME
        self._clock = clock

    # -- reading ---------------------------------------------------------------------------

    def records(self) -> list[KeyRecord]:
        """Every key in the index, oldest first (an absent folder: none)."""
        try:
            with self.index.open("rb") as handle:
                raw = handle.read(MAX_INDEX_BYTES + 1)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise SigningKeyError(f"{self.index}: cannot read ({exc.strerror})") from exc
        if len(raw) > MAX_INDEX_BYTES:
            raise SigningKeyError(f"{self.index}: larger than 1 MiB; not a key index")
        try:
            document = json.loads(raw)
            return [KeyRecord(**entry) for entry in document["keys"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise SigningKeyError(f"{self.index}: not a valid key index") from exc

    def jwks(self) -> dict[str, Any]:
        """The public key set (RFC 7517 §5): active and previous keys, public members only."""
        keys = [
            {**record.public, "kid": record.kid, "alg": record.alg, "use": "sig"}
            for record in self.records()
            if record.state in (ACTIVE, PREVIOUS)
        ]
        return {"keys": keys}

    def active(self) -> SigningKey:
        """The active key, its file checked: refused when group or others may read it."""
        record = next((r for r in self.records() if r.state == ACTIVE), None)
        if record is None or record.file is None:
            raise SigningKeyError(f"{self.folder}: no active signing key; run 'engine keys create'")
        path = self.folder / record.file
        try:
            mode = path.stat().st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise SigningKeyError(
                    f"{path}: private key readable by group or others "
                    f"(mode {stat.S_IMODE(mode):04o}); run chmod 600 on it"
                )
            pem = path.read_text(encoding="ascii")
        except OSError as exc:
            raise SigningKeyError(f"{path}: cannot read the signing key ({exc.strerror})") from exc
        return SigningKey(record.kid, record.alg, jwk.construct(pem, record.alg))

    # -- changing ----------------------------------------------------------------------------

    def create(self, alg: str = "RS384") -> KeyRecord:
        """The first active key; refused when one is active already (use :meth:`rotate`)."""
        with self._locked() as records:
            current = next((r for r in records if r.state == ACTIVE), None)
            if current is not None:
                raise SigningKeyError(
                    f"an active key exists ({current.kid}); use 'engine keys rotate'"
                )
            record = self._new_key(alg)
            self._write(records + [record])
            return record

    def rotate(self, alg: str | None = None) -> tuple[KeyRecord, KeyRecord]:
        """A new active key (``alg``, else the current key's); the old one becomes previous and
        stays published until retired. Returns (new, old)."""
        with self._locked() as records:
            current = next((r for r in records if r.state == ACTIVE), None)
            if current is None:
                raise SigningKeyError("no active key to rotate; use 'engine keys create'")
            record = self._new_key(alg or current.alg)
            old = replace(current, state=PREVIOUS, rotated=record.created)
            self._write([old if r is current else r for r in records] + [record])
            return record, old

    def retire(self, kid: str) -> KeyRecord:
        """A previous key stops being published and its private key file is deleted."""
        with self._locked() as records:
            found = next((r for r in records if r.kid == kid), None)
            if found is None:
                raise SigningKeyError(f"no key with kid {kid}")
            if found.state != PREVIOUS:
                hint = "; rotate first" if found.state == ACTIVE else ""
                raise SigningKeyError(f"key {kid} is {found.state}, not previous{hint}")
            retired = replace(found, state=RETIRED, file=None, retired=self._clock())
            self._write([retired if r is found else r for r in records])
            if found.file is not None:  # after the index: a crash leaves a file, never a hole
                (self.folder / found.file).unlink(missing_ok=True)
            return retired

    # -- inside --------------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[list[KeyRecord]]:
        self._make_folder()
        fd = os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self.records()
        finally:
            os.close(fd)  # closing releases the lock

    def _make_folder(self) -> None:
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.folder, 0o700)
        except OSError as exc:
            raise SigningKeyError(
                f"{self.folder}: cannot make the keys folder ({exc.strerror})"
            ) from exc

    def _new_key(self, alg: str) -> KeyRecord:
        private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
        if alg == "RS384":
            private = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
        elif alg == "ES384":
            private = ec.generate_private_key(ec.SECP384R1())
        else:
            raise SigningKeyError(f"algorithm {alg!r} not offered; use one of {list(ALGORITHMS)}")
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        exported = jwk.construct(pem.decode("ascii"), alg).public_key().to_dict()
        public = {name: str(exported[name]) for name in _PUBLIC[str(exported["kty"])]}
        kid = thumbprint(public)
        name = f"{kid}.pem"
        path = self.folder / name
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise SigningKeyError(f"{path}: cannot write the private key ({exc.strerror})") from exc
        return KeyRecord(kid, alg, ACTIVE, self._clock(), name, public)

    def _write(self, records: list[KeyRecord]) -> None:
        body = json.dumps({"keys": [asdict(r) for r in records]}, indent=2).encode() + b"\n"
        temporary = self.index.with_suffix(".json.tmp")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(body)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.index)
        except OSError as exc:
            raise SigningKeyError(f"{self.index}: cannot write ({exc.strerror})") from exc
