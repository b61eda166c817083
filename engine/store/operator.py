"""What an operator does to a stored message: replay it, or resend its deliveries.

**Replay** receives the message's bytes again, as a new message (``channel`` replay, linked by
``replay_of``) that goes through the whole flow: routed again with the routes of today and mapped
again with the mappings of today, to every route that takes it. The copy keeps the original's
control ID, type and sender (only its dedupe key stays empty, so it is never taken for a
duplicate of the original), and the original is settled as ``replayed`` (its reason names the
copy): ``engine messages replay --state dead`` run again finds nothing to replay instead of making
one more copy each time. A ``replayed`` message is refused a second replay and a resend, naming
its copy: the copy is the live one (before, each replay of the original made one more copy, and a
resend put the original back to ``dead`` for the next ``replay --state dead``). The original's
deliveries still queued (a destination down and retrying) are settled ``resent``: the copy's
replace them, so a destination that was down gets the message once, not both; while that would
reorder a patient's messages or one may be on its way, the replay is refused.

**Resend** sends a delivery's payload again, as it was made, to its destination: by default each
dead delivery of the message and each that waits for its patient (``needs-patient``: the EHR has
registered the patient since), or every delivery to one named destination (even one delivered:
the operator asked). Each resend is a new delivery row linked to the one it replaces
(``resend_of``), which becomes ``resent`` (settled, no longer dead), queued in per-patient order
behind what that destination already has for the patient. A message that was ``dead``,
``needs-patient`` or ``delivered`` is ``routed`` again until the resends settle it. While a
resend of a destination is still queued, resending it again makes nothing (and says so), as does
a resend when nothing failed: repeating a resend never multiplies copies.

**Match** (documents, issue 12) places a document whose patient a destination did not know
(its deliveries there ``needs-patient``): the ``documents`` row takes the patient the operator
names, and the document's message is replayed with the new metadata: a new message of kind
``document`` whose raw is the updated :class:`~engine.documents.model.DocumentInfo`, ``replay_of``
the old one, which becomes ``replayed``; the waiting deliveries become ``resent``. The copy goes
through routing and mapping again (the new MRN in the DocumentReference or MDM), and, as for any
replay (channel ``replay``), not to the destinations that already had the document. The document
row then points at the copy, so a second match or a resend acts on the live message.

Each replay, resend and match is recorded in the audit trail (engine/store/audit.py) in the
transaction that makes it; a refused one (unknown destination, a message still being processed
or already replayed) is recorded as refused. Lists and views of documents are recorded too: their
metadata names a patient.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update

from engine.documents.model import DocumentInfo
from engine.errors import EngineError
from engine.store.audit import audit
from engine.store.clean import clean
from engine.store.db import Repository, utcnow
from engine.store.deliveries import NewDelivery, lock_queues, queue_deliveries
from engine.store.documents import dedupe_key
from engine.store.messages import delivered_before
from engine.store.replays import queues_of, supersede_queued
from engine.store.search import DocumentQuery, document_lines, document_view
from engine.store.tables import deliveries, documents, messages
from engine.store.views import (
    DocumentLine,
    DocumentMatched,
    DocumentView,
    ResendOutcome,
)

__all__ = [
    "ActionRefused",
    "DocumentActions",
    "InvalidIdentifier",
    "Operator",
    "Replayed",
    "UnknownDestination",
    "Who",
]

#: a message in these states has not been through processing yet: nothing to replay or resend
_UNFINISHED = ("received", "processing")
#: delivery states still in a queue
_QUEUED = ("pending", "waiting")
#: delivery states a resend takes by default: given up, or waiting for the patient
_FAILED = ("dead", "needs-patient")
#: message states a resend puts back to ``routed``
_SETTLED = ("dead", "delivered", "needs-patient")


class ActionRefused(EngineError):
    """A replay or resend the message's state does not allow (the message says why)."""


class InvalidIdentifier(ActionRefused):
    """A match to an MRN or authority that cannot be one (empty, too long, a delimiter)."""


class UnknownDestination(ActionRefused):
    """A resend to a destination the message never had (the message names those it has)."""


@dataclass(frozen=True)
class Who:
    """Who asks: the token's subject (API) or the OS user (CLI), and from where."""

    actor: str
    source: str  # cli, api
    peer: str | None = None


