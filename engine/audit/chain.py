"""The audit trail's hash chain: how a record is hashed, and how a chain is checked.

Each record carries its place (``seq``: 1, 2, 3 ... with no gap), the hash of the record before
it (``prev_hash``) and its own ``hash`` over the previous hash and a canonical encoding of every
field (:func:`canonical`). Changing any field of a stored record changes its hash; deleting one
leaves a gap in ``seq`` and a ``prev_hash`` that names a record no longer there; deleting the
newest ones is found against the chain head the store keeps beside the table (``audit_chain``:
last seq, last hash). Pruning by retention moves the chain's *anchor* (the seq and hash the first
kept record chains to), so what is left still verifies. The anchor is tied to the chain: each
prune names the new anchor in its own ``prune-audit`` record (covered by that record's hash), and
verify requires the anchor to be the one the newest ``prune-audit`` record names (seq 0 and
:data:`GENESIS` when there is none), so deleting the oldest records and moving the anchor by hand
is found.

**Keyed** (encoding version 2): a record's hash is HMAC-SHA256 with the audit key
(:mod:`engine.audit.key`, a file outside the database and the repository), and the record names
the key by its key id (column ``key_id``, also inside the hashed encoding). Whoever can write the
database but not read the key file cannot recompute a changed record's hash, nor forge a chain:
a record changed and rehashed with plain SHA-256, or rewritten as an unkeyed record after keyed
ones, is found. Records written before the engine had a key (version 1: plain SHA-256, no key
id) still verify, but only as the chain's oldest part: an unkeyed record after a keyed one is a
problem, and so is a chain whose newest record is unkeyed while the verifying node has a key
(the engine writes an ``audit-key`` record, keyed, the first time it opens an unkeyed chain with
its key). A record made with another key than the verifying node's is reported by both key ids
("made with key id X, this node's key is Y"), not as a changed record.

What the key does not protect against: whoever holds the key file (root on an engine host, a
backup of it) can forge a chain; deleting the newest records *and* moving the head back to the
last one kept is not found by the chain alone; the unkeyed records of before the upgrade are
covered by the key only from the first keyed record on (its HMAC covers their last hash,
``prev_hash``, which chains them all): until it was written they could be rewritten unseen.
Keeping the head hash elsewhere (``engine audit verify`` prints it; an export carries it)
detects those.

Incomplete: no key rotation (a node verifies only its own key's records; the records of a key
given up stay unverifiable by the new one), no external timestamping.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from engine.audit.key import AuditKey

__all__ = [
    "GENESIS",
    "KEYED",
    "ChainHead",
    "ChainRecord",
    "Verified",
    "algorithm",
    "anchor_detail",
    "canonical",
    "keyed_hash",
    "record_hash",
    "verify_chain",
]

#: the previous hash of the first record ever written
GENESIS = "0" * 64
#: the fields of a record that its hash covers, in this order (the encoding's version is ``v``)
FIELDS = (
    "id",
    "seq",
    "at",
    "actor",
    "source",
    "action",
    "message_id",
    "patient_key",
    "detail",
    "outcome",
    "peer",
)


#: the words of a ``prune-audit`` record's detail that name the anchor it moved the chain to
_ANCHOR = re.compile(r"the chain is anchored at seq (\d+), hash ([0-9a-f]{64})")


def anchor_detail(seq: int, hash_: str) -> str:
    """How a ``prune-audit`` record names the new anchor (verify reads it back)."""
    return f"the chain is anchored at seq {seq}, hash {hash_}"


@dataclass(frozen=True)
class ChainRecord:
    """One stored record, as the chain sees it."""

    id: int
    seq: int
    at: datetime
    actor: str
    source: str
    action: str
    message_id: int | None
    patient_key: str | None
    detail: str | None
    outcome: str
    peer: str | None
    prev_hash: str
    hash: str
    #: the key id of the key that made the hash (version 2, HMAC); None: unkeyed (version 1)
    key_id: str | None = None


#: the algorithm of keyed records (version 2); unkeyed ones (version 1) are plain SHA-256
KEYED = "HMAC-SHA256"


def algorithm(key_id: str | None) -> str:
    """The algorithm a record's hash was made with, by its key id."""
    return KEYED if key_id else "SHA-256"


@dataclass(frozen=True)
class ChainHead:
    """What the store keeps beside the records: the newest record's seq and hash, and the anchor
    (the seq and hash of the last record pruned; 0 and :data:`GENESIS` when none was)."""

    head_seq: int
    head_hash: str
    anchor_seq: int
    anchor_hash: str


