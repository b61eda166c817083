"""The audit trail: who did what to which patient's data, from where, when, and with what outcome.

One row per action: replays, resends, views of patient data (payloads, searches, the worklist,
documents), logins and user changes, from the CLI (the OS user), the API (the token's subject) and
the console (the session's user), refused ones included (outcome ``refused``). Each row names
the patient key whose data was seen or sent, never the data itself; a view that shows several
patients (a worklist, a list, a search) is one row per patient shown (:func:`audit`).

Append-only and tamper-evident (issue 13): every record is chained to the one before by a hash,
HMAC-SHA256 with the audit key (engine/audit/chain.py, engine/audit/key.py). The key is bound to
the database engine (:func:`bind_audit_key`, by :meth:`Audit.use_audit_key` where the engine and
the CLI open their store; a store opened elsewhere reads the key the settings name on its first
append). :func:`audit` appends in the *caller's* transaction, so an action and
its record commit together; the place in the chain is taken under a lock, so the chain never
forks however many nodes share the database:

- PostgreSQL: ``SELECT ... FOR UPDATE`` on the one row of ``audit_chain`` (the head), held to
  the caller's commit; a second writer waits there and then reads the new head;
- SQLite: one writer at a time already (``BEGIN IMMEDIATE`` under the store's write lock; a
  deferred transaction that read an older head cannot commit over a newer one).

``seq`` is unique besides, so a lock somehow skipped fails the insert instead of forking.

Retention (:meth:`Audit.prune_audit`, ``ENGINE_AUDIT_RETENTION_DAYS``, six years by default) is
separate from the messages': it deletes the oldest records, after checking them, and moves the
chain's anchor to the last one deleted, recording the prune in the trail itself. Message
retention never touches this table.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Generator, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Row,
    bindparam,
    delete,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import OperationalError

from engine.audit.chain import (
    FIELDS,
    ChainHead,
    ChainRecord,
    Verified,
    anchor_detail,
    keyed_hash,
    verify_chain,
)
from engine.audit.key import AuditKey, audit_key_for
from engine.errors import EngineError
from engine.store.clean import clean
from engine.store.db import Repository, aware, statement_cancelled, utcnow
from engine.store.lists import in_list
from engine.store.search import MessageQuery
from engine.store.tables import audit_chain, audit_log, messages
from engine.store.views import AuditEntry

__all__ = [
    "ACTIONS",
    "OUTCOMES",
    "SOURCES",
    "YEARS",
    "Audit",
    "AuditChainMissing",
    "AuditQuery",
    "AuditSearchTimeout",
    "audit",
    "bind_audit_key",
    "search_detail",
]

log = logging.getLogger(__name__)

#: what the trail records
ACTIONS = frozenset(
    {
        "replay",
        "resend",
        "view-payload",
        # documents (issue 12): their metadata names a patient, so lists and views are recorded
        "match-document",
        "view-document",
        "list-documents",
        # the console (issue 13): views of patient data, and what users and admins did
        "search-messages",
        "view-message",
        "view-worklist",
        "recheck-eligibility",
        "upload-document",
        "view-report",
        "workbench",
        "mark-handled",
        "reprocess",
        "reload",
        "login",
        "login-failed",
        "logout",
        "session-expired",
        "user-add",
        "user-change",
        "user-disable",
        "view-audit",
        "export-audit",
        "alert",
        # retention deleted the oldest records (the trail's own)
        "prune-audit",
        # the engine opened an unkeyed chain with its audit key: keyed from this record on
        "audit-key",
    }
)
#: where an action came from
SOURCES = frozenset({"cli", "api", "console", "engine"})
OUTCOMES = frozenset({"ok", "refused", "error"})
#: the years a search's dates may name (the ends of the calendar overflow in a time zone)
YEARS = (1900, 9000)

_WIDTHS = {c.name: getattr(c.type, "length", None) for c in audit_log.columns}
_PATIENT_OF = select(messages.c.patient_key).where(messages.c.id == bindparam("mid"))
_PATIENTS_OF = select(messages.c.id, messages.c.patient_key).where(in_list(messages.c.id, "mids"))
_HEAD = select(
    audit_chain.c.head_seq,
    audit_chain.c.head_hash,
    audit_chain.c.anchor_seq,
    audit_chain.c.anchor_hash,
).where(audit_chain.c.id == 1)
_HEAD_LOCKED = _HEAD.with_for_update()
_SET_HEAD = (
    update(audit_chain)
    .where(audit_chain.c.id == 1)
    .values(head_seq=bindparam("s"), head_hash=bindparam("h"))
)
_SET_HASH = (
    update(audit_log)
    .where(audit_log.c.id == bindparam("rid"))
    .values(hash=bindparam("h"), key_id=bindparam("k"))
)
#: built once (a hot statement): the hash is set once the id is known, since it covers the id
_INSERT = (
    insert(audit_log)
    .values(
        {name: bindparam(name) for name in (*FIELDS, "prev_hash") if name != "id"} | {"hash": ""}
    )
    .returning(audit_log.c.id)
)
_RECORD = select(*(audit_log.c[name] for name in (*FIELDS, "prev_hash", "hash", "key_id")))
_NEWEST_KEY = select(audit_log.c.seq, audit_log.c.key_id).order_by(audit_log.c.seq.desc()).limit(1)

#: the audit key of each database engine (a weak map: an engine dropped drops its entry)
_KEYS: weakref.WeakKeyDictionary[Engine, AuditKey] = weakref.WeakKeyDictionary()
_KEYS_LOCK = threading.Lock()


def bind_audit_key(db_engine: Engine, key: AuditKey) -> None:
    """Hash the records appended through ``db_engine`` with ``key`` (and verify with it)."""
    with _KEYS_LOCK:
        _KEYS[db_engine] = key


def _key_of(db_engine: Engine) -> AuditKey:
    """The key bound to ``db_engine``; unbound, the one the settings name (read once)."""
    engine: Engine = getattr(db_engine, "_proxied", db_engine)  # an engine with options
    with _KEYS_LOCK:
        key = _KEYS.get(engine)
        if key is None:
            from engine.settings import load_settings

            key = _KEYS[engine] = audit_key_for(load_settings())
    return key


class AuditChainMissing(RuntimeError):
    """The chain's head row is gone (deleted outside the engine): nothing more can be appended
    until an admin looks (``engine audit verify``)."""


class AuditSearchTimeout(EngineError):
    """A search of the trail ran past its time limit (:attr:`Audit.search_timeout_s`)."""


class _Caller(Protocol):
    """Who asks (``engine.store.Who``): the actor, the source and the caller's address."""

    @property
    def actor(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def peer(self) -> str | None: ...


def _locked_head(conn: Connection) -> ChainHead:
    row = conn.execute(_HEAD_LOCKED).one_or_none()
    if row is None:
        raise AuditChainMissing("the audit chain's head (audit_chain) is missing")
    return ChainHead(*row)


def audit(
    conn: Connection,
    *,
    action: str,
    actor: str,
    source: str,
    message_id: int | None,
    outcome: str,
    detail: str | None = None,
    peer: str | None = None,
    patient_key: str | None = None,
    patients: Sequence[str | None] = (),
    messages_shown: Sequence[int] = (),
) -> None:
    """Append one record in the caller's transaction (so a resend and its record commit
    together); the message's patient key is read here, unless ``patient_key`` names the
    patient (a search by MRN: no one message). The chain's head stays locked until the caller
    commits: call this last in a transaction, after its other row locks.

    A view that shows several patients (a worklist, a list of documents, a search not made by
    MRN) names them: ``patients`` (their keys or MRNs) and the messages it showed
    (``messages_shown``, whose patient keys are read here in one statement). It is then
    recorded once per distinct patient, in the order shown, as IHE BALP advises (one
    AuditEvent per patient): the same action, actor, source, time, outcome and detail, each
    record naming its patient, so ``engine audit list --mrn`` and the FHIR export find the view
    under each. Nobody named: one record without a patient. The caller bounds the list (a page
    of rows)."""
    if action not in ACTIONS or outcome not in OUTCOMES or source not in SOURCES:
        raise ValueError(
            f"audit: unknown action {action!r}, outcome {outcome!r} or source {source!r}"
        )
    shown: list[str | None] = [p for p in patients if p]
    if messages_shown:
        rows = conn.execute(_PATIENTS_OF, {"mids": list(messages_shown)})
        keys: dict[int, str | None] = {r.id: r.patient_key for r in rows}
        shown += [keys.get(mid) for mid in messages_shown if keys.get(mid)]
    named = list(dict.fromkeys(clean(p, _WIDTHS["patient_key"]) for p in shown))
    if not named:
        patient = patient_key
        if patient is None and message_id is not None:
            patient = conn.execute(_PATIENT_OF, {"mid": message_id}).scalar_one_or_none()
        named = [clean(patient, _WIDTHS["patient_key"])]
    head = _locked_head(conn)
    seq, prev = head.head_seq, head.head_hash
    key = _key_of(conn.engine)
    common: dict[str, Any] = {
        "at": utcnow(),  # taken under the lock: times follow the chain's order
        "actor": clean(actor or "unknown", _WIDTHS["actor"]),
        "source": source,
        "action": action,
        "message_id": message_id,
        "detail": clean(detail),
        "outcome": outcome,
        "peer": clean(peer, _WIDTHS["peer"]),
    }
    for patient in named:
        seq += 1
        fields = {**common, "seq": seq, "patient_key": patient}
        row_id = conn.execute(_INSERT, {**fields, "prev_hash": prev}).scalar_one()
        prev = keyed_hash(prev, {**fields, "id": row_id}, key)
        conn.execute(_SET_HASH, {"rid": row_id, "h": prev, "k": key.key_id})
    conn.execute(_SET_HEAD, {"s": seq, "h": prev})


def search_detail(query: MessageQuery, shown: int) -> str:
    """A message search as the trail records it: how many shown and which filters, never the
    MRN's value (the record's patient key names the patient)."""
    parts = [
        f"{name} {value}"
        for name, value in (
            ("state", query.state),
            ("type", query.message_type),
            ("trigger", query.trigger),
            ("sender", query.sender),
            ("control id", query.control_id),
            ("since", query.since.isoformat() if query.since else None),
            ("until", query.until.isoformat() if query.until else None),
            ("before", query.before),
        )
        if value
    ]
    parts += ["one patient"] if query.mrn else []
    return f"{shown} shown; " + (", ".join(parts) or "no filter")


@dataclass(frozen=True)
class AuditQuery:
    """Which records to read, newest first; the fields combine with AND."""

    actor: str | None = None
    action: str | None = None
    #: the patient: ``AUTHORITY|MRN``, or a bare MRN of any authority
    mrn: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    #: keyset paging: only records with a smaller seq (the last seq of the previous page)
    before: int | None = None
    limit: int = 50

    def __post_init__(self) -> None:
        if self.action is not None and self.action not in ACTIONS:
            raise ValueError(
                f"unknown action {self.action!r} (actions: {', '.join(sorted(ACTIONS))})"
            )
        if not 1 <= self.limit <= 10_000:
            raise ValueError("limit must be between 1 and 10000")
        for name, value in (("since", self.since), ("until", self.until)):
            if value is not None and not YEARS[0] <= value.year <= YEARS[1]:
                raise ValueError(
                    f"{name}: {value.date().isoformat()} is out of range "
                    f"(years {YEARS[0]} to {YEARS[1]})"
                )

    def describe(self) -> str:
        """The filters used, for the trail itself: never the MRN's value."""
        parts = [f"actor {self.actor}"] if self.actor else []
        parts += [f"action {self.action}"] if self.action else []
        parts += ["one patient"] if self.mrn else []
        parts += [f"since {self.since.isoformat()}"] if self.since else []
        parts += [f"until {self.until.isoformat()}"] if self.until else []
        parts += [f"before seq {self.before}"] if self.before else []
        return ", ".join(parts) or "no filter"


def _like_suffix(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%|{escaped}"


def _where(q: AuditQuery) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if q.actor:
        conditions.append(audit_log.c.actor == q.actor)
    if q.action:
        conditions.append(audit_log.c.action == q.action)
    if q.mrn:
        if "|" in q.mrn:
            conditions.append(audit_log.c.patient_key == q.mrn)
        else:  # any authority's, and a search that named the bare MRN
            conditions.append(
                or_(
                    audit_log.c.patient_key == q.mrn,
                    audit_log.c.patient_key.like(_like_suffix(q.mrn), escape="\\"),
                )
            )
    if q.since is not None:  # in UTC: SQLite compares the stored wall time (UTC) as text
        conditions.append(audit_log.c.at >= _utc(q.since))
    if q.until is not None:
        conditions.append(audit_log.c.at < _utc(q.until))
    if q.before is not None:
        conditions.append(audit_log.c.seq < q.before)
    return conditions


def _utc(value: datetime) -> datetime:
    return aware(value).astimezone(UTC)


@contextmanager
def _bounded(conn: Connection, seconds: float) -> Iterator[None]:
    """Stop the statements run inside after ``seconds``: PostgreSQL's ``statement_timeout``
    for this transaction; on SQLite a progress handler that interrupts the query."""
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"SET LOCAL statement_timeout = {max(1, int(seconds * 1000))}"))
        yield
        return
    raw: Any = conn.connection.dbapi_connection
    deadline = time.monotonic() + seconds
    raw.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
    try:
        yield
    finally:
        raw.set_progress_handler(None, 0)


