"""Seed a message store with a clinic group's months of traffic: the console bench's data.

``seed(db_engine, count)`` fills a migrated, empty store with ``count`` messages (received over
the last ``DAYS`` days, ids growing with time as the engine gives them) and their deliveries and
documents, spread as a practice group's interfaces spread them:

* **patients**: ``count // 8`` MRNs under three assigning authorities, skewed (a few patients
  have hundreds of messages, most a handful), so a search by MRN finds from one to hundreds;
* **senders**: 24 (sending application and facility) pairs, each with its own MSH-10 sequence;
* **types**: ADT (A01, A03, A04, A08), SIU (S12, S14, S15, S26), DFT^P03, ORU^R01, MDM^T02 and
  a few FHIR and document messages, weighted as a clinic's feeds are (ADT and SIU most);
* **states**: mostly delivered; error, unrouted, replayed, needs-patient, and a few dead letters
  (0.5 %); the last minutes' messages still received; for the last ``OUTAGE_HOURS`` the FHIR
  server is down: its deliveries wait, retrying with an error (the dashboard's queue), the
  messages routed;
* **deliveries**: one or two per routed message (FHIR server, MLLP peer, folder, Epic), in the
  state the message's state implies, created and delivered just after the message arrived;
* **documents**: one row per document message (scans, MDM documents), a few waiting for their
  patient.

Fast, because a bench must not spend its time seeding: the indexes of the filled tables are
dropped first and made again after (one sort each instead of a million index inserts); rows go
in batches of ``BATCH`` — ``executemany`` through SQLAlchemy on SQLite, ``COPY`` on PostgreSQL —
and the tables are analyzed at the end so the planner knows their size. Everything is drawn from
one seeded ``random.Random``: the same count and seed give the same rows.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, text

__all__ = ["DAYS", "SEED_VERSION", "Seeded", "seed"]

#: bump when the rows change: a cached seeded file of another version is made again
SEED_VERSION = 2
DAYS = 60
#: the last hours of the seed: the FHIR server is down, its deliveries queue up (retrying)
OUTAGE_HOURS = 2
BATCH = 50_000
SEED = 13

AUTHORITIES = (("OAKCLINIC", 0.80), ("RIVERSIDE", 0.15), ("CITYLAB", 0.05))
SENDERS = tuple(
    (app, facility)
    for app, facilities in (
        ("EPIC", ("OAKCLINIC", "OAKNORTH", "OAKSOUTH", "OAKWEST")),
        ("ATHENA", ("RIVERSIDE", "RIVERPEDS", "RIVERORTHO")),
        ("CERNER", ("CITYHOSP", "CITYER")),
        ("LABCORP", ("CITYLAB", "LABEAST")),
        ("QUEST", ("QUESTWEST", "QUESTNORTH")),
        ("NEXTGEN", ("DERMCLINIC", "ENTCLINIC", "EYECLINIC")),
        ("ECW", ("FAMILYMED", "URGENTCARE", "WOMENSHEALTH")),
        ("BILLING", ("CENTRALBILL", "REVCYCLE")),
        ("SCANNER", ("FRONTDESK", "MAILROOM", "FAXSERVER")),
    )
    for facility in facilities
)
#: (type, trigger, structure, weight, routes: (route, destination, delivery kind) ...)
TYPES: tuple[tuple[str, str, str, float, tuple[tuple[str, str, str], ...]], ...] = (
    ("ADT", "A04", "ADT_A01", 0.14, (("adt-to-fhir", "fhir-server", "fhir-bundle"),)),
    (
        "ADT",
        "A08",
        "ADT_A01",
        0.22,
        (("adt-to-fhir", "fhir-server", "fhir-bundle"), ("adt-copy", "billing-mllp", "hl7v2")),
    ),
    ("ADT", "A01", "ADT_A01", 0.04, (("adt-to-fhir", "fhir-server", "fhir-bundle"),)),
    ("ADT", "A03", "ADT_A03", 0.04, (("adt-to-fhir", "fhir-server", "fhir-bundle"),)),
    ("SIU", "S12", "SIU_S12", 0.16, (("siu-to-fhir", "fhir-server", "fhir-bundle"),)),
    ("SIU", "S14", "SIU_S12", 0.10, (("siu-to-fhir", "fhir-server", "fhir-bundle"),)),
    ("SIU", "S15", "SIU_S12", 0.04, (("siu-to-fhir", "fhir-server", "fhir-bundle"),)),
    ("SIU", "S26", "SIU_S12", 0.02, (("siu-to-fhir", "fhir-server", "fhir-bundle"),)),
    ("DFT", "P03", "DFT_P03", 0.10, (("charges", "billing-mllp", "hl7v2"),)),
    ("ORU", "R01", "ORU_R01", 0.09, (("results-to-folder", "results-folder", "hl7v2"),)),
    ("MDM", "T02", "MDM_T02", 0.02, (("documents-to-epic", "epic", "fhir-bundle"),)),
    ("Patient", "", "", 0.01, (("fhir-in", "fhir-server", "fhir-bundle"),)),
    ("document", "", "", 0.02, (("documents-to-epic", "epic", "fhir-bundle"),)),
)
#: message state -> weight (the last minutes' messages are received/processing instead)
STATES = (
    ("delivered", 0.935),
    ("error", 0.025),
    ("unrouted", 0.020),
    ("replayed", 0.0125),
    ("needs-patient", 0.0025),
    ("dead", 0.005),
)
ERRORS = (
    "HTTP 503 from fhir-server: Service Unavailable",
    "connection refused: 127.0.0.1:6661",
    "HTTP 400 from fhir-server: OperationOutcome: Patient.birthDate invalid",
    "ACK AE from billing-mllp: MSA-3 unknown account",
    "timed out after 30 s waiting for the ACK",
)
REASONS = {
    "error": ("PID-3 missing: no patient identifier", "MSH-9 ZZZ^Z01 not supported"),
    "unrouted": ("no route takes SIU^S15 from ECW^URGENTCARE",),
}
LAST = ("SMITH", "JOHNSON", "GARCIA", "NGUYEN", "PATEL", "KIM", "BROWN", "LOPEZ", "MILLER", "DAVIS")
FIRST = ("ALEX", "JORDAN", "SAM", "TAYLOR", "RILEY", "CASEY", "JAMIE", "MORGAN", "AVERY", "QUINN")
DOC_TYPES = ("insurance-card", "consent", "referral", "lab-report", "id-card")

_MESSAGE_COLUMNS = (
    "id",
    "received_at",
    "channel",
    "peer",
    "kind",
    "size",
    "raw",
    "control_id",
    "message_type",
    "trigger",
    "structure",
    "sending_application",
    "sending_facility",
    "dedupe_key",
    "replay_of",
    "patient_key",
    "state",
    "reason",
    "warnings",
    "claimed_by",
    "claimed_at",
    "updated_at",
)
_DELIVERY_COLUMNS = (
    "id",
    "message_id",
    "destination",
    "route",
    "kind",
    "content_type",
    "payload",
    "patient_key",
    "state",
    "attempts",
    "next_attempt_at",
    "claimed_until",
    "claimed_by",
    "resend_of",
    "last_error",
    "created_at",
    "delivered_at",
)
_DOCUMENT_COLUMNS = (
    "id",
    "received_at",
    "message_id",
    "sha256",
    "size",
    "media_type",
    "patient_mrn",
    "patient_authority",
    "document_type",
    "document_date",
    "channel",
    "sender",
    "file_name",
    "dedupe_key",
    "updated_at",
)
SEEDED_TABLES = ("messages", "deliveries", "documents")


@dataclass(frozen=True)
class Seeded:
    """What was seeded and how long it took."""

    messages: int
    deliveries: int
    documents: int
    seconds: float
    first_received: datetime
    last_received: datetime


def _cumulative(weights: Sequence[float]) -> list[float]:
    total, out = 0.0, []
    for w in weights:
        total += w
        out.append(total)
    return [c / total for c in out]


def _pick(rng: random.Random, items: Sequence[Any], cumulative: Sequence[float]) -> Any:
    r = rng.random()
    for item, c in zip(items, cumulative, strict=True):
        if r <= c:
            return item
    return items[-1]


class _Rows:
    """Generates the rows, message by message, in id order."""

    def __init__(self, count: int, now: datetime, seed: int) -> None:
        self.rng = random.Random(seed)
        self.count = count
        self.patients = max(count // 8, 10)
        #: naive UTC times: SQLite keeps the wall time, PostgreSQL's COPY reads them in UTC
        self.start = (now - timedelta(days=DAYS)).astimezone(UTC).replace(tzinfo=None)
        self.step = DAYS * 86400.0 / count
        self.type_cum = _cumulative([t[3] for t in TYPES])
        self.state_cum = _cumulative([w for _, w in STATES])
        self.auth_cum = _cumulative([w for _, w in AUTHORITIES])
        self.sequence = [0] * len(SENDERS)
        #: who sends what: EHRs ADT, SIU and FHIR; billing charges; labs results; scanners
        #: documents
        apps = {
            "ADT": ("EPIC", "ATHENA", "CERNER", "NEXTGEN", "ECW"),
            "DFT": ("BILLING", "EPIC", "ATHENA"),
            "ORU": ("LABCORP", "QUEST", "CERNER"),
            "MDM": ("EPIC", "CERNER"),
            "document": ("SCANNER",),
            "Patient": ("EPIC", "ATHENA"),
        }
        apps["SIU"] = apps["ADT"]
        self.senders_of = {
            kind: [n for n, (app, _f) in enumerate(SENDERS) if app in names]
            for kind, names in apps.items()
        }
        self.delivery_id = 0
        self.document_id = 0
        self.recent = count - max(count // 20_000, 5)  # the last minutes: still in flight
        self.outage_from = (
            (now - timedelta(hours=OUTAGE_HOURS)).astimezone(UTC).replace(tzinfo=None)
        )

    def patient(self) -> tuple[str, str]:
        # skewed: u**3 puts a few patients under many messages, most under a handful
        n = 1 + int(self.patients * self.rng.random() ** 3)
        authority = _pick(self.rng, AUTHORITIES, self.auth_cum)[0]
        return authority, f"MRN{n:07d}"

    def batches(self) -> Iterator[tuple[list[tuple[Any, ...]], ...]]:
        """(messages, deliveries, documents) rows, ``BATCH`` messages at a time."""
        msgs: list[tuple[Any, ...]] = []
        dels: list[tuple[Any, ...]] = []
        docs: list[tuple[Any, ...]] = []
        for i in range(1, self.count + 1):
            self._one(i, msgs, dels, docs)
            if len(msgs) >= BATCH:
                yield msgs, dels, docs
                msgs, dels, docs = [], [], []
        if msgs:
            yield msgs, dels, docs

    def _one(
        self,
        i: int,
        msgs: list[tuple[Any, ...]],
        dels: list[tuple[Any, ...]],
        docs: list[tuple[Any, ...]],
    ) -> None:
        rng = self.rng
        at = self.start + timedelta(seconds=(i - 1 + rng.random() * 0.5) * self.step)
        kind_type, trigger, structure, _w, routes = _pick(rng, TYPES, self.type_cum)
        s = rng.choice(self.senders_of[kind_type])
        app, facility = SENDERS[s]
        self.sequence[s] += 1
        control_id = f"{app[:3]}{facility[:3]}{self.sequence[s]:09d}"
        authority, mrn = self.patient()
        patient_key = f"{authority}|{mrn}"
        state = "received" if i > self.recent else _pick(rng, STATES, self.state_cum)[0]
        if (
            state == "delivered"
            and at >= self.outage_from
            and any(d == "fhir-server" for _r, d, _k in routes)
        ):
            state = "routed"  # its FHIR delivery waits for the server to come back
        if kind_type == "document":
            kind, channel, mtype, trig, struct = "document", "http", None, None, None
            raw = json.dumps({"mrn": mrn, "authority": authority, "type": "consent"}).encode()
            control_id_value: str | None = None
        elif kind_type == "Patient":
            kind, channel, mtype, trig, struct = "fhir", "http", "Patient", None, None
            raw = (
                '{"resourceType":"Patient","identifier":[{"system":"urn:engine:identifier:'
                f'{authority}","value":"{mrn}"}}],"name":[{{"family":"{rng.choice(LAST)}"}}]}}'
            ).encode()
            control_id_value = None
        else:
            kind, channel = "hl7v2", "mllp"
            mtype, trig, struct = kind_type, trigger, structure
            stamp = at.strftime("%Y%m%d%H%M%S")
            raw = (
                f"MSH|^~\\&|{app}|{facility}|ENGINE|HUB|{stamp}||{mtype}^{trig}^{struct}|"
                f"{control_id}|P|2.5.1\rEVN|{trig}|{stamp}\r"
                f"PID|1||{mrn}^^^{authority}^MR||{rng.choice(LAST)}^{rng.choice(FIRST)}||"
                f"19{rng.randrange(30, 99)}0{rng.randrange(1, 9)}1{rng.randrange(0, 9)}|"
                f"{rng.choice('FM')}\rPV1|1|O|{facility}^EXAM{rng.randrange(1, 9)}\r"
            ).encode()
            control_id_value = control_id
        reason = None
        if state in REASONS:
            reason = rng.choice(REASONS[state])
        elif state == "dead":
            reason = "a delivery is dead"
        dedupe = (
            f"{app}|{facility}|{control_id_value}"
            if control_id_value and state != "error"
            else None
        )
        msgs.append(
            (
                i,
                at,
                channel,
                f"10.0.{s}.{rng.randrange(2, 250)}:{rng.randrange(30000, 60000)}",
                kind,
                len(raw),
                raw,
                control_id_value,
                mtype,
                trig,
                struct,
                app,
                facility,
                dedupe,
                None,
                patient_key,
                state,
                reason,
                None,
                None,
                None,
                at + timedelta(milliseconds=400),
            )
        )
        if state in ("error", "unrouted", "received"):
            return
        for n, (route, destination, dkind) in enumerate(routes):
            self._delivery(i, at, n, route, destination, dkind, raw, patient_key, state, dels)
        if kind == "document" or kind_type == "MDM":
            self._document(i, at, authority, mrn, app, facility, state, docs)

    def _delivery(
        self,
        message_id: int,
        at: datetime,
        n: int,
        route: str,
        destination: str,
        dkind: str,
        raw: bytes,
        patient_key: str,
        state: str,
        dels: list[tuple[Any, ...]],
    ) -> None:
        rng = self.rng
        self.delivery_id += 1
        created = at + timedelta(milliseconds=60 + n)
        attempts, error, delivered_at, next_at = 1, None, None, created
        if state == "routed" and destination == "fhir-server":
            dstate = "pending"
            attempts = rng.randrange(1, 7)
            error = rng.choice(ERRORS[:2])
            next_at = created + timedelta(seconds=30 * 2**attempts)
        elif state == "dead" and n == 0:
            dstate, attempts, error = "dead", 8, rng.choice(ERRORS)
        elif state == "needs-patient" and destination == "epic":
            dstate, error = "needs-patient", "Epic: no patient with this MRN"
        elif state == "needs-patient" and n == 0:
            dstate, error = "needs-patient", "no patient with this MRN"
        else:
            dstate = "delivered"
            delivered_at = created + timedelta(milliseconds=200 + rng.randrange(0, 800))
        if dkind == "hl7v2":
            payload, ctype = raw, "x-application/hl7-v2+er7"
        else:
            payload = (
                '{"resourceType":"Bundle","type":"transaction","entry":[{"fullUrl":'
                f'"urn:engine:{patient_key}","resource":{{"resourceType":"Patient"}},'
                '"request":{"method":"PUT","url":"Patient"}}]}'
            ).encode()
            ctype = "application/fhir+json"
        dels.append(
            (
                self.delivery_id,
                message_id,
                destination,
                route,
                dkind,
                ctype,
                payload,
                patient_key,
                dstate,
                attempts,
                next_at,
                None,
                None,
                None,
                error,
                created,
                delivered_at,
            )
        )

    def _document(
        self,
        message_id: int,
        at: datetime,
        authority: str,
        mrn: str,
        app: str,
        facility: str,
        state: str,
        docs: list[tuple[Any, ...]],
    ) -> None:
        self.document_id += 1
        sha = hashlib.sha256(f"doc{self.document_id}".encode()).hexdigest()
        size = self.rng.randrange(40_000, 2_000_000)
        docs.append(
            (
                self.document_id,
                at,
                message_id,
                sha,
                size,
                "application/pdf",
                mrn,
                authority,
                self.rng.choice(DOC_TYPES),
                at.strftime("%Y-%m-%d"),
                "folder" if app == "SCANNER" else "mllp",
                f"{app}^{facility}",
                f"scan-{self.document_id:07d}.pdf",
                f"{sha}|{authority}|{mrn}",
                at,
            )
        )


# -- indexes ---------------------------------------------------------------------------------


def _indexes(conn: Any, dialect: str) -> list[tuple[str, str]]:
    """(name, CREATE statement) of every index on the seeded tables but the primary keys."""
    if dialect == "sqlite":
        rows = conn.exec_driver_sql(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
            f"AND tbl_name IN ({', '.join(repr(t) for t in SEEDED_TABLES)})"
        )
        return [(r[0], r[1]) for r in rows]
    rows = conn.execute(
        text(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i "
            "WHERE i.schemaname = current_schema() AND i.tablename = ANY(:tables) "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname "
            "AND c.connamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema()))"
        ),
        {"tables": list(SEEDED_TABLES)},
    )
    return [(r[0], r[1]) for r in rows]


# -- writing ---------------------------------------------------------------------------------


def _sqlite_time(value: datetime | None) -> str | None:
    """SQLAlchemy's SQLite DATETIME text (UTC wall time, microseconds; the rows' times are
    naive UTC already)."""
    return None if value is None else value.isoformat(" ", "microseconds")


def _sqlite_rows(rows: list[tuple[Any, ...]], time_columns: Sequence[int]) -> list[tuple[Any, ...]]:
    out = []
    for row in rows:
        values = list(row)
        for c in time_columns:
            values[c] = _sqlite_time(values[c])
        out.append(tuple(values))
    return out


def _time_columns(columns: Sequence[str]) -> list[int]:
    names = {
        "received_at",
        "claimed_at",
        "updated_at",
        "next_attempt_at",
        "claimed_until",
        "created_at",
        "delivered_at",
    }
    return [n for n, c in enumerate(columns) if c in names]


def _insert_sqlite(conn: Any, table: str, columns: Sequence[str], rows: list[Any]) -> None:
    if not rows:
        return
    marks = ", ".join("?" for _ in columns)
    conn.exec_driver_sql(
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})",
        _sqlite_rows(rows, _time_columns(columns)),
    )


def _copy_postgres(cursor: Any, table: str, columns: Sequence[str], rows: list[Any]) -> None:
    if not rows:
        return
    with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def seed(
    db_engine: Engine, count: int, *, now: datetime | None = None, rng_seed: int = SEED
) -> Seeded:
    """Fill the (migrated, empty) store with ``count`` messages; see the module's docstring."""
    started = time.perf_counter()
    now = now or datetime.now(UTC)
    rows = _Rows(count, now, rng_seed)
    dialect = db_engine.dialect.name
    totals = [0, 0, 0]
    with db_engine.begin() as conn:
        existing = conn.exec_driver_sql("SELECT count(*) FROM messages").scalar_one()
        if existing:
            raise RuntimeError(f"the store already holds {existing} messages")
        indexes = _indexes(conn, dialect)
        for name, _sql in indexes:
            conn.exec_driver_sql(f"DROP INDEX {name}")
    if dialect == "sqlite":
        with db_engine.begin() as conn:
            for msgs, dels, docs in rows.batches():
                _insert_sqlite(conn, "messages", _MESSAGE_COLUMNS, msgs)
                _insert_sqlite(conn, "deliveries", _DELIVERY_COLUMNS, dels)
                _insert_sqlite(conn, "documents", _DOCUMENT_COLUMNS, docs)
                totals = [totals[0] + len(msgs), totals[1] + len(dels), totals[2] + len(docs)]
    else:
        raw = db_engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute("SET TIME ZONE 'UTC'")  # the rows' naive times are UTC
            for msgs, dels, docs in rows.batches():
                _copy_postgres(cursor, "messages", _MESSAGE_COLUMNS, msgs)
                _copy_postgres(cursor, "deliveries", _DELIVERY_COLUMNS, dels)
                _copy_postgres(cursor, "documents", _DOCUMENT_COLUMNS, docs)
                totals = [totals[0] + len(msgs), totals[1] + len(dels), totals[2] + len(docs)]
            raw.commit()
        finally:
            raw.close()
    with db_engine.begin() as conn:
        for _name, sql in indexes:
            conn.exec_driver_sql(sql)
        if dialect == "postgresql":
            for table in SEEDED_TABLES:
                conn.exec_driver_sql(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"(SELECT coalesce(max(id), 1) FROM {table}))"
                )
        for table in SEEDED_TABLES:
            conn.exec_driver_sql(f"ANALYZE {table}")
    return Seeded(
        messages=totals[0],
        deliveries=totals[1],
        documents=totals[2],
        seconds=time.perf_counter() - started,
        first_received=rows.start.replace(tzinfo=UTC),
        last_received=now,
    )