@dataclass(frozen=True)
class Verified:
    """A chain checked: ``ok`` with ``count`` records, or the first problem found."""

    ok: bool
    count: int
    head_seq: int
    head_hash: str
    #: the record the problem is at (id and seq; None for a problem at the head)
    problem_id: int | None = None
    problem_seq: int | None = None
    problem: str = ""
    #: the anchor the walk began at (the last record pruned; 0 and GENESIS when none was)
    anchor_seq: int = 0
    anchor_hash: str = GENESIS
    #: the verifying node's key id (None: it has no key); the first keyed record walked
    key_id: str | None = None
    keyed_from: int | None = None

    def describe(self) -> str:
        """One line for a person: what was verified, or what is wrong and where."""
        if self.ok:
            return (
                f"audit trail intact: {self.count} records verified ({self._keying()}); "
                f"anchored at seq {self.anchor_seq}, hash {self.anchor_hash}; head seq "
                f"{self.head_seq}, hash {self.head_hash}"
            )
        where = f"record id {self.problem_id} (seq {self.problem_seq})"
        if self.problem_id is None:
            where = "the chain head" if self.problem_seq is None else f"seq {self.problem_seq}"
            where = "the chain's anchor" if self.problem.startswith("anchor") else where
        return f"audit trail broken at {where}: {self.problem} ({self.count} records before it)"

    def _keying(self) -> str:
        if self.keyed_from is None:
            return "none keyed: plain SHA-256" if self.count else "none yet"
        keyed = f"{KEYED} with key id {self.key_id}"
        if self.keyed_from <= self.anchor_seq + 1:
            return keyed
        return (
            f"{keyed} from seq {self.keyed_from}; seq {self.anchor_seq + 1}.."
            f"{self.keyed_from - 1} unkeyed, written before the audit key"
        )


def _at(value: datetime) -> str:
    """A time as the hash sees it: UTC, microseconds (SQLite hands back naive UTC)."""
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat(timespec="microseconds")


def canonical(fields: dict[str, Any], *, key_id: str | None = None) -> bytes:
    """The canonical encoding of a record's fields: JSON, keys sorted, no spaces, UTF-8, the
    time in UTC with microseconds, absent values as ``null``; version 1, or with ``key_id``
    version 2 (``"v": 2`` and the key id in the body)."""
    body: dict[str, Any] = {"v": 2, "key_id": key_id} if key_id else {"v": 1}
    for name in FIELDS:
        value = fields.get(name)
        body[name] = _at(value) if isinstance(value, datetime) else value
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(prev_hash: str, fields: dict[str, Any]) -> str:
    """Version 1 (records written before the engine had a key): SHA-256 (hex) over the previous
    record's hash and this record's canonical encoding."""
    digest = hashlib.sha256(prev_hash.encode("ascii"))
    digest.update(b"\n")
    digest.update(canonical(fields))
    return digest.hexdigest()


def keyed_hash(prev_hash: str, fields: dict[str, Any], key: AuditKey) -> str:
    """Version 2: HMAC-SHA256 (hex) with the audit key over the previous record's hash and this
    record's canonical encoding, which names the key's id."""
    body = canonical(fields, key_id=key.key_id)
    message = prev_hash.encode("ascii") + b"\n" + body
    return hmac.new(key.secret, message, hashlib.sha256).hexdigest()


def verify_chain(
    records: Iterable[ChainRecord],
    head: ChainHead | None,
    *,
    key: AuditKey | None = None,
    whole: bool = True,
) -> Verified:
    """Walk ``records`` in seq order from the anchor and stop at the first problem:

    - a seq that is not the next one: records deleted (a gap) or inserted around the engine;
    - a ``prev_hash`` that is not the hash of the record before: a record before it deleted
      (or this one's link changed);
    - a ``hash`` that is not the record's own: the record was changed (for a keyed record: its
      HMAC with ``key``, so a hash recomputed without the key is found);
    - a keyed record made with another key than ``key`` (both key ids named), or any keyed
      record when there is no ``key``;
    - an unkeyed record after a keyed one, or (``whole``, with a ``key``) a chain whose newest
      record is unkeyed: written without the key, i.e. around the engine;
    - after the last record, a seq or hash other than the head's: the newest records deleted
      (or records added without the engine);
    - an anchor other than the one the newest ``prune-audit`` record names (seq 0 and GENESIS
      when there is none): the oldest records deleted and the anchor moved by hand.

    ``head`` None (no chain head at all) is itself a problem unless there are no records.
    ``whole`` False checks a stretch of the chain (retention's batch) without the anchor check.
    """
    anchor_seq = head.anchor_seq if head else 0
    anchor_hash = head.anchor_hash if head else GENESIS
    walk = _Walk(key, anchor_seq, anchor_hash)
    verified = walk.run(records, head, whole)
    return replace(
        verified,
        anchor_seq=anchor_seq,
        anchor_hash=anchor_hash,
        key_id=key.key_id if key else None,
        keyed_from=walk.keyed_from,
    )