@dataclass(frozen=True)
class Replayed:
    """A replay: the new message's id, and the state the original was in."""

    message_id: int
    replay_of: int
    original_state: str


#: the columns a replay copies from its original (besides the raw bytes)
_COPIED = (
    "kind",
    "size",
    "raw",
    "peer",
    "control_id",
    "message_type",
    "trigger",
    "structure",
    "sending_application",
    "sending_facility",
    "patient_key",
)
_ORIGINAL = select(messages.c.id, messages.c.state, *(messages.c[c] for c in _COPIED)).where(
    messages.c.id == bindparam("mid")
)
_DELIVERY_COLUMNS = select(
    deliveries.c.id,
    deliveries.c.destination,
    deliveries.c.route,
    deliveries.c.kind,
    deliveries.c.content_type,
    deliveries.c.payload,
    deliveries.c.patient_key,
    deliveries.c.state,
).where(deliveries.c.message_id == bindparam("mid"))
_MARK_RESENT = (
    update(deliveries)
    .where(deliveries.c.id.in_(bindparam("ids", expanding=True)))
    .where(deliveries.c.state.in_(("dead", "delivered", "needs-patient")))
    .values(state="resent", claimed_until=None)
)


_NEWEST_COPY = (
    select(messages.c.id)
    .where(messages.c.replay_of == bindparam("mid"))
    .order_by(messages.c.id.desc())
    .limit(1)
)


def _lock_message(conn: Connection, message_id: int) -> Any | None:
    """The message's row, locked until the transaction ends (PostgreSQL; SQLite has one writer)."""
    return conn.execute(
        _ORIGINAL.with_for_update(key_share=True), {"mid": message_id}
    ).one_or_none()


_DOCUMENTS_OF = (
    select(documents.c.id)
    .where(documents.c.message_id == bindparam("mid"))
    .order_by(documents.c.id)
    .with_for_update()
)


def _lock_documents_of(conn: Connection, message_id: int) -> None:
    """Lock the document rows of a document's message before its own row (PostgreSQL). A
    match of the document locks its row, then the message's: a replay that locked the
    message first and the document at its end could wait for the match while the match
    waited for it, until PostgreSQL's deadlock check failed one of them. Nothing is locked
    for a message that carries no document."""
    conn.execute(_DOCUMENTS_OF, {"mid": message_id})


def _insert_replay(
    conn: Connection,
    copy: dict[str, Any],
    old_id: int,
    old_state: str,
    *,
    channel: str,
    now: datetime,
    why: str = "",
) -> int:
    """Receive ``copy`` (the old message's copied columns) again as a new message, ``replay_of``
    the old one, which becomes ``replayed`` naming the new one (``why`` before it); the new id.
    One place for a replay and a match to a patient, so both leave the same trail."""
    new_id = int(
        conn.execute(
            insert(messages)
            .values(
                **copy,
                received_at=now,
                channel=channel,
                replay_of=old_id,
                dedupe_key=None,
                state="received",
                updated_at=now,
            )
            .returning(messages.c.id)
        ).scalar_one()
    )
    conn.execute(
        update(messages)
        .where(messages.c.id == old_id)
        .values(
            state="replayed",
            reason=f"{why}replayed as message {new_id} (was {old_state})",
            updated_at=now,
        )
    )
    return new_id


def _refuse_replayed(conn: Connection, message_id: int, state: str) -> None:
    """ActionRefused for a message already replayed, naming its (newest) copy: the live one."""
    if state != "replayed":
        return
    copy = conn.execute(_NEWEST_COPY, {"mid": message_id}).scalar_one_or_none()
    as_ = f"as message {copy}" if copy is not None else "(its copy is gone)"
    raise ActionRefused(
        f"message {message_id} was already replayed {as_}: replay or resend that one"
    )


#: an MRN or assigning authority as a patient identifier may hold it: printable, none of the
#: HL7 v2 delimiters (it goes into PID-3 of an MDM) nor ``|`` (the patient key's separator)
_IDENTIFIER = re.compile(r"[^\x00-\x1f\x7f-\x9f|^~\\&]{1,64}")
_DOCUMENT_ROW = select(documents.c.id, documents.c.message_id).where(
    documents.c.id == bindparam("did")
)
_WAITING_STATES = ("needs-patient",)


