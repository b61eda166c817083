"""Tables of the message store (SQLAlchemy 2 Core). Alembic migrations: engine/store/migrations.

``messages``: every message received, *before* it is acknowledged: its raw bytes as they arrived
(so nothing is ever lost, even bytes that are not HL7), where it came from, what it is (when it
could be read) and its state with the reason. A stored document has a message too (kind
``document``, its metadata as JSON in ``raw``), routed and delivered like any other. States::

    received ──▶ processing ──▶ routed ──▶ delivered        (every delivery done)
        │             │            ├──────▶ dead            (a delivery dead-lettered)
        │             │            └──────▶ needs-patient   (a destination does not know the
        │             │                                      patient; the rest settled)
        └─────────────┴──────────▶ error                    (unreadable, unsupported, unmappable)
                                   unrouted                 (no route wants it)

    routed, delivered, dead, needs-patient, error, unrouted ──▶ replayed
                                   (an operator replayed it, or matched its document to another
                                    patient: the copy, ``replay_of`` this one, goes on)
    dead, delivered, needs-patient ──▶ routed               (an operator resent a delivery)

A message with one delivery needs-patient and another dead settles as needs-patient: what it
needs is a person's action (match or resend); the dead one shows among the failing, and a resend
takes both.

``deliveries``: one row per message and destination, with the payload to send, attempts, the next
attempt's time, the last error and the patient key that orders deliveries per patient. States::

    waiting (behind an earlier one of its queue) ──▶ pending ──▶ delivered
                                                         ├────▶ dead
                                                         └────▶ needs-patient (EHR: unknown patient)
    dead, delivered, needs-patient ──▶ resent   (an operator's resend makes a new row, resend_of
                                                 this one; a match replays the message and
                                                 settles its needs-patient rows as resent)
    pending (never claimed), waiting ──▶ resent  (its message replayed: the copy replaces it)

needs-patient leaves its queue as delivered and dead do: the next delivery for the same patient
and destination is promoted (an ADT registering the patient must not wait behind a document for
a person). It is never claimed again nor dead-lettered, is not counted in the backlog, the
queue-depth gauges or ``deliveries_pending``, and the repair job leaves it (it only promotes
waiting rows) (engine/store/operator.py, engine/store/deliveries.py).

``documents``: one row per document and patient (the same bytes for the same patient are one,
keyed ``sha256|authority|mrn``), its metadata and the message that routes it; ``document_blobs``
and ``document_chunks``: the bytes, once per content, keyed by SHA-256, in chunks of at most
1 MiB (engine/store/documents.py).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

__all__ = [
    "REFUSALS_STAY",
    "alert_events",
    "alerts",
    "audit_chain",
    "audit_log",
    "config_applied",
    "config_generation",
    "console_sessions",
    "console_users",
    "deliveries",
    "delivery_attempts",
    "destination_breakers",
    "document_blobs",
    "document_chunks",
    "documents",
    "eligibility_checks",
    "fhir_resources",
    "job_run_items",
    "job_runs",
    "message_handled",
    "messages",
    "metadata",
    "nodes",
    "report_changes",
    "report_rollup_epoch",
    "report_rollups",
]

metadata = MetaData()


class patient_mrn(FunctionElement[str]):  # noqa: N801  (a SQL function's name)
    """The MRN of a message's patient key (``AUTHORITY|MRN``: what follows the first ``|``),
    as ``ix_messages_mrn`` indexes it (migration 0015): a search by a bare MRN, of any
    authority, reads that index instead of every patient key (issue 13, search at scale).

    PostgreSQL indexes the expression, so the query spells the same expression; SQLite indexes
    a virtual generated column of it, ``messages.patient_mrn`` (not declared here: nothing
    writes or selects it), so the query names that column."""

    type = String()
    inherit_cache = True
    name = "patient_mrn"


@compiles(patient_mrn, "sqlite")
def _patient_mrn_sqlite(element: patient_mrn, compiler: SQLCompiler, **kw: object) -> str:
    (key,) = element.clauses
    table = compiler.preparer.format_table(key.table)
    return f"{table}.patient_mrn"


@compiles(patient_mrn, "postgresql")
def _patient_mrn_postgresql(element: patient_mrn, compiler: SQLCompiler, **kw: object) -> str:
    key = compiler.process(element.clauses, **kw)
    return f"substr({key}, strpos({key}, '|') + 1)"


_ID = BigInteger().with_variant(Integer, "sqlite")

#: the refused uploads that stay, as ``ix_messages_refusals`` states them: a query that should read
#: that index says the same, literally (SQLite takes a partial index only for the same terms
#: with the same constants, never for bound parameters)
REFUSALS_STAY = "kind = 'document' AND state IN ('error', 'replayed')"

messages = Table(
    "messages",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("channel", String(32), nullable=False),  # mllp, http, file, replay
    Column("peer", String(255), nullable=False, default=""),
    Column("kind", String(16), nullable=False, default="hl7v2"),  # hl7v2, fhir
    Column("size", Integer, nullable=False),
    Column("raw", LargeBinary, nullable=False),
    Column("control_id", String(199), nullable=True),  # MSH-10
    Column("message_type", String(16), nullable=True),  # MSH-9.1 (or the FHIR resourceType)
    Column("trigger", String(16), nullable=True),  # MSH-9.2
    Column("structure", String(16), nullable=True),
    Column("sending_application", String(227), nullable=True),
    Column("sending_facility", String(227), nullable=True),
    #: sender + MSH-10 of an original (not replayed) message: the idempotent receiver's key
    #: (``|#`` and the content's SHA-256 appended for a control ID reused, engine/store/resends.py)
    Column("dedupe_key", String(700), nullable=True),
    Column("replay_of", _ID, nullable=True),
    #: a large HL7v2 message's content digest, for its resends to compare with (migration 0027)
    Column("digest", String(64), nullable=True),
    Column("patient_key", String(255), nullable=True),
    Column("state", String(16), nullable=False),
    Column("reason", Text, nullable=True),
    #: what the message carried that no mapping took, one line each (``PID: not mapped: PID-9``)
    Column("warnings", Text, nullable=True),
    Column("claimed_by", String(64), nullable=True),
    Column("claimed_at", DateTime(timezone=True), nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_messages_state", "state", "id"),
    Index("ux_messages_dedupe", "dedupe_key", unique=True),
    Index("ix_messages_patient", "patient_key", "state", "id"),
    Index("ix_messages_received", "received_at", "id"),
    Index("ix_messages_control", "control_id"),
    #: a replayed original's copies (retention asks whether one is unfinished; migration 0024)
    Index(
        "ix_messages_replay_of",
        "replay_of",
        postgresql_where=text("replay_of IS NOT NULL"),
        sqlite_where=text("replay_of IS NOT NULL"),
    ),
    #: refused uploads that stay (retention asks which still keep the bytes of a purged
    #: document, engine/store/documents.py; migration 0024): without it, every error message
    Index(
        "ix_messages_refusals",
        "id",
        postgresql_where=text(REFUSALS_STAY),
        sqlite_where=text(REFUSALS_STAY),
    ),
    # and ix_messages_mrn (a bare MRN's search), made per database by migration 0015: the MRN
    # part of the patient key and the id (see patient_mrn)
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("message_id", _ID, ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
    Column("destination", String(128), nullable=False),
    Column("route", String(128), nullable=False),
    Column("kind", String(16), nullable=False),  # fhir-bundle, hl7v2
    Column("content_type", String(64), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("patient_key", String(255), nullable=False, default=""),
    # waiting (behind an earlier one for the same patient), pending, delivered, dead
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("claimed_until", DateTime(timezone=True), nullable=True),
    #: the node (``nodes.id``) holding the lease
    Column("claimed_by", String(64), nullable=True),
    #: a resend's delivery: the failed or dead delivery it replaces (now ``resent``)
    Column("resend_of", _ID, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("delivered_at", DateTime(timezone=True), nullable=True),
    Index("ix_deliveries_due", "state", "next_attempt_at"),
    Index("ix_deliveries_order", "destination", "patient_key", "state", "id"),
    Index("ix_deliveries_message", "message_id"),
    #: the console's counts per route and destination over a time window (index-only)
    Index("ix_deliveries_created", "created_at", "route", "destination", "state"),
    #: the dashboard's queue and dead letters per destination, from the index alone (0015)
    Index("ix_deliveries_state_dest", "state", "destination", "message_id", "created_at"),
)

#: a delivery's attempts that did not deliver (and its success after earlier ones), written in
#: the outcome's transaction; a first-time success writes nothing here (the delivery row says
#: it). Gone with its delivery (ON DELETE CASCADE; migration 0020).
delivery_attempts = Table(
    "delivery_attempts",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("delivery_id", _ID, ForeignKey("deliveries.id", ondelete="CASCADE"), nullable=False),
    Column("attempt", Integer, nullable=False),
    #: when its outcome was recorded
    Column("at", DateTime(timezone=True), nullable=False),
    #: retry, dead, needs-patient, delivered
    Column("outcome", String(16), nullable=False),
    #: the HTTP status the destination answered, when it did
    Column("status", Integer, nullable=True),
    #: the exception's class or the ACK code, when the error names one
    Column("error_class", String(64), nullable=True),
    Column("error", String(300), nullable=True),
    Column("duration_ms", Integer, nullable=True),
    Index("ix_delivery_attempts_delivery", "delivery_id", "attempt"),
)


#: the latest version of every FHIR resource the engine mapped, keyed by its fullUrl (derived
#: from its business identifiers, so an SIU^S14 updates the Appointment an S12 made)
fhir_resources = Table(
    "fhir_resources",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("resource_type", String(64), nullable=False),
    Column("full_url", String(128), nullable=False),
    Column("patient_url", String(128), nullable=True),
    Column("start", DateTime(timezone=True), nullable=True),  # Appointment.start
    Column("status", String(32), nullable=True),
    Column("body", Text, nullable=False),  # the resource as JSON
    Column("message_id", _ID, nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ux_fhir_resources_url", "full_url", unique=True),
    Index("ix_fhir_resources_start", "resource_type", "start"),
    Index("ix_fhir_resources_patient", "resource_type", "patient_url"),
)


#: eligibility checks (X12 270/271), kept as history and attached to the appointment
eligibility_checks = Table(
    "eligibility_checks",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("appointment_url", String(128), nullable=True),
    Column("appointment_start", DateTime(timezone=True), nullable=True),
    Column("patient_url", String(128), nullable=False),
    Column("coverage_url", String(128), nullable=True),
    Column("payer_id", String(80), nullable=False),
    Column("payer_name", String(200), nullable=True),
    Column("service_date", Date, nullable=False),
    Column("checked_at", DateTime(timezone=True), nullable=False),
    # eligible, inactive, needs_action, payer_unavailable
    Column("status", String(24), nullable=False),
    Column("copay", String(32), nullable=True),
    Column("deductible", String(32), nullable=True),
    Column("deductible_remaining", String(32), nullable=True),
    Column("plan", String(200), nullable=True),
    Column("reason", Text, nullable=True),
    Column("trace", String(80), nullable=True),
    Column("attempts", Integer, nullable=False, default=1),
    Column("response", Text, nullable=True),  # the CoverageEligibilityResponse (FHIR JSON)
    Index("ix_eligibility_day", "service_date", "id"),
    Index("ix_eligibility_dedupe", "patient_url", "payer_id", "checked_at"),
)


#: each running process that claims work (``host:pid:random``), with its heartbeat: a claim held
#: by a node whose heartbeat stopped is taken over (engine/store/nodes.py)
nodes = Table(
    "nodes",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("role", String(16), nullable=False),  # worker, receiver
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("heartbeat_at", DateTime(timezone=True), nullable=False),
    #: its takeover limit in seconds (``ENGINE_NODE_DEAD_AFTER_S``; NULL: an older node's,
    #: the default): others wait for the longest limit any node has (migration 0026)
    Column("dead_after_s", Float, nullable=True),
)

#: who replayed, resent or viewed what (the console's audit trail extends it)
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(255), nullable=False),  # token subject, or the OS user for the CLI
    Column("source", String(16), nullable=False),  # cli, api
    Column("action", String(32), nullable=False),  # replay, resend, view-payload, ...
    Column("message_id", _ID, nullable=True),
    Column("patient_key", String(255), nullable=True),
    Column("detail", Text, nullable=True),
    Column("outcome", String(16), nullable=False),  # ok, refused, error
    Column("peer", String(255), nullable=True),
    #: the hash chain (issue 13, engine/audit/chain.py): place, previous record's hash, own hash
    Column("seq", BigInteger, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    #: the key id of the audit key whose HMAC ``hash`` is (engine/audit/key.py); NULL: a record
    #: of before the key, plain SHA-256 (migration 0022)
    Column("key_id", String(16), nullable=True),
    Index("ix_audit_log_at", "at", "id"),
    Index("ix_audit_log_message", "message_id"),
    Index("ux_audit_log_seq", "seq", unique=True),
    #: the console's and the API's filters, newest first (keyset by seq)
    Index("ix_audit_log_actor", "actor", "seq"),
    Index("ix_audit_log_action", "action", "seq"),
    Index("ix_audit_log_patient", "patient_key", "seq"),
)

#: the audit chain's head, one row (id 1): the newest record's seq and hash (so deleting the
#: newest records is found) and the anchor retention left (the seq and hash of the last record
#: pruned, which the first kept one chains to). Appends lock this row (engine/store/audit.py).
audit_chain = Table(
    "audit_chain",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("head_seq", BigInteger, nullable=False),
    Column("head_hash", String(64), nullable=False),
    Column("anchor_seq", BigInteger, nullable=False),
    Column("anchor_hash", String(64), nullable=False),
    Column("pruned_at", DateTime(timezone=True), nullable=True),
)

#: one row per scheduled job and fire time: the process that inserts it runs that run
job_runs = Table(
    "job_runs",
    metadata,
    Column("job_id", String(64), primary_key=True),
    Column("run_at", DateTime(timezone=True), primary_key=True),
    Column("node", String(64), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("outcome", String(200), nullable=True),
)

#: what a run has done, one row per item (an eligibility check's appointment), written with the
#: item's result: a run resumed by another node does only the items without a row (0017). A row
#: without ``result_id`` is an item whose 270 went out and whose answer was never recorded
#: (``done_at`` then says when it started): it is not asked again
job_run_items = Table(
    "job_run_items",
    metadata,
    Column("job_id", String(64), primary_key=True),
    Column("run_at", DateTime(timezone=True), primary_key=True),
    Column("item", String(64), primary_key=True),  # a digest of the item's identity
    Column("result_id", _ID, nullable=True),
    Column("node", String(64), nullable=False),
    Column("done_at", DateTime(timezone=True), nullable=False),
)

#: one row (id 1): the configuration's generation, bumped by a reload on any node with the digest
#: of its files; every node follows it (engine/flow/config.py). ``config_applied``: what each
#: node runs, and whether it refused a generation whose files it does not have (0017)
config_generation = Table(
    "config_generation",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("generation", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("node", String(64), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
)
config_applied = Table(
    "config_applied",
    metadata,
    Column("node", String(64), primary_key=True),
    Column("generation", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("status", String(16), nullable=False),  # applied, refused, differs
    Column("detail", Text, nullable=True),
    Column("at", DateTime(timezone=True), nullable=False),
)


#: documents (engine/documents): each accepted document's metadata, with the ``messages`` row of
#: kind ``document`` that carries it through routing and delivery. ``dedupe_key`` (sha256 and
#: patient): the same bytes uploaded again for the same patient are stored once.
documents = Table(
    "documents",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("message_id", _ID, ForeignKey("messages.id", ondelete="SET NULL"), nullable=True),
    Column("sha256", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("media_type", String(64), nullable=False),
    Column("patient_mrn", String(64), nullable=False),
    Column("patient_authority", String(64), nullable=False, default=""),
    Column("document_type", String(64), nullable=False),
    Column("document_date", String(10), nullable=False),  # YYYY-MM-DD
    Column("channel", String(16), nullable=False),  # folder, http, mllp
    Column("sender", String(255), nullable=False),
    Column("practice", String(64), nullable=True),
    Column("department", String(64), nullable=True),
    Column("appointment", String(128), nullable=True),
    Column("encounter", String(128), nullable=True),
    Column("author", String(255), nullable=True),
    Column("title", String(255), nullable=True),
    Column("file_name", String(255), nullable=True),
    Column("unique_number", String(199), nullable=True),  # TXA-12 of an MDM
    Column("parent_number", String(199), nullable=True),  # TXA-13: an addendum's parent
    Column("relation", String(16), nullable=True),  # appends, replaces (relatesTo.code)
    Column("dedupe_key", String(200), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ux_documents_dedupe", "dedupe_key", unique=True),
    Index("ix_documents_sha256", "sha256"),
    Index("ix_documents_patient", "patient_authority", "patient_mrn", "id"),
    Index("ix_documents_message", "message_id"),
)

#: a document's bytes, once per content (SHA-256), in chunks of at most 1 MiB so neither the
#: writer nor a reader holds a whole document in memory
document_blobs = Table(
    "document_blobs",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("chunks", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    #: base64 SHA-1 of the bytes (FHIR Attachment.hash), computed as they are stored
    Column("sha1", String(28), nullable=True),
    #: where the bytes are: ``db`` (document_chunks) or ``file`` (beside a SQLite database:
    #: engine/store/blobs.py)
    Column("stored", String(8), nullable=False, server_default="db"),
)

document_chunks = Table(
    "document_chunks",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("data", LargeBinary, nullable=False),
)


#: an error or dead message an operator acknowledged in the console ("mark handled", issue 13)
message_handled = Table(
    "message_handled",
    metadata,
    Column("message_id", _ID, ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True),
    Column("handled_at", DateTime(timezone=True), nullable=False),
    Column("handled_by", String(255), nullable=False),
    Column("note", String(500), nullable=True),
)

#: each worker node's circuit breaker per destination, written when it opens or closes
#: (engine/flow/deliver.py) so the console's dashboard can show it (issue 13)
destination_breakers = Table(
    "destination_breakers",
    metadata,
    Column("destination", String(128), primary_key=True),
    Column("node", String(64), primary_key=True),
    Column("state", String(8), nullable=False),  # open, closed
    Column("failures", Integer, nullable=False),
    Column("changed_at", DateTime(timezone=True), nullable=False),
    Column("last_error", String(500), nullable=True),
)


#: alerts (engine/alerts/state.py): one row per rule and subject (a destination, a payer; "" for
#: none), raised or recovered, with the notice it still owes (``notice``: raise, recover) and the
#: channels that already have it; ``sending_by``/``sending_until``: the evaluator sending it
alerts = Table(
    "alerts",
    metadata,
    Column("rule", String(64), primary_key=True),
    Column("subject", String(255), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("state", String(16), nullable=False),  # raised, recovered
    Column("summary", Text, nullable=False),  # counts, names, ages: never PHI
    Column("raised_at", DateTime(timezone=True), nullable=False),
    Column("recovered_at", DateTime(timezone=True), nullable=True),
    Column("notice", String(16), nullable=True),  # raise, recover: owed; None: nothing owed
    Column("sent_to", Text, nullable=False, default=""),  # channels that have the owed notice
    Column("notified_at", DateTime(timezone=True), nullable=True),  # last raise notice sent
    Column("sending_by", String(64), nullable=True),
    Column("sending_until", DateTime(timezone=True), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_alerts_state", "state", "raised_at"),
)

#: the alerts' history: raised, recovered, notified, notice-failed (the console's list)
alert_events = Table(
    "alert_events",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("rule", String(64), nullable=False),
    Column("subject", String(255), nullable=False),
    Column("event", String(16), nullable=False),
    Column("detail", Text, nullable=True),
    Index("ix_alert_events_at", "at", "id"),
)


#: the console's users (engine/store/users.py): local ones with an argon2id hash, or ones an
#: OpenID Connect provider vouches for (``origin`` oidc, no hash). ``roles``: space-separated
#: engine roles; ``disabled_at`` set: refused at login, their sessions revoked; after too many
#: failed logins ``locked_until`` refuses even the right password for a while.
console_users = Table(
    "console_users",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("username", String(64), nullable=False),
    Column("password_hash", String(255), nullable=True),
    Column("roles", String(128), nullable=False),
    Column("origin", String(16), nullable=False),  # local, oidc
    Column("disabled_at", DateTime(timezone=True), nullable=True),
    Column("failed_logins", Integer, nullable=False),
    Column("locked_until", DateTime(timezone=True), nullable=True),
    Column("last_login_at", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ux_console_users_username", "username", unique=True),
)

#: the console's sessions, server-side so every node shares them and logging out or disabling a
#: user ends them at once; the cookie holds a random id, this table only its SHA-256
console_sessions = Table(
    "console_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("user_id", _ID, ForeignKey("console_users.id", ondelete="CASCADE"), nullable=False),
    Column("csrf_token", String(64), nullable=False),
    Column("method", String(16), nullable=False),  # password, oidc
    Column("peer", String(255), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_seen_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Index("ix_console_sessions_user", "user_id"),
)


#: the reports' rollup (engine/store/rollups.py, migration 0023): a closed day's figures per
#: report, as JSON, cut in ``zone``; ``report_changes``: late changes to days that may be rolled
#: up (written by triggers, taken by the reports); ``report_rollup_epoch``: one row, moved on
#: each time changes are taken
report_rollups = Table(
    "report_rollups",
    metadata,
    Column("report", String(24), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("zone", String(64), nullable=False),
    Column("figures", Text, nullable=False),
    Column("computed_at", DateTime(timezone=True), nullable=False),
)
report_changes = Table(
    "report_changes",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("report", String(24), nullable=False),
    Column("at", DateTime(timezone=True), nullable=True),  # the instant changed, or
    Column("day", Date, nullable=True),  # the service day changed (eligibility)
    Column("onward", Boolean, nullable=False),  # every day from it on, not only that day's
)
report_rollup_epoch = Table(
    "report_rollup_epoch",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("generation", BigInteger, nullable=False),
)
