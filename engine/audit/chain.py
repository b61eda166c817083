"""The audit trail's hash chain: how a record is hashed, and how a chain is checked.

Each record carries its place (``seq``: 1, 2, 3 ... with no gap), the hash of the record before
it (``prev_hash``) and its own ``hash`` = SHA-256 over the previous hash and a canonical
encoding of every field (:func:`canonical`). Changing any field of a stored record changes its
hash; deleting one leaves a gap in ``seq`` and a ``prev_hash`` that names a record no longer
there; deleting the newest ones is found against the chain head the store keeps beside the
table (``audit_chain``: last seq, last hash). Pruning by retention moves the chain's *anchor*
(the seq and hash the first kept record chains to), so what is left still verifies. The
anchor is tied to the chain: each prune names the new anchor in its own ``prune-audit`` record
(covered by that record's hash), and verify requires the anchor to be the one the newest
``prune-audit`` record names (seq 0 and :data:`GENESIS` when there is none), so deleting the
oldest records and moving the anchor by hand is found.

This is tamper-*evident* against edits made outside the engine (raw SQL, a restored backup with
rows missing), not tamper-proof: whoever can rewrite every row and the head can forge a new
chain. Keeping the head hash elsewhere (``engine audit verify`` prints it; an export carries
it) is what detects that.

Incomplete: no keyed hash (HMAC) or external timestamping.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "GENESIS",
    "ChainHead",
    "ChainRecord",
    "Verified",
    "anchor_detail",
    "canonical",
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

    def describe(self) -> str:
        """One line for a person: what was verified, or what is wrong and where."""
        if self.ok:
            return (
                f"audit trail intact: {self.count} records verified; anchored at seq "
                f"{self.anchor_seq}, hash {self.anchor_hash}; head seq {self.head_seq}, "
                f"hash {self.head_hash}"
            )
        where = f"record id {self.problem_id} (seq {self.problem_seq})"
        if self.problem_id is None:
            where = "the chain head" if self.problem_seq is None else f"seq {self.problem_seq}"
            where = "the chain's anchor" if self.problem.startswith("anchor") else where
        return f"audit trail broken at {where}: {self.problem} ({self.count} records before it)"


def _at(value: datetime) -> str:
    """A time as the hash sees it: UTC, microseconds (SQLite hands back naive UTC)."""
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat(timespec="microseconds")


def canonical(fields: dict[str, Any]) -> bytes:
    """The canonical encoding of a record's fields: JSON, keys sorted, no spaces, UTF-8, the
    time in UTC with microseconds, absent values as ``null``; version 1."""
    body: dict[str, Any] = {"v": 1}
    for name in FIELDS:
        value = fields.get(name)
        body[name] = _at(value) if isinstance(value, datetime) else value
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(prev_hash: str, fields: dict[str, Any]) -> str:
    """SHA-256 (hex) over the previous record's hash and this record's canonical encoding."""
    digest = hashlib.sha256(prev_hash.encode("ascii"))
    digest.update(b"\n")
    digest.update(canonical(fields))
    return digest.hexdigest()


def _fields(record: ChainRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in FIELDS}


def verify_chain(
    records: Iterable[ChainRecord], head: ChainHead | None, *, whole: bool = True
) -> Verified:
    """Walk ``records`` in seq order from the anchor and stop at the first problem:

    - a seq that is not the next one: records deleted (a gap) or inserted around the engine;
    - a ``prev_hash`` that is not the hash of the record before: a record before it deleted
      (or this one's link changed);
    - a ``hash`` that is not the record's own: the record was changed;
    - after the last record, a seq or hash other than the head's: the newest records deleted
      (or records added without the engine);
    - an anchor other than the one the newest ``prune-audit`` record names (seq 0 and GENESIS
      when there is none): the oldest records deleted and the anchor moved by hand.

    ``head`` None (no chain head at all) is itself a problem unless there are no records.
    ``whole`` False checks a stretch of the chain (retention's batch) without the anchor check.
    """
    anchor_seq = head.anchor_seq if head else 0
    anchor_hash = head.anchor_hash if head else GENESIS
    verified = _walk(records, head, anchor_seq, anchor_hash, whole)
    return replace(verified, anchor_seq=anchor_seq, anchor_hash=anchor_hash)


def _named_anchor(record: ChainRecord) -> tuple[int, str] | None:
    found = _ANCHOR.search(record.detail or "")
    return (int(found.group(1)), found.group(2)) if found else None


def _walk(
    records: Iterable[ChainRecord],
    head: ChainHead | None,
    anchor_seq: int,
    anchor_hash: str,
    whole: bool,
) -> Verified:
    expected_prev = anchor_hash
    expected_seq = anchor_seq + 1
    count = 0
    last_seq, last_hash = anchor_seq, expected_prev
    named: tuple[int, str] | None = (0, GENESIS)  # the anchor the newest prune-audit names
    named_at: int | None = None
    for r in records:
        if r.seq != expected_seq:
            what = (
                f"seq {expected_seq}..{r.seq - 1} missing: {r.seq - expected_seq} record(s) deleted"
                if r.seq > expected_seq
                else f"seq {r.seq} out of order or repeated (expected {expected_seq})"
            )
            return _broken(count, last_seq, last_hash, r, what)
        if r.prev_hash != expected_prev:
            return _broken(
                count,
                last_seq,
                last_hash,
                r,
                "previous-hash mismatch: the record before it was deleted or replaced",
            )
        if record_hash(r.prev_hash, _fields(r)) != r.hash:
            return _broken(count, last_seq, last_hash, r, "hash mismatch: the record was changed")
        if r.action == "prune-audit":
            named, named_at = _named_anchor(r), r.seq
        count += 1
        expected_prev, expected_seq = r.hash, r.seq + 1
        last_seq, last_hash = r.seq, r.hash
    if head is None:
        if count:
            return Verified(False, count, last_seq, last_hash, None, None, "no chain head")
        return Verified(True, 0, 0, GENESIS)
    if (last_seq, last_hash) != (head.head_seq, head.head_hash):
        if head.head_seq > last_seq:
            what = (
                f"truncated: the head is seq {head.head_seq} but the last record is seq "
                f"{last_seq} ({head.head_seq - last_seq} newest record(s) deleted)"
            )
        else:
            what = (
                f"head mismatch: the head names seq {head.head_seq}, the chain ends at {last_seq}"
            )
        return Verified(False, count, last_seq, last_hash, None, None, what)
    if whole and named != (anchor_seq, anchor_hash):
        return Verified(
            False,
            count,
            last_seq,
            last_hash,
            None,
            None,
            _anchor_problem(anchor_seq, named, named_at),
        )
    return Verified(True, count, last_seq, last_hash)


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


def _broken(count: int, seq: int, hash_: str, at: ChainRecord, what: str) -> Verified:
    return Verified(False, count, seq, hash_, at.id, at.seq, what)