class DocumentActions(Repository):
    """Matching a document to its patient, listing and showing documents; each recorded in
    the audit trail (a part of :class:`~engine.store.SqlMessageStore`, beside the
    :class:`Operator`, whose ``resend_document`` resends one)."""

    def match_document(
        self, document_id: int, mrn: str, authority: str | None = None, *, who: Who
    ) -> DocumentMatched:
        """Record ``mrn`` (and ``authority``; the document's own when None) as the document's
        patient and replay its message with the new metadata (the module docstring says how).
        KeyError for an unknown document; :class:`ActionRefused` for an identifier that cannot
        be one, the patient it already has, a message not processed yet or already replayed,
        a delivery still under way, or nothing waiting for its patient."""
        mid: int | None = None
        try:
            if not _IDENTIFIER.fullmatch(mrn) or (
                authority and not _IDENTIFIER.fullmatch(authority)
            ):
                raise InvalidIdentifier(
                    "an MRN (and its authority) must be 1 to 64 printable characters, "
                    "without | ^ ~ \\ &"
                )
            with self._tx() as conn:
                doc = conn.execute(
                    _DOCUMENT_ROW.with_for_update(), {"did": document_id}
                ).one_or_none()
                if doc is None:
                    raise KeyError(document_id)
                mid = doc.message_id
                done = self._match(conn, document_id, mid, mrn, authority)
                audit(
                    conn,
                    action="match-document",
                    **_who(who),
                    message_id=done.message_id,
                    outcome="ok",
                    detail=(
                        f"document {document_id}: message {done.replay_of} replayed as "
                        f"{done.message_id} for another patient; waiting at "
                        f"{', '.join(done.resent)} (resent)"
                    ),
                )
        except (KeyError, ActionRefused) as exc:
            _document_refused(self, "match-document", who, document_id, mid, exc)
            raise
        return done

    def _match(
        self,
        conn: Connection,
        document_id: int,
        mid: int | None,
        mrn: str,
        authority: str | None,
    ) -> DocumentMatched:
        """The match, in the caller's transaction (the document's row locked): what waits for
        the patient, the document for its new patient, and the message replayed for it."""
        message, waiting = _waiting_for_patient(conn, document_id, mid)
        matched, key = _for_new_patient(conn, document_id, message, mrn, authority)
        new_id = _replay_matched(conn, document_id, message, matched, key, waiting)
        dests = tuple(sorted({r.destination for r in waiting}))
        return DocumentMatched(document_id, new_id, message.id, dests)

    def list_documents(self, query: DocumentQuery, who: Who) -> list[DocumentLine]:
        """The documents that match, newest first; the list is recorded in the audit trail
        (which filters, how many; never the MRN asked for)."""
        with self._tx() as conn:
            lines = document_lines(conn, query)
            audit(
                conn,
                action="list-documents",
                **_who(who),
                message_id=None,
                outcome="ok",
                detail=f"{len(lines)} shown; {query.describe()}",
            )
        return lines

    def show_document(self, document_id: int, who: Who) -> DocumentView | None:
        """One document's metadata and deliveries, or None; the view is audited (``refused``
        when there is no such document)."""
        with self._tx() as conn:
            view = document_view(conn, document_id)
            audit(
                conn,
                action="view-document",
                **_who(who),
                message_id=view.message_id if view is not None else None,
                outcome="ok" if view is not None else "refused",
                detail=f"document {document_id}" if view else f"no document {document_id}",
            )
        return view


