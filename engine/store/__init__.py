"""The message store, split by what it stores; the rest of the engine imports from here.

db            the database: engine creation, SQLite's settings, the writers' lock, transactions
tables        the tables (SQLAlchemy Core); Alembic migrations under migrations/
views         what is shown of a message and its deliveries (CLI and API alike)
messages      received messages: group commit, claims for processing, showing, replay
deliveries    the queues per (destination, patient): claims, outcomes, upkeep, backlog
index         the FHIR resource index the jobs read
eligibility   eligibility checks (X12 270/271)
nodes         heartbeats (worker processes, receivers), takeover of dead ones' claims, job runs
cluster       the nodes as the console shows them: heartbeats, the leader, configuration generations
identity      the tag naming the shared database (PostgreSQL) in a file destination's names
search        the operator's message list: filters, keyset paging, failing destinations
documents     documents' metadata and bytes (content-addressed), stored before they are accepted
operator      an operator's replay of a message, resend of its deliveries, match of a document
replays       a replayed message's deliveries still queued, replaced by its copy's
audit         who replayed, resent or viewed a payload, and when
users         the console's users (argon2id hashes, roles, lock-out) and sessions
repository    SqlMessageStore: the parts combined on one database
"""

from engine.store.db import create_db_engine
from engine.store.deliveries import DestinationBacklog, DueDelivery, NewDelivery, Outcome
from engine.store.documents import NewDocument, StoredDocument
from engine.store.index import IndexedResource
from engine.store.messages import Incoming, Processed, Stored
from engine.store.operator import ActionRefused, Replayed, UnknownDestination, Who
from engine.store.repository import SqlMessageStore
from engine.store.search import MESSAGE_STATES, DocumentQuery, MessageQuery
from engine.store.views import (
    AuditEntry,
    DeliveryView,
    DocumentLine,
    DocumentMatched,
    DocumentView,
    MessageLine,
    MessageSummary,
    MessageView,
    ResendOutcome,
)

__all__ = [
    "MESSAGE_STATES",
    "ActionRefused",
    "AuditEntry",
    "DeliveryView",
    "DestinationBacklog",
    "DocumentLine",
    "DocumentMatched",
    "DocumentQuery",
    "DocumentView",
    "DueDelivery",
    "IndexedResource",
    "Incoming",
    "MessageLine",
    "MessageQuery",
    "MessageSummary",
    "MessageView",
    "NewDelivery",
    "NewDocument",
    "Outcome",
    "Processed",
    "Replayed",
    "ResendOutcome",
    "SqlMessageStore",
    "Stored",
    "StoredDocument",
    "UnknownDestination",
    "Who",
    "create_db_engine",
]
