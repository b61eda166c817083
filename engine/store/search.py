"""Finding messages: the operator's list, with filters and keyset paging, and why each is stuck.

A search is newest first (by id, which grows with ``received_at``) and pages by keyset
(``before``: the last id of the previous page), so a page costs the same on a million rows as on
a hundred: no OFFSET. Each filter has an index to stand on:

========================  =====================================================================
state                     ``ix_messages_state (state, id)``
since / until             ``ix_messages_received (received_at, id)``: one seek turns each bound
                          into an id bound too, then a range of the primary key
control ID                ``ix_messages_control``
patient (``AUTH|MRN``)    ``ix_messages_patient (patient_key, state, id)``
patient (bare ``MRN``)    ``ix_messages_mrn (patient_mrn(patient_key), id)``: the MRN part of
                          the key (:class:`~engine.store.tables.patient_mrn`)
========================  =====================================================================

The time bounds may be in any zone: they are turned to UTC, as the store keeps times, so SQLite
(which compares the text of the wall time) and PostgreSQL give the same answer.

Type, trigger and sender are checked on the rows the index range gives. A bare MRN (no
assigning authority) matches any authority's patient key ending in ``|MRN``, found through the
MRN part's own index (a ``LIKE '%|MRN'`` alone would read the whole patient index: 0.6 s and
more on a million messages).

Each line names the destinations that fail the message (dead, or retrying with an error) and
their last error, read in one query for the page.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, and_, bindparam, or_, select

from engine.store.db import Repository, aware
from engine.store.deliveries import deliveries_of
from engine.store.lists import in_list
from engine.store.tables import deliveries, documents, messages, patient_mrn
from engine.store.views import DocumentLine, DocumentView, MessageLine

__all__ = [
    "MESSAGE_STATES",
    "DocumentQuery",
    "MessageQuery",
    "MessageSearch",
    "document_lines",
    "document_view",
]

#: every state a message can be in (tables.py draws them)
MESSAGE_STATES = (
    "received",
    "processing",
    "routed",
    "delivered",
    "dead",
    "error",
    "unrouted",
    "replayed",
    "needs-patient",
)


@dataclass(frozen=True)
class MessageQuery:
    """What to look for; every field is optional and they combine with AND."""

    state: str | None = None
    message_type: str | None = None
    trigger: str | None = None
    #: MSH-3, MSH-4 or ``MSH-3^MSH-4``
    sender: str | None = None
    #: the patient: ``AUTHORITY|MRN`` (PID-3.4 and PID-3.1), or a bare MRN of any authority
    mrn: str | None = None
    control_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    #: keyset paging: only messages with a smaller id (the last id of the previous page)
    before: int | None = None
    limit: int = 50

    def __post_init__(self) -> None:
        """One reading of the filters for the CLI and the API: a state in any case (``DEAD``),
        and a type as the list shows it (``ADT^A01``) is a type and a trigger; a trigger given
        too must be the same one. ValueError names what is wrong."""
        if self.state is not None:
            object.__setattr__(self, "state", self.state.lower())
        if self.message_type is not None and "^" in self.message_type:
            kind, _, its_trigger = self.message_type.partition("^")
            if self.trigger is not None and self.trigger.upper() != its_trigger.upper():
                raise ValueError(f"type {self.message_type} and trigger {self.trigger} disagree")
            object.__setattr__(self, "message_type", kind or None)
            object.__setattr__(self, "trigger", its_trigger or None)
        if self.state is not None and self.state not in MESSAGE_STATES:
            raise ValueError(f"unknown state {self.state!r} (states: {', '.join(MESSAGE_STATES)})")


_LINE = select(
    messages.c.id,
    messages.c.received_at,
    messages.c.channel,
    messages.c.control_id,
    messages.c.message_type,
    messages.c.trigger,
    messages.c.state,
    messages.c.sending_application,
    messages.c.sending_facility,
    messages.c.reason,
    messages.c.replay_of,
)
#: the first message received at or after a time: one seek in ``ix_messages_received``
_FIRST_FROM = (
    select(messages.c.id)
    .where(messages.c.received_at >= bindparam("at"))
    .order_by(messages.c.received_at, messages.c.id)
    .limit(1)
)
#: ids follow received_at only roughly: a writer takes its time before it waits for the lock,
#: so a message received a little later may get a smaller id. The id bounds keep this margin
#: (far more than a write transaction lasts); the time bounds themselves are exact.
ID_SKEW = timedelta(minutes=5)
_FAILING = (
    select(
        deliveries.c.message_id,
        deliveries.c.destination,
        deliveries.c.state,
        deliveries.c.last_error,
    )
    .where(
        or_(
            deliveries.c.state.in_(("dead", "needs-patient")),
            and_(deliveries.c.state == "pending", deliveries.c.last_error.is_not(None)),
        )
    )
    .order_by(deliveries.c.id)
)


_LABELS = {"dead": "dead", "needs-patient": "needs patient"}


def _like_suffix(value: str) -> str:
    """A LIKE pattern for keys ending in ``|value`` (its wildcards escaped with ``\\``)."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%|{escaped}"