class Operator(Repository):
    """Replaying messages and resending deliveries, each recorded in the audit trail."""

    def replay_message(self, message_id: int, who: Who, *, everywhere: bool = False) -> Replayed:
        """Receive a stored message again as a new message and settle the original as
        ``replayed``. The copy goes only to destinations the original (or an earlier replay of
        it) was not delivered to, unless ``everywhere`` (channel ``replay-all``; see
        engine/store/messages.py ``_skip_delivered_before``). KeyError when there is no such
        message; :class:`ActionRefused` while it is still received or being processed (the copy
        would race it), or once it is replayed (the message names the copy).

        The original's deliveries still queued (a destination down and retrying) are settled
        ``resent``: the copy replaces them, and each destination gets the message once (before,
        both went out once the destination was back). The replay is refused while one of them
        is claimed by a dispatcher, has a later message for the patient waiting behind it (the
        copy would follow it), or goes where another route of the message was delivered
        (:func:`~engine.store.replays.supersede_queued`)."""
        now = self.now()  # (promotions are due in the database's clock: engine/store/clock.py)
        try:
            with self._tx() as conn:
                queues = queues_of(conn, message_id)
                lock_queues(conn, queues)  # before the message's row, as the dispatcher does
                _lock_documents_of(conn, message_id)  # and its document's, as a match does
                row = _lock_message(conn, message_id)
                if row is None:
                    raise KeyError(message_id)
                current = queues_of(conn, message_id)
                if not current <= queues:  # a resend came between
                    raise ActionRefused(
                        f"message {message_id} was resent while it was being replayed: try again"
                    )
                if row.state in _UNFINISHED:
                    raise ActionRefused(
                        f"message {message_id} is {row.state}: it has not been processed yet"
                    )
                _refuse_replayed(conn, message_id, row.state)
                skipped = () if everywhere else delivered_before(conn, message_id)
                superseded, why_not = supersede_queued(conn, message_id, now, current, skipped)
                if why_not:
                    raise ActionRefused(f"message {message_id} cannot be replayed now: {why_not}")
                copy = {c: getattr(row, c) for c in _COPIED}
                channel = "replay-all" if everywhere else "replay"
                new_id = _insert_replay(conn, copy, message_id, row.state, channel=channel, now=now)
                if row.kind == "document":  # the document goes with its live message
                    conn.execute(
                        update(documents)
                        .where(documents.c.message_id == message_id)
                        .values(message_id=new_id, updated_at=now)
                    )
                audit(
                    conn,
                    action="replay",
                    **_who(who),
                    message_id=message_id,
                    outcome="ok",
                    detail=f"new message {new_id}; was {row.state}"
                    + (f"; queued to {', '.join(superseded)}: replaced" if superseded else ""),
                )
        except (KeyError, ActionRefused) as exc:
            self._refused("replay", who, message_id, exc)
            raise
        return Replayed(int(new_id), message_id, row.state)

    def resend(self, message_id: int, who: Who, destination: str | None = None) -> ResendOutcome:
        """Queue a message's dead and needs-patient deliveries again (or every delivery to
        ``destination``), each
        linked to the one it replaces, which becomes ``resent``. KeyError when there is no such
        message; :class:`ActionRefused` for a destination the message never had, a message with
        no deliveries, or one replayed (its copy is the live one: the message names it)."""
        now = self.now()  # the copies are due now in the database's clock (engine/store/clock.py)
        try:
            with self._tx() as conn:
                outcome = self._resend(conn, message_id, destination, now)
                audit(
                    conn,
                    action="resend",
                    **_who(who),
                    message_id=message_id,
                    outcome="ok",
                    detail=_resend_detail(destination, outcome),
                )
        except (KeyError, ActionRefused) as exc:
            self._refused("resend", who, message_id, exc)
            raise
        return outcome

    def _resend(
        self, conn: Connection, message_id: int, destination: str | None, now: datetime
    ) -> ResendOutcome:
        """The resend, in the caller's transaction."""
        # the queues first, then the message row: the dispatcher settles a delivery (its queue's
        # lock) before it settles the message (the row), so taking them in that order cannot
        # deadlock against it
        rows = conn.execute(_DELIVERY_COLUMNS, {"mid": message_id}).all()
        lock_queues(conn, {(r.destination, r.patient_key) for r in rows})
        message = _lock_message(conn, message_id)
        if message is None:
            raise KeyError(message_id)
        _refuse_replayed(conn, message_id, message.state)
        rows = conn.execute(_DELIVERY_COLUMNS.order_by(deliveries.c.id), {"mid": message_id}).all()
        current = [r for r in rows if r.state != "resent"]
        if not current:
            raise ActionRefused(
                f"message {message_id} has no deliveries (state {message.state}): "
                "replay it to route it again"
            )
        targets, note = _targets(message_id, current, destination)
        if not targets:
            return ResendOutcome(message_id, (), note)
        conn.execute(_MARK_RESENT, {"ids": [r.id for r in targets]})
        new = [
            NewDelivery(
                r.destination,
                r.route,
                r.kind,
                r.content_type,
                bytes(r.payload),
                r.patient_key,
                resend_of=r.id,
            )
            for r in targets
        ]
        queue_deliveries(conn, [(message_id, d) for d in new], now)
        if message.state in _SETTLED:
            conn.execute(
                update(messages)
                .where(messages.c.id == message_id)
                .values(state="routed", updated_at=now)
            )
        made = conn.execute(
            select(deliveries.c.destination, deliveries.c.id, deliveries.c.resend_of)
            .where(deliveries.c.resend_of.in_([r.id for r in targets]))
            .order_by(deliveries.c.id)
        ).all()
        return ResendOutcome(message_id, tuple((d, int(i), int(o)) for d, i, o in made))

    def resend_document(
        self, document_id: int, who: Who, destination: str | None = None
    ) -> ResendOutcome:
        """Resend the deliveries of the document's message that failed or wait for the patient
        (or its delivery to ``destination``): :meth:`resend`. KeyError for an unknown
        document (or one whose message is gone)."""
        with self.db_engine.connect() as conn:
            doc = conn.execute(_DOCUMENT_ROW, {"did": document_id}).one_or_none()
        if doc is None or doc.message_id is None:
            _document_refused(self, "resend", who, document_id, None, KeyError(document_id))
            raise KeyError(document_id)
        return self.resend(int(doc.message_id), who, destination)

    _RAW = select(messages.c.raw).where(messages.c.id == bindparam("mid"))

    def read_payload(self, message_id: int, who: Who) -> bytes | None:
        """A message's bytes exactly as they arrived, or None; the read is recorded in the
        audit trail in the same transaction (``refused`` when there is no such message)."""
        with self._tx() as conn:
            value = conn.execute(self._RAW, {"mid": message_id}).scalar_one_or_none()
            audit(
                conn,
                action="view-payload",
                **_who(who),
                message_id=message_id,
                outcome="ok" if value is not None else "refused",
                detail=None if value is not None else "no such message",
            )
        return bytes(value) if value is not None else None

    def _refused(self, action: str, who: Who, message_id: int, exc: Exception) -> None:
        """Record a refused replay or resend (its own transaction: the action's rolled back)."""
        _record_refused(self, action, who, message_id, exc, f"no message {message_id}")