def _named_anchor(record: ChainRecord) -> tuple[int, str] | None:
    found = _ANCHOR.search(record.detail or "")
    return (int(found.group(1)), found.group(2)) if found else None


class _Walk:
    """One walk of a chain: where it is, and the first keyed record seen."""

    def __init__(self, key: AuditKey | None, anchor_seq: int, anchor_hash: str) -> None:
        self.key = key
        self.anchor = (anchor_seq, anchor_hash)
        self.keyed_from: int | None = None
        self.last_unkeyed = False

    def problem(self, r: ChainRecord, expected_seq: int, expected_prev: str) -> str | None:
        """What is wrong with ``r`` at its place, or None."""
        if r.seq != expected_seq:
            return (
                f"seq {expected_seq}..{r.seq - 1} missing: {r.seq - expected_seq} record(s) deleted"
                if r.seq > expected_seq
                else f"seq {r.seq} out of order or repeated (expected {expected_seq})"
            )
        if r.prev_hash != expected_prev:
            return "previous-hash mismatch: the record before it was deleted or replaced"
        fields = {name: getattr(r, name) for name in FIELDS}
        if r.key_id is None:
            if self.keyed_from is not None:
                return (
                    f"unkeyed record after keyed ones (keyed from seq {self.keyed_from}): "
                    "written without the audit key, so changed outside the engine"
                )
            own = record_hash(r.prev_hash, fields)
        elif self.key is None or r.key_id != self.key.key_id:
            mine = f"this node's key is {self.key.key_id}" if self.key else "this node has none"
            return (
                f"key mismatch: records from seq {r.seq} were made with key id {r.key_id}, "
                f"{mine} (nodes sharing one database must share ENGINE_AUDIT_KEY_FILE); "
                "not checked further"
            )
        else:
            own = keyed_hash(r.prev_hash, fields, self.key)
        if not hmac.compare_digest(own, r.hash):
            return "hash mismatch: the record was changed"
        if r.key_id is not None and self.keyed_from is None:
            self.keyed_from = r.seq
        self.last_unkeyed = r.key_id is None
        return None

    def run(self, records: Iterable[ChainRecord], head: ChainHead | None, whole: bool) -> Verified:
        anchor_seq, anchor_hash = self.anchor
        expected_prev, expected_seq = anchor_hash, anchor_seq + 1
        count = 0
        last_seq, last_hash = anchor_seq, expected_prev
        named: tuple[int, str] | None = (0, GENESIS)  # the anchor the newest prune-audit names
        named_at: int | None = None
        for r in records:
            what = self.problem(r, expected_seq, expected_prev)
            if what is not None:
                return Verified(False, count, last_seq, last_hash, r.id, r.seq, what)
            if r.action == "prune-audit":
                named, named_at = _named_anchor(r), r.seq
            count += 1
            expected_prev, expected_seq = r.hash, r.seq + 1
            last_seq, last_hash = r.seq, r.hash
        if head is None:
            if count:
                return Verified(False, count, last_seq, last_hash, None, None, "no chain head")
            return Verified(True, 0, 0, GENESIS)
        what = _head_problem(head, last_seq, last_hash)
        if what is None and whole and named != self.anchor:
            what = _anchor_problem(anchor_seq, named, named_at)
        if what is None and whole and self.key is not None and self.last_unkeyed:
            what = (
                f"unkeyed head: the newest record (seq {last_seq}) is unkeyed though this node "
                f"has an audit key (key id {self.key.key_id}): records rewritten without the "
                "key, or none written since the key (the engine writes an audit-key record "
                "when it opens such a chain: run the engine or any engine command once)"
            )
        if what is not None:
            return Verified(False, count, last_seq, last_hash, None, None, what)
        return Verified(True, count, last_seq, last_hash)


def _head_problem(head: ChainHead, last_seq: int, last_hash: str) -> str | None:
    if (last_seq, last_hash) == (head.head_seq, head.head_hash):
        return None
    if head.head_seq > last_seq:
        return (
            f"truncated: the head is seq {head.head_seq} but the last record is seq "
            f"{last_seq} ({head.head_seq - last_seq} newest record(s) deleted)"
        )
    return f"head mismatch: the head names seq {head.head_seq}, the chain ends at {last_seq}"


def _anchor_problem(anchor_seq: int, named: tuple[int, str] | None, named_at: int | None) -> str:
    said = (
        "no prune-audit record, so seq 0 (GENESIS)"
        if named_at is None
        else f"the newest prune-audit record (seq {named_at}) names "
        + (f"seq {named[0]}" if named else "no anchor")
    )
    return (
        f"anchor mismatch: the chain is anchored at seq {anchor_seq} but {said}: "
        "the oldest records were deleted and the anchor moved outside the engine"
    )