def _sender(value: str) -> ColumnElement[bool]:
    app, sep, facility = value.partition("^")
    if sep:
        return and_(messages.c.sending_application == app, messages.c.sending_facility == facility)
    return or_(messages.c.sending_application == value, messages.c.sending_facility == value)


def _where(q: MessageQuery) -> list[ColumnElement[bool]]:
    """The conditions of a query, each on the column its index leads with."""
    conditions: list[ColumnElement[bool]] = []
    if q.state:
        conditions.append(messages.c.state == q.state)
    if q.message_type:
        conditions.append(messages.c.message_type == q.message_type.upper())
    if q.trigger:
        conditions.append(messages.c.trigger == q.trigger.upper())
    if q.sender:
        conditions.append(_sender(q.sender))
    if q.control_id:
        conditions.append(messages.c.control_id == q.control_id)
    if q.mrn:
        if "|" in q.mrn:
            conditions.append(messages.c.patient_key == q.mrn)
        else:  # ix_messages_mrn finds them; the LIKE keeps the match exact (ends with |MRN)
            conditions.append(patient_mrn(messages.c.patient_key) == q.mrn)
            conditions.append(messages.c.patient_key.like(_like_suffix(q.mrn), escape="\\"))
    if q.before is not None:
        conditions.append(messages.c.id < q.before)
    return conditions


def _utc(value: datetime) -> datetime:
    """A bound in UTC, as the store keeps times (a naive one is taken as UTC already). SQLite
    keeps the wall time and drops the offset, so it compares the bound's wall time with the
    stored UTC one: 02:11 New York was taken for 02:11Z, five hours early."""
    return aware(value).astimezone(UTC)


def _time_bounds(conn: Connection, q: MessageQuery) -> list[ColumnElement[bool]]:
    """since/until as id bounds as well as time bounds: the id bound lets the query walk a range
    of the primary key (newest first, stopping at the limit) instead of sorting every row in
    the time range."""
    conditions: list[ColumnElement[bool]] = []
    if q.since is not None:
        since = _utc(q.since)
        first = conn.execute(_FIRST_FROM, {"at": since - ID_SKEW}).scalar_one_or_none()
        if first is None:
            return [messages.c.id < 0]  # nothing received since then
        conditions += [messages.c.id >= first, messages.c.received_at >= since]
    if q.until is not None:
        until = _utc(q.until)
        after = conn.execute(_FIRST_FROM, {"at": until + ID_SKEW}).scalar_one_or_none()
        if after is not None:
            conditions.append(messages.c.id < after)
        conditions.append(messages.c.received_at < until)
    return conditions


def _failing(conn: Connection, ids: Sequence[int]) -> dict[int, list[str]]:
    """Per message: ``destination (dead|needs patient|retrying): last error`` of each delivery
    that is dead, waits for its patient, or is retrying."""
    out: dict[int, list[str]] = {}
    if not ids:
        return out
    for r in conn.execute(_FAILING.where(deliveries.c.message_id.in_(list(ids)))):
        error = (r.last_error or "").splitlines()[0][:200] if r.last_error else "no error recorded"
        label = _LABELS.get(r.state, "retrying")
        out.setdefault(r.message_id, []).append(f"{r.destination} ({label}): {error}")
    return out


def _line(row: Any, failing: list[str]) -> MessageLine:
    sender = "^".join(p or "" for p in (row.sending_application, row.sending_facility))
    return MessageLine(
        id=row.id,
        received_at=aware(row.received_at),
        channel=row.channel,
        control_id=row.control_id,
        message_type=row.message_type,
        trigger=row.trigger,
        state=row.state,
        sender=sender.strip("^") or None,
        reason=row.reason,
        failing=tuple(failing),
        replay_of=row.replay_of,
    )


#: the states of the messages listed, by id
_STATES_OF = select(messages.c.id, messages.c.state).where(in_list(messages.c.id))


class MessageSearch(Repository):
    """The operator's message list."""

    def search(self, query: MessageQuery) -> list[MessageLine]:
        """The messages that match, newest first, at most ``query.limit`` (the next page:
        ``before`` = the last id of this one)."""
        with self.db_engine.connect() as conn:
            conditions = _where(query) + _time_bounds(conn, query)
            statement: Select[Any] = (
                _LINE.where(*conditions).order_by(messages.c.id.desc()).limit(query.limit)
            )
            rows = conn.execute(statement).all()
            failing = _failing(conn, [r.id for r in rows])
        return [_line(r, failing.get(r.id, [])) for r in rows]

    def states_of(self, ids: Sequence[int]) -> dict[int, str]:
        """The state of each of the messages ``ids`` that exists, in one query: the receiver's
        application ACKs wait for thousands of messages at once (engine/flow/ingest.py)."""
        if not ids:
            return {}
        with self.db_engine.connect() as conn:
            return {r.id: r.state for r in conn.execute(_STATES_OF, {"ids": list(ids)})}