def _document_refused(
    repo: Repository,
    action: str,
    who: Who,
    document_id: int,
    message_id: int | None,
    exc: Exception,
) -> None:
    """Record a refused document action (its own transaction: the action's rolled back)."""
    _record_refused(repo, action, who, message_id, exc, f"no document {document_id}")


def _record_refused(
    repo: Repository,
    action: str,
    who: Who,
    message_id: int | None,
    exc: Exception,
    missing: str,
) -> None:
    """A refusal in the audit trail, in a transaction of its own: ``missing`` when the id was
    unknown (``KeyError``), else the refusal's own words."""
    reason = missing if isinstance(exc, KeyError) else str(exc)
    with repo._tx() as conn:
        audit(
            conn,
            action=action,
            **_who(who),
            message_id=message_id,
            outcome="refused",
            detail=reason,
        )


def _who(who: Who) -> dict[str, Any]:
    return {"actor": who.actor, "source": who.source, "peer": who.peer}


def _targets(
    message_id: int, current: Sequence[Any], destination: str | None
) -> tuple[list[Any], str]:
    """The deliveries to resend, or none and why."""
    if destination is not None:
        named = [r for r in current if r.destination == destination]
        if not named:
            known = ", ".join(sorted({r.destination for r in current}))
            raise UnknownDestination(
                f"message {message_id} has no destination {destination!r} (it has: {known})"
            )
        queued = [r for r in named if r.state in _QUEUED]
        if queued:
            return [], f"{destination}: already queued ({queued[0].state}), nothing resent"
        return named, ""
    dead = [r for r in current if r.state in _FAILED]
    if dead:
        return dead, ""
    waiting = sorted({r.destination for r in current if r.state in _QUEUED})
    if waiting:
        return [], f"nothing dead; still queued: {', '.join(waiting)}"
    return [], "nothing dead: every delivery was delivered (name a destination to send it again)"


