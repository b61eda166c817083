"""Which messages of a batch are resends, and which merely reuse a control ID.

The idempotent receiver keys an HL7v2 message by its sender and control ID (MSH-3, MSH-4,
MSH-10): a sender that got no ACK sends the message again with the same MSH-10, and the
second copy must not be routed twice. But a key says nothing of the content. Feeds whose
control IDs restart (an EHR reinstalled, a test tool, an interface engine upstream that numbers
per day) send *different* messages under a key already stored; taking those for resends
answered AA and stored nothing (the 77 FHIR-Converter samples hold 77 messages under 20 keys:
57 were lost that way).

So a key already held is a resend only if the content is the same: the same segments, whatever
ends them (``\\r``, ``\\n`` or ``\\r\\n``), with MSH-7 (the time of the message, which some senders
stamp anew on each try) left out. Anything else is a message of its own: it is stored under the
key with its content's SHA-256 appended (so *its* resends are found in turn) and a warning on
the row says the control ID was reused. A message stored under such a key must still be found
by its resends once the first message under the control ID is gone (retention purged it): so a
new message's *guard*, the key its content would have had as a reused one, is looked up too,
and a message whose guard is held (by the same content) is a resend of that one. Only messages of
kind ``hl7v2`` are compared: a pulled FHIR appointment's key is its version (engine/jobs/
pull.py), and its Bundle's bytes may change while the version does not.

The planner here decides, given the originals known so far, what each item of a batch is;
``save_batch`` (engine/store/messages.py) looks keys up and inserts until the plan holds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Connection,
    Engine,
    and_,
    case,
    literal,
    select,
)

from engine.store.clean import clean
from engine.store.db import aware
from engine.store.lists import in_list
from engine.store.tables import messages

__all__ = [
    "Held",
    "DIGEST_STORED_FROM",
    "Insert",
    "Plan",
    "Planner",
    "Unhashed",
    "after_receipt_notes",
    "content_digest",
    "hash_originals",
    "holders",
    "reused_key",
]

#: what may come before a message's MSH, in any order: blanks, MLLP's framing bytes, a UTF-8
#: byte-order mark (the parser skips the same)
_LEADING = b" \t\x0b\x1c\xef\xbb\xbf"
#: "|#" and 64 hex digits
_DIGEST_TAIL = 66
#: an HL7v2 message this large or larger has its digest stored with it (``messages.digest``):
#: its resends compare with that, without its bytes read back and hashed (0.25 ms at this
#: size, 0.4 s at 100 MB); a smaller one is hashed when compared, which costs less than
#: storing 64 more bytes with every message
DIGEST_STORED_FROM = 64 * 1024


def content_digest(raw: bytes) -> str:
    """SHA-256 (hex) of what a resend must repeat: the segments, not their line ends, and the
    first MSH (after any byte-order mark, MLLP framing byte or blank) with its MSH-7 empty.
    Hashed a segment at a time, without a regular expression's copies: 0.39 s of CPU a 100 MB
    here (7 December, a 67 MB MDM); 4.6 µs for a 1.2 KB ADT, which every new HL7v2 message
    pays for its guard (:meth:`Planner.guard`)."""
    digest = hashlib.sha256()
    header_seen = False
    for segment in raw.replace(b"\r\n", b"\r").replace(b"\n", b"\r").split(b"\r"):
        if not segment.strip():
            continue
        if not header_seen and segment.lstrip(_LEADING).startswith(b"MSH"):
            header_seen = True
            segment = segment.lstrip(_LEADING)
            separator = segment[3:4] or b"|"
            fields = segment.split(separator)
            if len(fields) > 6:  # "MSH", MSH-2, MSH-3 ... MSH-7 is the seventh piece
                fields[6] = b""
                segment = separator.join(fields)
        digest.update(segment)
        digest.update(b"\r")
    return digest.hexdigest()


def reused_key(key: str, digest: str, width: int | None) -> str:
    """The key of a message that reuses ``key`` with other content: ``key|#digest``, the key cut
    so that the digest always fits in ``width``."""
    head = key if width is None else key[: width - _DIGEST_TAIL]
    return f"{head}|#{digest}"


@dataclass(frozen=True)
class Held:
    """A stored message that holds a key: its id, when it was received, and its content's digest
    (None for a message that is not HL7v2, whose content is never compared)."""

    id: int
    received_at: datetime
    digest: str | None


#: an insert of a plan: the item's index, its key, the warning on its row
Insert = tuple[int, str | None, str | None]


@dataclass(frozen=True)
class Plan:
    """What each item of a batch is: inserted (``inserts``, in the batch's order), a duplicate
    of a stored message (``stored``) or of an item inserted before it in the batch
    (``earlier``)."""

    inserts: list[Insert] = field(default_factory=list)
    stored: dict[int, Held] = field(default_factory=dict)
    earlier: dict[int, int] = field(default_factory=dict)
    #: every key the plan asked ``known`` about: one not looked up yet may change it
    consulted: set[str] = field(default_factory=set)


def _note(control_id: str | None) -> str:
    return (
        f"control ID (MSH-10) {clean(control_id)} was used before by this sender for a message "
        "with other content: stored as a message of its own, not taken for a resend (a resend "
        "may differ only in MSH-7)"
    )


class Planner:
    """Plans one batch, as often as its known originals grow: item ``n`` has bytes ``raws[n]``
    and cleaned key ``keys[n]`` (None: always stored); ``compare[n]`` says whether a key held
    by other content makes it a message of its own (HL7v2) or a duplicate all the same. Each
    item's digest is computed once, and only when it must be compared."""

    def __init__(
        self,
        raws: Sequence[bytes],
        keys: Sequence[str | None],
        compare: Sequence[bool],
        control_ids: Sequence[str | None],
        width: int | None,
    ) -> None:
        self.raws, self.keys, self.compare = raws, keys, compare
        self.control_ids, self.width = control_ids, width
        self._digests: dict[int, str] = {}

    def digest(self, n: int) -> str:
        if n not in self._digests:
            self._digests[n] = content_digest(self.raws[n])
        return self._digests[n]

    def guard(self, n: int, key: str | None, note: str | None) -> str | None:
        """The guard of an insert ``(n, key, note)``: for an HL7v2 message stored under its own
        key, the key it would have had as a reused one; a message inserted under it later is a
        resend of this one, whether or not the first holder of ``key`` is still stored."""
        if key is None or note is not None or not self.compare[n]:
            return None
        return reused_key(key, self.digest(n), self.width)

    def stored_digest(self, n: int, key: str | None) -> str | None:
        """The digest to store with item ``n`` inserted under ``key``: a large HL7v2
        message's (:data:`DIGEST_STORED_FROM`) that has a key its resends will find; None
        otherwise."""
        if key is None or not self.compare[n] or len(self.raws[n]) < DIGEST_STORED_FROM:
            return None
        return self.digest(n)

    def lookups(self) -> set[str]:
        """Every key a plan may ask about before the batch's items are placed: their keys and
        their guards (a batch of new messages is planned from one lookup of these)."""
        keys = {k for k in self.keys if k is not None}
        guards = (self.guard(n, key, None) for n, key in enumerate(self.keys))
        return keys | {g for g in guards if g is not None}

    def plan(self, known: dict[str, Held]) -> Plan:
        """Plan the batch, given ``known``: the stored holders of keys looked up so far."""
        plan = Plan()
        taken: dict[str, int] = {}  # key -> the item of this batch inserted under it
        for n, key in enumerate(self.keys):
            if key is None:
                plan.inserts.append((n, None, None))
            else:
                self._place(n, key, known, taken, plan)
        return plan

    def _place(
        self, n: int, key: str, known: dict[str, Held], taken: dict[str, int], plan: Plan
    ) -> None:
        candidate, note = key, None
        while True:
            plan.consulted.add(candidate)
            held = known.get(candidate)
            first = taken.get(candidate)
            if held is None and first is None:
                guard = self.guard(n, candidate, note)
                if guard is not None:  # a resend of one stored under a control ID reused?
                    plan.consulted.add(guard)
                    kept = known.get(guard)
                    if kept is not None and kept.digest == self.digest(n):
                        plan.stored[n] = kept
                        return
                plan.inserts.append((n, candidate, note))
                taken[candidate] = n
                return
            if held is not None:
                if not self.compare[n] or self.digest(n) == held.digest:
                    plan.stored[n] = held
                    return
            elif first is not None and (
                not self.compare[n] or self.digest(n) == self.digest(first)
            ):
                plan.earlier[n] = first
                return
            if candidate != key:
                # the digest-keyed key held by other content: only a key built to collide does
                # that; stored without a key (its resends are stored again, nothing is lost)
                plan.inserts.append((n, None, note))
                return
            # the control ID reused: the key with this content's digest
            candidate = reused_key(key, self.digest(n), self.width)
            note = _note(self.control_ids[n])


#: a key's holder, its bytes read only where they are compared (a small HL7v2 message; a large
#: one's digest is stored with it since migration 0027, or hashed outside the transaction:
#: :class:`Unhashed`). On PostgreSQL each holder found is locked ``FOR KEY SHARE`` until the
#: batch commits: a purge's DELETE of it waits for the batch, and a holder being deleted is
#: waited for, then not found (the batch plans without it). So a message stored under a reused
#: key commits before its key's holder can be purged, and every snapshot sees one or the other:
#: a resend at another node that no longer finds the holder finds the reused message by its
#: guard. Before, a resend there between the purge's commit and the batch's found neither and
#: was stored again. It is taken only where a batch holds a resend or a control ID reused, and
#: waits for no one but a DELETE: every lock the engine takes on a message's row otherwise (the
#: worker's claim and finish, a delivery's settling, an operator's replay or match) is FOR NO KEY
#: UPDATE, which still excludes the others and the purge but not this (until the evening of 7
#: December they were FOR UPDATE, and a resend's ACK waited for the worker's transaction).
_HOLDERS = (
    select(
        messages.c.dedupe_key,
        messages.c.id,
        messages.c.kind,
        messages.c.received_at,
        messages.c.size,
        messages.c.digest,
        case(
            (
                and_(
                    messages.c.kind == "hl7v2",
                    messages.c.digest.is_(None),
                    messages.c.size < DIGEST_STORED_FROM,
                ),
                messages.c.raw,
            )
        ).label("raw"),
    )
    .where(in_list(messages.c.dedupe_key, "keys"))
    .with_for_update(read=True, key_share=True, of=messages)
)

#: a large HL7v2 message stored before migration 0027 (no digest in its row): its digest once
#: hashed outside a write transaction, by (id, received_at, size); bounded, dropped whole when
#: full (a resend of such a message is rare, and one hashed again costs time, not a result)
_HASHED: dict[tuple[int, datetime, int], str] = {}
_HASHED_MAX = 256


class Unhashed(Exception):
    """The holders found include large HL7v2 messages stored before migration 0027 whose
    digests are not known yet (``ids``): the caller ends its write transaction, has them
    hashed (:func:`hash_originals`) and tries again. Hashing one in the transaction held
    SQLite's one writer's lock, and with it every other ACK, for 0.4 s a 100 MB."""

    def __init__(self, ids: list[int]) -> None:
        super().__init__(f"{len(ids)} stored message(s) to hash outside the transaction")
        self.ids = ids


def holders(conn: Connection, keys: Iterable[str], *, inline: bool = False) -> dict[str, Held]:
    """The stored messages of these dedupe keys, by key, each with its content's digest (see
    ``_HOLDERS`` for the lock each takes on PostgreSQL). A large one without a stored digest
    raises :class:`Unhashed` unless hashed before, or ``inline`` (its bytes read and hashed
    here)."""
    known, pending = {}, []
    for row in conn.execute(_HOLDERS, {"keys": list(keys)}):
        held = (row.id, aware(row.received_at), row.size)
        digest = row.digest or _HASHED.get(held)
        if digest is None and row.kind == "hl7v2":  # other kinds are never compared
            if row.raw is not None:
                digest = content_digest(bytes(row.raw))
            elif inline:
                digest = _hash_stored(conn, [row.id]).get(row.id)
            else:
                pending.append(row.id)
        known[row.dedupe_key] = Held(row.id, held[1], digest)
    if pending:
        raise Unhashed(pending)
    return known


def _hash_stored(conn: Connection, ids: list[int]) -> dict[int, str]:
    """The digests of these large HL7v2 messages (not of other kinds: never compared), hashed
    from their stored bytes and remembered in ``_HASHED``."""
    query = select(messages.c.id, messages.c.received_at, messages.c.size, messages.c.raw).where(
        in_list(messages.c.id, "ids"), messages.c.kind == "hl7v2"
    )
    hashed = {}
    for row in conn.execute(query, {"ids": ids}):
        if len(_HASHED) >= _HASHED_MAX:
            _HASHED.clear()
        digest = content_digest(bytes(row.raw))
        _HASHED[(row.id, aware(row.received_at), row.size)] = digest
        hashed[row.id] = digest
    return hashed


def hash_originals(db_engine: Engine, ids: list[int]) -> None:
    """Hash the originals :class:`Unhashed` named, outside any write transaction (on SQLite a
    read, which takes no writer's lock): the next lookup finds their digests."""
    with db_engine.connect() as conn:
        _hash_stored(conn, ids)


def after_receipt_notes(new: BindParameter[str]) -> ColumnElement[str]:
    """A finished message's warnings: its receipt's (a control ID reused, engine/store/resends.py)
    and then its processing's. A message is finished once (only its claim's owner finishes it),
    so no line is written twice."""
    return case(
        (messages.c.warnings.is_(None), new),
        (new.is_(None), messages.c.warnings),
        else_=messages.c.warnings + literal("\n") + new,
    )