# -- documents --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DocumentQuery:
    """What documents to list; the fields combine with AND. ``state`` is the state of the
    document's message (``needs-patient``: a destination does not know the patient)."""

    state: str | None = None
    #: the patient: ``AUTHORITY|MRN``, or a bare MRN of any authority
    mrn: str | None = None
    document_type: str | None = None
    #: keyset paging: only documents with a smaller id
    before: int | None = None
    limit: int = 50

    def __post_init__(self) -> None:
        if self.state is not None:
            object.__setattr__(self, "state", self.state.lower())
            if self.state not in MESSAGE_STATES:
                raise ValueError(
                    f"unknown state {self.state!r} (states: {', '.join(MESSAGE_STATES)})"
                )

    def describe(self) -> str:
        """The filters used, for the audit trail: names and states, never the MRN's value."""
        parts = [f"state {self.state}"] if self.state else []
        parts += [f"type {self.document_type}"] if self.document_type else []
        parts += ["one patient"] if self.mrn else []
        return ", ".join(parts) or "no filter"


_DOCUMENT_LINE = select(
    documents.c.id,
    documents.c.received_at,
    documents.c.document_type,
    documents.c.media_type,
    documents.c.size,
    documents.c.sender,
    documents.c.channel,
    documents.c.message_id,
    messages.c.state,
).select_from(documents.outerjoin(messages, messages.c.id == documents.c.message_id))
_DOCUMENT_VIEW = _DOCUMENT_LINE.add_columns(
    documents.c.sha256,
    documents.c.patient_mrn,
    documents.c.patient_authority,
    documents.c.document_date,
    documents.c.practice,
    documents.c.department,
    documents.c.appointment,
    documents.c.encounter,
    documents.c.author,
    documents.c.title,
    documents.c.file_name,
    documents.c.unique_number,
).where(documents.c.id == bindparam("did"))
_WAITING = (
    select(deliveries.c.message_id, deliveries.c.destination)
    .where(
        deliveries.c.message_id.in_(bindparam("ids", expanding=True)),
        deliveries.c.state == "needs-patient",
    )
    .order_by(deliveries.c.id)
)


#: the state nearly every message ends in: a document list of it is found walking the newest
#: documents; any other state is rare, so its list starts from its messages instead
_COMMON_STATE = "delivered"


def _document_where(q: DocumentQuery) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if q.state:
        conditions.append(messages.c.state == q.state)
        if q.state != _COMMON_STATE:
            # the few messages in that state (``ix_messages_state``), then their documents
            # (``ix_documents_message``): walking every document newest first to find the few
            # waiting for a patient took 60-240 ms on 38,000 documents (the console bench)
            rare = select(messages.c.id).where(messages.c.state == q.state)
            conditions.append(documents.c.message_id.in_(rare))
    if q.document_type:
        conditions.append(documents.c.document_type == q.document_type)
    if q.mrn:
        authority, sep, mrn = q.mrn.rpartition("|")
        conditions.append(documents.c.patient_mrn == mrn)
        if sep:
            conditions.append(documents.c.patient_authority == authority)
    if q.before is not None:
        conditions.append(documents.c.id < q.before)
    return conditions


def _waiting(conn: Connection, message_ids: Sequence[int]) -> dict[int, tuple[str, ...]]:
    """Per message: the destinations whose delivery waits for the patient."""
    out: dict[int, list[str]] = {}
    if message_ids:
        for r in conn.execute(_WAITING, {"ids": list(message_ids)}):
            out.setdefault(r.message_id, []).append(r.destination)
    return {k: tuple(v) for k, v in out.items()}


def _document_fields(row: Any, waiting: dict[int, tuple[str, ...]]) -> dict[str, Any]:
    data = dict(row._asdict())
    data["received_at"] = aware(data["received_at"])
    data["size"] = int(data["size"])
    data["waiting"] = waiting.get(row.message_id, ()) if row.message_id is not None else ()
    return data


def document_lines(conn: Connection, query: DocumentQuery) -> list[DocumentLine]:
    """The documents that match, newest first, at most ``query.limit``."""
    statement = (
        _DOCUMENT_LINE.where(*_document_where(query))
        .order_by(documents.c.id.desc())
        .limit(query.limit)
    )
    rows = conn.execute(statement).all()
    waiting = _waiting(conn, [r.message_id for r in rows if r.message_id is not None])
    return [DocumentLine(**_document_fields(r, waiting)) for r in rows]


def document_view(conn: Connection, document_id: int) -> DocumentView | None:
    """One document's metadata and its message's deliveries, or None."""
    row = conn.execute(_DOCUMENT_VIEW, {"did": document_id}).one_or_none()
    if row is None:
        return None
    mid = row.message_id
    waiting = _waiting(conn, [mid] if mid is not None else [])
    shown = deliveries_of(conn, mid) if mid is not None else ()
    return DocumentView(**_document_fields(row, waiting), deliveries=shown)