def _resend_detail(destination: str | None, outcome: ResendOutcome) -> str:
    target = f"destination {destination}" if destination else "failed deliveries"
    if not outcome.queued:
        return f"{target}: {outcome.note}"
    made = ", ".join(f"{d} (delivery {i} replaces {o})" for d, i, o in outcome.queued)
    return f"{target}: {made}"


def _waiting_for_patient(
    conn: Connection, document_id: int, mid: int | None
) -> tuple[Any, list[Any]]:
    """A document's message (locked) and its deliveries that wait for the patient;
    ActionRefused when there is nothing to match (purged, not processed yet, replayed, still
    being delivered, nothing waiting)."""
    if mid is None:
        raise ActionRefused(f"document {document_id} has no message any more (purged)")
    message = _lock_message(conn, mid)
    if message is None:
        raise ActionRefused(f"document {document_id} has no message any more (purged)")
    if message.state in _UNFINISHED:
        raise ActionRefused(
            f"document {document_id}: its message {mid} has not been processed yet "
            f"(state {message.state})"
        )
    _refuse_replayed(conn, mid, message.state)
    rows = conn.execute(_DELIVERY_COLUMNS.order_by(deliveries.c.id), {"mid": mid}).all()
    current = [r for r in rows if r.state != "resent"]
    queued = sorted({r.destination for r in current if r.state in _QUEUED})
    if queued:
        raise ActionRefused(
            f"document {document_id} is still being delivered to {', '.join(queued)}: "
            "match it once that settles"
        )
    waiting = [r for r in current if r.state in _WAITING_STATES]
    if not waiting:
        raise ActionRefused(
            f"document {document_id}: nothing waits for its patient "
            f"(message {mid} is {message.state})"
        )
    return message, waiting


def _for_new_patient(
    conn: Connection, document_id: int, message: Any, mrn: str, authority: str | None
) -> tuple[DocumentInfo, str]:
    """The document's metadata for the new patient and its dedupe key there; ActionRefused
    when it is that patient's already, or that patient has the same bytes as another
    document."""
    info = DocumentInfo.from_json(bytes(message.raw))
    new_authority = info.patient_authority if authority is None else authority
    if (mrn, new_authority) == (info.patient_mrn, info.patient_authority):
        raise ActionRefused(
            f"document {document_id} is already for that patient: resend it instead "
            "(once the destination knows the patient)"
        )
    # the same bytes for the same patient are one document (engine/store/documents.py):
    # the key moves to the new patient, unless that patient has these bytes already
    key = dedupe_key(info.sha256, new_authority, mrn)
    other = conn.execute(
        select(documents.c.id).where(documents.c.dedupe_key == key, documents.c.id != document_id)
    ).scalar_one_or_none()
    if other is not None:
        raise ActionRefused(
            f"document {document_id}: the same bytes are stored for that patient already, "
            f"as document {other} (resend that one if it waits)"
        )
    return replace(info, patient_mrn=mrn, patient_authority=new_authority), key


def _replay_matched(
    conn: Connection,
    document_id: int,
    message: Any,
    matched: DocumentInfo,
    key: str,
    waiting: Sequence[Any],
) -> int:
    """Write the match: a replay of the message with the matched metadata (received again,
    so it is routed for the new patient), the waiting deliveries resent, the old message
    replayed, the document moved to the new patient and message; the new message's id."""
    mid = message.id
    raw = matched.to_json()
    now = utcnow()
    copy = {c: getattr(message, c) for c in _COPIED}
    copy.update(raw=raw, size=len(raw), patient_key=clean(matched.patient_key, 255))
    # channel "replay": engine/store/messages.py skips the destinations that had it
    new_id = _insert_replay(
        conn,
        copy,
        mid,
        message.state,
        channel="replay",
        now=now,
        why="matched to another patient: ",
    )
    conn.execute(
        update(deliveries)
        .where(deliveries.c.id.in_([r.id for r in waiting]))
        .where(deliveries.c.state.in_(_WAITING_STATES))
        .values(state="resent", claimed_until=None)
    )
    conn.execute(
        update(documents)
        .where(documents.c.id == document_id)
        .values(
            patient_mrn=matched.patient_mrn,
            patient_authority=matched.patient_authority,
            dedupe_key=key,
            message_id=new_id,
            updated_at=now,
        )
    )
    return new_id