def _timed_out(exc: OperationalError) -> bool:
    """The statement was stopped by :func:`_bounded` (PostgreSQL: query_canceled 57014)."""
    return statement_cancelled(exc) or "interrupted" in str(exc.orig)


def _record(row: Row[Any]) -> ChainRecord:
    values = row._asdict()
    return ChainRecord(**{**values, "at": aware(values["at"])})


class Audit(Repository):
    """Recording, reading, verifying and pruning the audit trail."""

    def use_audit_key(self, key: AuditKey) -> None:
        """Hash and verify this store's records with ``key``; when the newest record is unkeyed
        (a chain of before the key), append an ``audit-key`` record, keyed, so the chain is
        keyed from there on (verify refuses an unkeyed head while the node has a key)."""
        bind_audit_key(self.db_engine, key)
        with self.db_engine.connect() as conn:
            newest = conn.execute(_NEWEST_KEY).one_or_none()
        if newest is None or newest.key_id is not None:
            return
        with self._tx() as conn:
            _locked_head(conn)  # another node opening it now: only one writes the record
            newest = conn.execute(_NEWEST_KEY).one()
            if newest.key_id is None:
                audit(
                    conn,
                    action="audit-key",
                    actor="engine",
                    source="engine",
                    message_id=None,
                    outcome="ok",
                    detail=(
                        f"keyed from here (HMAC-SHA256, key id {key.key_id}); seq "
                        f"{newest.seq} and before were written without a key"
                    ),
                )

    def record_audit(
        self,
        *,
        action: str,
        actor: str,
        source: str,
        message_id: int | None,
        outcome: str,
        detail: str | None = None,
        peer: str | None = None,
        patient_key: str | None = None,
        patients: Sequence[str | None] = (),
        messages_shown: Sequence[int] = (),
    ) -> None:
        """Record an action taken outside a store transaction (a payload view, a refusal); a
        view of several patients once per patient (:func:`audit`), in one transaction."""
        with self._tx() as conn:
            audit(
                conn,
                action=action,
                actor=actor,
                source=source,
                message_id=message_id,
                outcome=outcome,
                detail=detail,
                peer=peer,
                patient_key=patient_key,
                patients=patients,
                messages_shown=messages_shown,
            )

    def audit_entries(self, *, limit: int = 50, message_id: int | None = None) -> list[AuditEntry]:
        """The newest entries first, optionally only those of one message (not recorded as a
        view: :meth:`audit_page` is the trail's reading for people)."""
        query = (
            select(
                audit_log.c.id,
                audit_log.c.at,
                audit_log.c.actor,
                audit_log.c.source,
                audit_log.c.action,
                audit_log.c.message_id,
                audit_log.c.patient_key,
                audit_log.c.outcome,
                audit_log.c.detail,
                audit_log.c.peer,
            )
            .order_by(audit_log.c.seq.desc())
            .limit(limit)
        )
        if message_id is not None:
            query = query.where(audit_log.c.message_id == message_id)
        with self.db_engine.connect() as conn:
            return [
                AuditEntry(**{**row._asdict(), "at": aware(row.at)}) for row in conn.execute(query)
            ]

    #: how long one search of the trail may read (a statement timeout on PostgreSQL, a
    #: progress handler on SQLite) before it is stopped with :class:`AuditSearchTimeout`
    search_timeout_s: float = 15.0

    def audit_page(
        self, query: AuditQuery, who: _Caller, *, message_id: int | None = None
    ) -> list[ChainRecord]:
        """The records that match, newest first (next page: ``before`` = the last seq); the
        reading is itself recorded (``view-audit``, the filters but never an MRN's value; the
        searched patient as the record's patient key).

        The page is read on a plain read connection (under WAL it never holds or waits for
        SQLite's writer lock), bounded by ``limit`` (keyset on ``seq``) and by
        :attr:`search_timeout_s`; the view-audit record is then appended in its own short write
        transaction. Actor, action and ``AUTHORITY|MRN`` filters are served by their indexes
        (``(column, seq)``); a bare MRN (any authority) is ``patient_key = X OR LIKE '%|X'``,
        which no index serves: on a large trail it scans until ``limit`` matches are found or
        the time limit stops it, so name the authority where it is known.
        """
        statement = (
            _RECORD.where(*_where(query)).order_by(audit_log.c.seq.desc()).limit(query.limit)
        )
        if message_id is not None:
            statement = statement.where(audit_log.c.message_id == message_id)
        outcome, detail = "ok", query.describe()
        try:
            with (
                self.db_engine.connect() as conn,
                conn.begin(),
                _bounded(conn, self.search_timeout_s),
            ):
                records = [_record(r) for r in conn.execute(statement)]
        except OperationalError as exc:
            if not _timed_out(exc):
                raise
            outcome, records = "error", []
            detail = f"stopped after {self.search_timeout_s:g} s; {detail}"
        self.record_audit(
            action="view-audit",
            actor=who.actor,
            source=who.source,
            peer=who.peer,
            message_id=None,
            outcome=outcome,
            detail=f"{len(records)} shown; {detail}",
            patient_key=query.mrn,
        )
        if outcome != "ok":
            raise AuditSearchTimeout(
                f"the audit search took longer than {self.search_timeout_s:g} s and was "
                "stopped; narrow it (the MRN with its authority, an actor, action or dates)"
            )
        return records

    def audit_head(self) -> ChainHead | None:
        """The chain's head and anchor, or None when the head row is missing."""
        with self.db_engine.connect() as conn:
            row = conn.execute(_HEAD).one_or_none()
        return ChainHead(*row) if row is not None else None

    def _walk(self, conn: Connection, since: datetime | None = None) -> Generator[ChainRecord]:
        """Every record in seq order, streamed (a server-side cursor on PostgreSQL)."""
        statement = _RECORD.order_by(audit_log.c.seq)
        if since is not None:
            statement = statement.where(audit_log.c.at >= _utc(since))
        if conn.dialect.name == "postgresql":
            # the cursor's transaction waits on its reader (an export piped to a pager): not
            # ended by the 5 minutes every other session gets idle in a transaction (db.py)
            conn.exec_driver_sql("SET LOCAL idle_in_transaction_session_timeout = 0")
        result = conn.execution_options(yield_per=2000).execute(statement)
        try:
            for row in result:
                yield _record(row)
        finally:  # a walk stopped early closes its server-side cursor now
            result.close()

    def verify_audit(self, who: _Caller | None = None) -> Verified:
        """Walk the whole chain from its anchor and report the first problem (chain.py says
        which). Read in one transaction, so appends made meanwhile are not half seen; then, if
        ``who`` is given, the check is recorded (``view-audit``)."""
        with self.db_engine.connect() as conn:
            if conn.dialect.name == "postgresql":  # one snapshot for the head and the walk
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                row = conn.execute(_HEAD).one_or_none()
                head = ChainHead(*row) if row is not None else None
                with closing(self._walk(conn)) as records:
                    verified = verify_chain(records, head, key=_key_of(self.db_engine))
        if who is not None:
            self.record_audit(
                action="view-audit",
                actor=who.actor,
                source=who.source,
                peer=who.peer,
                message_id=None,
                outcome="ok",
                detail=f"verify: {'intact' if verified.ok else 'BROKEN'}, {verified.count} records",
            )
        return verified

    def export_audit(self, since: datetime | None, who: _Caller) -> Iterator[ChainRecord]:
        """Every record from ``since`` in seq order, streamed; the export is recorded first
        (``export-audit``), so it appears in the export."""
        self.record_audit(
            action="export-audit",
            actor=who.actor,
            source=who.source,
            peer=who.peer,
            message_id=None,
            outcome="ok",
            detail=f"since {since.isoformat()}" if since else "everything",
        )
        with self.db_engine.connect() as conn:
            yield from self._walk(conn, since)

    def prune_audit(
        self, older_than: timedelta, *, batch: int = 5000, now: datetime | None = None
    ) -> int:
        """Retention: delete the oldest records written before ``now - older_than``, ``batch``
        at a time from the anchor, each batch checked first (a broken one is kept, as evidence,
        and the prune stops with a warning); the anchor moves to the last record deleted and
        the prune is recorded (``prune-audit``). Returns how many were deleted."""
        cutoff = (now or utcnow()) - older_than
        total = 0
        while True:
            pruned = self._prune_batch(cutoff, batch)
            total += pruned
            if pruned < batch:
                return total

    def _prune_batch(self, cutoff: datetime, batch: int) -> int:
        with self._tx() as conn:
            head = _locked_head(conn)
            rows = [
                _record(r)
                for r in conn.execute(
                    _RECORD.where(audit_log.c.seq > head.anchor_seq)
                    .order_by(audit_log.c.seq)
                    .limit(batch)
                )
            ]
            old: list[ChainRecord] = []
            for r in rows:  # the oldest prefix only: the chain keeps no holes
                if r.at >= aware(cutoff):
                    break
                old.append(r)
            if not old:
                return 0
            last = old[-1]
            check = verify_chain(
                old,
                ChainHead(last.seq, last.hash, head.anchor_seq, head.anchor_hash),
                key=_key_of(self.db_engine),
                whole=False,
            )
            if not check.ok:
                log.warning(
                    "audit retention stopped: the oldest records do not verify",
                    extra={"seq": check.problem_seq},
                )
                return 0
            conn.execute(
                delete(audit_log).where(
                    audit_log.c.seq > head.anchor_seq, audit_log.c.seq <= last.seq
                )
            )
            conn.execute(
                update(audit_chain)
                .where(audit_chain.c.id == 1)
                .values(anchor_seq=last.seq, anchor_hash=last.hash, pruned_at=utcnow())
            )
            audit(
                conn,
                action="prune-audit",
                actor="retention",
                source="engine",
                message_id=None,
                outcome="ok",
                detail=(
                    f"{len(old)} records up to seq {last.seq} (before {cutoff.date()}) "
                    f"deleted; {anchor_detail(last.seq, last.hash)}"
                ),
            )
            return len(old)
