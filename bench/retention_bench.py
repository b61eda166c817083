"""Retention on PostgreSQL at ten million messages: does pruning slow ingest (issue 14)?

Goal: the batched purge (engine/jobs/retention.py) holds no lock over 100 ms a batch, and pruning
with 10 million stored messages slows ingest by at most 10 %.

* **The store**: a schema of its own in the local cluster (``ENGINE_TEST_POSTGRES_URL``, database
  ``test``), migrated by the engine and seeded on the server (``INSERT ... SELECT
  generate_series``, a million ids a statement; the indexes dropped first and built once after,
  as :mod:`bench.console_seed` does) with ``RETENTION_BENCH_N`` messages (default 10,000,000;
  ``--quick`` 200,000) received over the last ``DAYS`` days: 97 % delivered, 1 % unrouted, 1 %
  error and 1 % dead (these two are never purged), one delivery each and a second for every
  third (a dead message's first one dead), two recorded attempts for every 20th delivery, and
  for every 100th message a document (its row, its bytes' row and a 1 KiB chunk). With a
  retention period of ``RETENTION_DAYS`` days, 90 % of them are past it. Then ``VACUUM
  ANALYZE``, so no hint bits nor statistics are left for the measured minutes to write. The
  schema is dropped at the end, also after an error or Ctrl-C.
* **Ingest**: ``engine serve`` on that schema (receiver and worker, the worker delivering to a
  file drop: :func:`bench.console_bench._served`, whose own retention period is ten years, so
  only the bench purges) takes ADT messages from 8 MLLP senders flat out (the senders of
  ``bench/mllp_load.py``, each sending its next message when the ACK arrives): at a fixed offered
  rate the ACK rate would not move whatever the purge cost; flat out, it is the capacity left.
* **Pruning**: the bench runs ``purge_in_batches`` against the same database, as the leader's
  worker does (its batches, their sizing, its pauses), in a thread of its own process; the
  store's purge waits between batches while the switch is off (that wait is taken out of the
  batch's time through the function's ``clock``). The switch is off and on in alternate slots
  of ``RETENTION_BENCH_SLOT_S`` seconds (default 10), ``RETENTION_BENCH_SLOTS`` of them (default
  60, or ``--minutes``). Each slot's ingest rate is its ACKs per second; each slot on is paired
  with the slots off beside it, and the mean slowdown is given with a 95 % bootstrap interval
  (:func:`bench.console_bench._paired_interval`). The goal counts as met only when the
  interval's upper end is at most 10 % and no batch held its locks over 100 ms. The run ends
  early when the purge has nothing left to purge (the slot in which it ran out is not counted).

Also reported: the longest a batch held its locks (the budget's measure, the store's: see
engine/jobs/retention.py) and the slowest whole call, the batches over 100 ms by each, messages
(and deliveries) purged per
second of pruning. A batch in flight when a slot turns off finishes in that slot (one batch at
most). The purge's Python runs in the bench's process, not the engine's worker: on the same two
cores, the same CPU. Run it un-niced and alone: a batch whose process is descheduled holds its
transaction's locks the longer.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.store.messages import Purged

from sqlalchemy import Engine, text

from bench.harness import Options, environment

__all__ = ["run", "seed_store"]

GOAL_PCT = 10.0
BUDGET_MS = 100.0
DAYS = 60
RETENTION_DAYS = 6
SENDERS = 8
#: ids a seeding statement inserts
CHUNK = 1_000_000
#: the load's start before the first slot (its senders connecting)
RAMP_S = 2.0

_MESSAGES = text("""
INSERT INTO messages (id, received_at, channel, peer, kind, size, raw, control_id, message_type,
    trigger, structure, sending_application, sending_facility, dedupe_key, patient_key, state,
    reason, updated_at)
SELECT g, t, CASE WHEN doc THEN 'http' ELSE 'mllp' END, '10.0.' || mod(g, 8) || '.20',
    CASE WHEN doc THEN 'document' ELSE 'hl7v2' END, octet_length(r), convert_to(r, 'UTF8'),
    CASE WHEN doc THEN NULL ELSE 'S' || g END, CASE WHEN doc THEN NULL ELSE 'ADT' END,
    CASE WHEN doc THEN NULL ELSE 'A08' END, CASE WHEN doc THEN NULL ELSE 'ADT_A01' END,
    'SEED', 'FAC' || mod(g, 8),
    CASE WHEN doc OR state = 'error' THEN NULL ELSE 'SEED|FAC' || mod(g, 8) || '|S' || g END,
    'CLINIC|' || mrn, state,
    CASE state WHEN 'error' THEN 'PID-3 missing: no patient identifier'
               WHEN 'dead' THEN 'a delivery is dead' END,
    t + interval '400 milliseconds'
FROM (
    SELECT g, t, doc, mrn,
        CASE WHEN draw < 970 THEN 'delivered' WHEN draw < 980 THEN 'unrouted'
             WHEN draw < 990 THEN 'error' ELSE 'dead' END AS state,
        CASE WHEN doc THEN '{"mrn": "' || mrn || '", "authority": "CLINIC", "type": "consent"}'
        ELSE 'MSH|^~\\&|SEED|FAC' || mod(g, 8) || '|ENGINE|HUB|' || stamp
            || '||ADT^A08^ADT_A01|S' || g || '|P|2.5.1' || chr(13) || 'EVN|A08|' || stamp
            || chr(13) || 'PID|1||' || mrn || '^^^CLINIC^MR||SEED^PATIENT' || mod(g, 97)
            || '||19800101|F|||1 Main St^^Springfield^IL^62701' || chr(13)
            || 'PV1|1|O|CLINIC^EXAM1^1' || chr(13) END AS r
    FROM (
        SELECT g, t, mod(g, 100) = 50 AS doc, mod(mod(g, 1000) * 7919, 1000) AS draw,
            'MRN' || lpad(mod(g, :patients)::text, 7, '0') AS mrn,
            to_char(t AT TIME ZONE 'UTC', 'YYYYMMDDHH24MISS') AS stamp
        FROM (
            SELECT g, CAST(:now AS timestamptz)
                - make_interval(secs => :span * (:n - g)::float8 / :n) AS t
            FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS g
        ) AS timed
    ) AS drawn
) AS rows
""")
_DELIVERIES = text("""
INSERT INTO deliveries (message_id, destination, route, kind, content_type, payload, patient_key,
    state, attempts, next_attempt_at, last_error, created_at, delivered_at)
SELECT m.id,
    CASE WHEN v.k = 1 THEN 'fhir-server' ELSE 'billing-mllp' END,
    CASE WHEN v.k = 1 THEN 'adt-to-fhir' ELSE 'adt-copy' END,
    CASE WHEN v.k = 1 THEN 'fhir-bundle' ELSE 'hl7v2' END,
    CASE WHEN v.k = 1 THEN 'application/fhir+json' ELSE 'x-application/hl7-v2+er7' END,
    CASE WHEN v.k = 1 THEN convert_to('{"resourceType": "Bundle", "type": "transaction", '
        || '"entry": [{"fullUrl": "urn-engine-' || m.patient_key || '", "resource": '
        || '{"resourceType": "Patient"}, "request": {"method": "PUT", "url": "Patient"}}]}',
        'UTF8') ELSE m.raw END,
    m.patient_key,
    CASE WHEN m.state = 'dead' AND v.k = 1 THEN 'dead' ELSE 'delivered' END,
    CASE WHEN m.state = 'dead' AND v.k = 1 THEN 8 ELSE 1 END,
    m.received_at + interval '60 milliseconds',
    CASE WHEN m.state = 'dead' AND v.k = 1
        THEN 'HTTP 503 from fhir-server: Service Unavailable' END,
    m.received_at + interval '60 milliseconds',
    CASE WHEN m.state = 'dead' AND v.k = 1 THEN NULL
        ELSE m.received_at + interval '300 milliseconds' END
FROM messages AS m CROSS JOIN (VALUES (1), (2)) AS v(k)
WHERE m.id BETWEEN :lo AND :hi AND m.state IN ('delivered', 'dead')
    AND (v.k = 1 OR mod(m.id, 3) = 0)
ORDER BY m.id, v.k
""")
_ATTEMPTS = text("""
INSERT INTO delivery_attempts (delivery_id, attempt, at, outcome, status, error_class, error,
    duration_ms)
SELECT d.id, v.a, d.created_at + v.a * interval '30 seconds',
    CASE WHEN v.a = 1 THEN 'retry' ELSE 'delivered' END, CASE WHEN v.a = 1 THEN 503 ELSE 200 END,
    CASE WHEN v.a = 1 THEN 'HTTPStatusError' END,
    CASE WHEN v.a = 1 THEN 'HTTP 503 from fhir-server: Service Unavailable' END, 40
FROM deliveries AS d CROSS JOIN (VALUES (1), (2)) AS v(a)
WHERE mod(d.id, 20) = 0
ORDER BY d.id, v.a
""")
_DOCUMENTS = text("""
INSERT INTO documents (received_at, message_id, sha256, size, media_type, patient_mrn,
    patient_authority, document_type, document_date, channel, sender, file_name, dedupe_key,
    updated_at)
SELECT m.received_at, m.id, h.sha, 1024, 'application/pdf', split_part(m.patient_key, '|', 2),
    'CLINIC', 'consent', to_char(m.received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD'), 'http',
    'SCANNER^FRONTDESK', 'scan-' || m.id || '.pdf', h.sha || '|' || m.patient_key, m.updated_at
FROM messages AS m CROSS JOIN LATERAL (SELECT md5('a' || m.id) || md5('b' || m.id) AS sha) AS h
WHERE m.kind = 'document' AND m.state <> 'error'
ORDER BY m.id
""")
_BLOBS = (
    text(
        "INSERT INTO document_blobs (sha256, size, chunks, created_at, stored)"
        " SELECT sha256, 1024, 1, received_at, 'db' FROM documents"
    ),
    text(
        "INSERT INTO document_chunks (sha256, seq, data)"
        " SELECT sha256, 0, convert_to(repeat('PDF seed bytes. ', 64), 'UTF8') FROM documents"
    ),
)
SEEDED = (
    "messages",
    "deliveries",
    "delivery_attempts",
    "documents",
    "document_blobs",
    "document_chunks",
)


# -- the store -----------------------------------------------------------------------------------


def seed_store(db_engine: Engine, count: int, *, now: datetime | None = None) -> dict[str, Any]:
    """Fill the migrated, empty PostgreSQL store with ``count`` messages received over the
    last ``DAYS`` days and what goes with them (see the module); their indexes dropped first
    and made again after, the tables vacuumed and analyzed. Rows per table and seconds."""
    from bench.console_seed import _indexes

    started = time.perf_counter()
    now = now or datetime.now(UTC)
    with db_engine.begin() as conn:
        if conn.exec_driver_sql("SELECT count(*) FROM messages").scalar_one():
            raise RuntimeError("the store already holds messages")
        indexes = _indexes(conn, "postgresql")  # messages, deliveries, documents
        for name, _sql in indexes:
            conn.exec_driver_sql(f"DROP INDEX {name}")
    span, patients = DAYS * 86400.0, max(count // 8, 10)
    for lo in range(1, count + 1, CHUNK):
        hi = min(count, lo + CHUNK - 1)
        with db_engine.begin() as conn:
            conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
            bounds = {"lo": lo, "hi": hi}
            conn.execute(
                _MESSAGES, {**bounds, "n": count, "span": span, "now": now, "patients": patients}
            )
            conn.execute(_DELIVERIES, bounds)
    with db_engine.begin() as conn:
        for statement in (_ATTEMPTS, _DOCUMENTS, *_BLOBS):
            conn.execute(statement)
    with db_engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL maintenance_work_mem = '512MB'")
        for _name, sql in indexes:
            conn.exec_driver_sql(sql)
        conn.exec_driver_sql(
            "SELECT setval(pg_get_serial_sequence('messages', 'id'), "
            "(SELECT coalesce(max(id), 1) FROM messages))"
        )
    with db_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in SEEDED:
            conn.exec_driver_sql(f"VACUUM ANALYZE {table}")
        rows = {t: conn.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar_one() for t in SEEDED}
    return {**rows, "days": DAYS, "seconds": round(time.perf_counter() - started, 1)}


def purgeable(db_engine: Engine, older_than: timedelta) -> int:
    """The messages the purge would take now (delivered or unrouted, settled before the
    cutoff)."""
    with db_engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM messages WHERE state IN ('delivered', 'unrouted')"
                    " AND updated_at < :cutoff"
                ),
                {"cutoff": datetime.now(UTC) - older_than},
            ).scalar_one()
        )


@contextlib.contextmanager
def private_schema() -> Iterator[str]:
    """A URL whose search path is a new schema in the local cluster, migrated by the engine;
    the schema is dropped at the end, whatever ends the run."""
    from bench.console_bench import _migrated, _postgres_base
    from engine.store import create_db_engine

    base = _postgres_base()
    schema = f"bench_retention_{secrets.token_hex(4)}"
    admin = create_db_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base else "?"
    url = f"{base}{sep}options=-csearch_path%3D{schema}"
    try:
        _migrated(url).dispose()
        yield url
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


# -- pruning, switched ---------------------------------------------------------------------------


class SwitchedPurge:
    """``purge_in_batches`` in a thread, on the store's purge made to wait between batches
    while :attr:`on` is clear. The waits are taken out of the batch times the function
    measures (its ``clock``), so its batch sizing and its slowest batch are as the leader's."""

    def __init__(
        self, store: Any, older_than: timedelta, budget_s: float, duty: float | None = None
    ) -> None:
        self.store = store
        #: the share of the time purging (None: the leader's, engine/jobs/retention.py)
        self.duty = duty
        self.db_engine: Engine = store.db_engine
        self.on = threading.Event()
        self.halt = threading.Event()
        self.waited = 0.0
        #: each batch: when it ended, its whole call (s), how long it held its locks (s), rows
        self.batches: list[tuple[float, float, float, int]] = []
        #: batches PostgreSQL cancelled at their lock limit (each tried again narrower)
        self.cancelled = 0
        #: the first 100 batches over the budget by either measure: which, and what they held
        self.slow: list[dict[str, Any]] = []
        self.report: Any = None
        #: the walk reached its end: nothing left to purge
        self.ran_out = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(older_than, budget_s), name="retention", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """Halt it between batches and wait for it; raise what it failed with."""
        self.halt.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=60)
        if self.error is not None:
            raise RuntimeError(f"the purge failed: {self.error!r}") from self.error

    def purge_range(
        self,
        older_than: timedelta,
        id_range: tuple[int, int] | None = None,
        lock_limit_s: float | None = None,
    ) -> Purged:
        from engine.store.messages import Purged

        paused = time.perf_counter()
        while not self.on.wait(0.05):
            if self.halt.is_set():
                return Purged(0)
        self.waited += time.perf_counter() - paused
        started = time.perf_counter()
        batch: Purged = self.store.purge_range(
            older_than, id_range=id_range, lock_limit_s=lock_limit_s
        )
        took = time.perf_counter() - started
        if max(took, batch.held_s) > BUDGET_MS / 1000 and len(self.slow) < 100:
            self.slow.append(
                {
                    "at": round(time.time(), 3),
                    "rows": batch.rows,
                    "cancelled": batch.cancelled,
                    "read": batch.read,
                    "read_documents": batch.read_documents,
                    "documents": batch.documents,
                    "lock_ms": round(1000 * batch.held_s, 1),
                    "call_ms": round(1000 * took, 1),
                }
            )
        self.cancelled += batch.cancelled
        self.batches.append((time.time(), took, batch.held_s, batch.rows))
        return batch

    def clock(self) -> float:
        return time.perf_counter() - self.waited

    def _run(self, older_than: timedelta, budget_s: float) -> None:
        from engine.jobs.retention import purge_in_batches

        try:
            duty = {} if self.duty is None else {"duty": self.duty}
            self.report = purge_in_batches(
                self, older_than, budget_s=budget_s, stop=self.halt.is_set, clock=self.clock, **duty
            )
            self.ran_out = not self.halt.is_set()
        except BaseException as exc:  # reported by stop()
            self.error = exc


# -- the load ------------------------------------------------------------------------------------


async def _flat_out(port: int, senders: int, seconds: float) -> dict[str, Any]:
    """``senders`` MLLP senders, each sending its next message when the ACK arrives, until
    SIGTERM or ``seconds``; each ACK's wall-clock time."""
    from bench.mllp_load import sender

    latencies: list[float] = []
    codes: list[str] = []
    acked: list[float] = []
    done = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, done.set)
    tasks = [
        asyncio.create_task(sender(port, s, senders, 10**9, 0.0, latencies, codes, acked))
        for s in range(senders)
    ]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), seconds)
    errors = [
        repr(t.exception()) for t in tasks if t.done() and not t.cancelled() and t.exception()
    ]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "acks": acked,
        "positive": sum(c in ("AA", "CA") for c in codes),
        "messages": len(codes),
        "errors": errors,
    }


def _start_load(port: int, seconds: float, acks: Path) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "bench.retention_bench", "load", str(port), str(SENDERS)]
    return subprocess.Popen([*args, str(seconds), str(acks)], stdout=subprocess.PIPE, text=True)


def _stop_load(load: subprocess.Popen[str], acks: Path) -> list[float]:
    """Stop the load; the ACK times (it must have had only positive ACKs)."""
    if load.poll() is None:
        load.send_signal(signal.SIGTERM)
    out, _ = load.communicate(timeout=60)
    result = json.loads(out.strip().splitlines()[-1])
    if result["errors"] or result["positive"] != result["messages"]:
        raise RuntimeError(f"the load failed: {result}")
    return sorted(float(t) for t in acks.read_text().split())


# -- slots ---------------------------------------------------------------------------------------

#: (start, end, pruning on, whole): wall-clock; ``whole`` is false for the slot in which the
#: purge ran out
Slot = tuple[float, float, bool, bool]


def alternate(
    load: subprocess.Popen[str], purge: SwitchedPurge, slot_s: float, slots: int
) -> list[Slot]:
    """Pruning off and on in turn, ``slot_s`` seconds each, off first; ends early once the
    purge has nothing left (after the slot off it ran out in, or at once in a slot on)."""
    out: list[Slot] = []
    for i in range(slots):
        on = i % 2 == 1
        (purge.on.set if on else purge.on.clear)()
        start = time.time()
        ran_out = False
        while (left := start + slot_s - time.time()) > 0:
            if load.poll() is not None:
                raise RuntimeError(f"the load ended early (exit {load.returncode})")
            if on and not purge.running():
                ran_out = True
                break
            time.sleep(min(0.05, left))
        out.append((start, time.time(), on, not ran_out))
        if ran_out or not purge.running():
            break
    purge.on.clear()
    return out


def slot_rates(
    acks: list[float], slots: list[Slot], slot_s: float
) -> list[tuple[bool, float] | None]:
    """Each slot's ACKs per second, in order; None for a slot that does not count (the purge
    ran out in it, or cut short)."""
    out: list[tuple[bool, float] | None] = []
    for start, end, on, whole in slots:
        if not whole or end - start < slot_s * 0.99:
            out.append(None)
            continue
        n = bisect.bisect_left(acks, end) - bisect.bisect_left(acks, start)
        out.append((on, n / (end - start)))
    return out


def paired(rates: list[tuple[bool, float] | None]) -> list[float]:
    """Each counted slot on against the counted slots off beside it (``console_bench._paired``
    over each run of counted slots): its slowdown in %."""
    from bench.console_bench import _paired

    out: list[float] = []
    run: list[tuple[bool, float]] = []
    for rate in [*rates, None]:
        if rate is None:
            out += _paired(run)
            run = []
        else:
            run.append(rate)
    return out


def interval(pairs: list[float]) -> dict[str, Any]:
    """The pairs' mean slowdown with its 95 % bootstrap interval (the console bench's), the
    goal shown met only when the upper end is within ``GOAL_PCT``."""
    from bench.console_bench import _paired_interval

    out = _paired_interval(pairs)
    if "ci95_pct" in out:
        out["goal_pct"] = GOAL_PCT
        out["goal_shown_met"] = out["ci95_pct"][1] <= GOAL_PCT
    return out


def purge_figures(
    purge: SwitchedPurge, slots: list[Slot], deliveries_purged: int | None = None
) -> dict[str, Any]:
    """What the purge did while it was on: batches, the slowest, messages per second."""
    times = sorted(took for _at, took, _held, _n in purge.batches)
    held = sorted(h for _at, _took, h, _n in purge.batches)
    purged = sum(n for *_, n in purge.batches)
    on_s = 0.0
    last = purge.batches[-1][0] if purge.batches else 0.0
    for start, end, on, whole in slots:
        if on:
            on_s += max(0.0, (end if whole else min(end, last)) - start)
    per_slot = [
        sum(n for at, *_, n in purge.batches if start <= at < end) for start, end, *_ in slots
    ]

    def p99(values: list[float]) -> float | None:
        if not values:
            return None
        q = (
            statistics.quantiles(values, n=100, method="inclusive")
            if len(values) > 1
            else values * 99
        )
        return round(1000 * q[98], 1)

    out: dict[str, Any] = {
        "batches": len(times),
        "messages_purged": purged,
        # the budget's measure: how long each batch held its locks (the store's, see
        # engine/jobs/retention.py); the whole call beside it
        "longest_lock_ms": round(1000 * held[-1], 1) if held else None,
        "p99_lock_ms": p99(held),
        "batches_over_100ms": sum(t > BUDGET_MS / 1000 for t in held),
        "batches_cancelled": purge.cancelled,
        "slowest_batch_ms": round(1000 * times[-1], 1) if times else None,
        "p99_batch_ms": p99(times),
        "calls_over_100ms": sum(t > BUDGET_MS / 1000 for t in times),
        "seconds_on": round(on_s, 1),
        "messages_per_s": round(purged / on_s, 1) if on_s else None,
        "messages_per_slot": per_slot,
        "ran_out": purge.ran_out,
        # each batch over the budget by either measure: its rows, how many were documents (on
        # PostgreSQL a transaction of their own beside the one statement), lock and call ms
        "over_budget": purge.slow,
    }
    if deliveries_purged is not None:
        out["deliveries_purged"] = deliveries_purged
        out["deliveries_per_s"] = round(deliveries_purged / on_s, 1) if on_s else None
    return out


# -- a measured run ------------------------------------------------------------------------------


def _seeded_deliveries(db_engine: Engine, newest_seeded: int) -> int:
    with db_engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM deliveries WHERE message_id <= :n"),
                {"n": newest_seeded},
            ).scalar_one()
        )


def _dead_tuples(db_engine: Engine) -> dict[str, Any]:
    with db_engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT relname, n_dead_tup FROM pg_stat_user_tables"
                " WHERE schemaname = current_schema() AND relname IN ('messages', 'deliveries')"
            )
        ).all()
        autovacuum = conn.exec_driver_sql("SHOW autovacuum").scalar_one()
    return {"autovacuum": autovacuum, "dead_tuples": {r[0]: int(r[1]) for r in rows}}


def measure(
    url: str,
    home: Path,
    *,
    newest_seeded: int,
    slot_s: float,
    slots: int,
    budget_s: float = BUDGET_MS / 1000,
    duty: float | None = None,
) -> dict[str, Any]:
    """``engine serve`` on the seeded store under 8 senders flat out, pruning off and on in
    alternate slots (see the module); the slots' rates, the pairs, the purge's figures.
    ``duty``: the purge's share of the time (the leader's unless given: a test's slots of a
    second hold only a few batches at 8 %)."""
    from bench.console_bench import _load, _served
    from engine.store import SqlMessageStore, create_db_engine

    db = create_db_engine(url)
    purge = SwitchedPurge(SqlMessageStore(db), timedelta(days=RETENTION_DAYS), budget_s, duty)
    deliveries_before = _seeded_deliveries(db, newest_seeded)
    acks = home / "acks.txt"
    load: subprocess.Popen[str] | None = None
    try:
        with _served(home, url) as (mllp, _http, _pid):
            _load(mllp, 400)  # warm: connections, the worker, caches
            purge.start()  # its bounds read now; no batch until the first slot on
            load = _start_load(mllp, slots * slot_s + 120, acks)
            time.sleep(RAMP_S)
            ran = alternate(load, purge, slot_s, slots)
            times = _stop_load(load, acks)
            load = None
        purge.stop()
        deliveries_after = _seeded_deliveries(db, newest_seeded)
        rates = slot_rates(times, ran, slot_s)
        pairs = paired(rates)
        on = [r[1] for r in rates if r is not None and r[0]]
        off = [r[1] for r in rates if r is not None and not r[0]]
        shown = interval(pairs)
        figures = purge_figures(purge, ran, deliveries_before - deliveries_after)
        return {
            "slot_s": slot_s,
            "slots_planned": slots,
            "slots_run": len(ran),
            "slots": [
                {"on": s[2], "counted": r is not None, "acks_per_s": round(r[1], 1) if r else None}
                for s, r in zip(ran, rates, strict=True)
            ],
            "off_median_acks_per_s": round(statistics.median(off), 1) if off else None,
            "on_median_acks_per_s": round(statistics.median(on), 1) if on else None,
            "paired_slowdown_pct": [round(p, 2) for p in pairs],
            "paired_slowdown": shown,
            "purge": figures,
            "goal_met": bool(shown.get("goal_shown_met")) and figures["batches_over_100ms"] == 0,
            "postgresql": _dead_tuples(db),
        }
    finally:
        if load is not None and load.poll() is None:
            load.kill()
            load.wait()
        with contextlib.suppress(RuntimeError):  # an error of the purge was raised above
            purge.stop()
        db.dispose()


# -- the suite -----------------------------------------------------------------------------------


def _choices(options: Options, minutes: float | None) -> tuple[int, float, int]:
    """(messages seeded, slot seconds, slots) from the environment (``RETENTION_BENCH_N``,
    ``RETENTION_BENCH_SLOT_S``, ``RETENTION_BENCH_SLOTS``; ``--minutes`` sets the slots)."""
    n = int(os.environ.get("RETENTION_BENCH_N", 200_000 if options.quick else 10_000_000))
    slot_s = float(os.environ.get("RETENTION_BENCH_SLOT_S", "10"))
    slots = int(os.environ.get("RETENTION_BENCH_SLOTS", "60"))
    if minutes is not None:
        slots = max(3, int(minutes * 60 / slot_s))
    if n < 1000 or slot_s <= 0 or slots < 3:
        raise SystemExit("RETENTION_BENCH_N >= 1000, RETENTION_BENCH_SLOT_S > 0, SLOTS >= 3")
    return n, slot_s, slots


def _terminated(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt  # through the finally blocks: the engine stopped, the schema dropped


def run(options: Options, minutes: float | None = None) -> dict[str, Any]:
    from engine.store import create_db_engine

    n, slot_s, slots = _choices(options, minutes)
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        with private_schema() as url, tempfile.TemporaryDirectory(prefix="retention-") as tmp:
            db = create_db_engine(url)
            try:
                print(f"  seeding {n:,} messages ...", flush=True)
                seeded = seed_store(db, n)
                seeded["purgeable"] = purgeable(db, timedelta(days=RETENTION_DAYS))
                seeded["retention_days"] = RETENTION_DAYS
            finally:
                db.dispose()
            _print_seed(seeded)
            load_before = os.getloadavg()[0]
            result = measure(url, Path(tmp), newest_seeded=n, slot_s=slot_s, slots=slots)
    finally:
        signal.signal(signal.SIGTERM, previous)
    result = {"seed": seeded, **result, "load_average_before": round(load_before, 1)}
    _print_result(result)
    env = environment(["sqlalchemy", "psycopg"])
    return {
        "suite": "retention",
        "quick": options.quick,
        "messages": n,
        **result,
        "environment": env,
    }


def _print_seed(seeded: dict[str, Any]) -> None:
    print(
        f"  seeded {seeded['messages']:,} messages, {seeded['deliveries']:,} deliveries, "
        f"{seeded['delivery_attempts']:,} attempts, {seeded['documents']:,} documents in "
        f"{seeded['seconds']:.0f} s; {seeded['purgeable']:,} past {RETENTION_DAYS} days",
        flush=True,
    )


def _print_result(r: dict[str, Any]) -> None:
    p, i = r["purge"], r["paired_slowdown"]
    print(
        f"  ingest, 8 senders flat out: pruning off {r['off_median_acks_per_s']} / on "
        f"{r['on_median_acks_per_s']} ACKs/s (medians; {r['slots_run']} slots of "
        f"{r['slot_s']:.0f} s)"
    )
    if "ci95_pct" in i:
        low, high = i["ci95_pct"]
        verdict = "met" if i["goal_shown_met"] else "NOT shown met"
        print(
            f"  paired slowdown over {i['pairs']} pairs: mean {i['mean_pct']:+.2f} %, 95 % "
            f"interval [{low:+.2f}, {high:+.2f}] %: goal <= {GOAL_PCT:.0f} % {verdict}"
        )
    else:
        print(f"  only {i['pairs']} pair(s): no interval")
    print(
        f"  purge: {p['messages_purged']:,} messages in {p['batches']} batches, "
        f"{p['messages_per_s']} messages/s while on ({p.get('deliveries_per_s')} deliveries/s); "
        f"locks held at most {p['longest_lock_ms']} ms, p99 {p['p99_lock_ms']} ms, "
        f"{p['batches_over_100ms']} over 100 ms, {p['batches_cancelled']} cancelled at the "
        f"limit; whole calls at most {p['slowest_batch_ms']} ms, "
        f"p99 {p['p99_batch_ms']} ms, {p['calls_over_100ms']} over 100 ms"
        f"{'; ran out' if p['ran_out'] else ''}"
    )
    for slow in p.get("over_budget", []):
        print(
            f"    over 100 ms: {slow['rows']} rows ({slow['documents']} documents) of "
            f"{slow.get('read')} read ({slow.get('read_documents')} documents), locks "
            f"{slow['lock_ms']} ms{' (cancelled)' if slow['cancelled'] else ''}, "
            f"call {slow['call_ms']} ms"
        )
    print(
        f"  goal (interval's top <= {GOAL_PCT:.0f} %, no batch's locks over 100 ms): "
        f"{'met' if r['goal_met'] else 'NOT met'}"
    )


if __name__ == "__main__":
    # the load's process: ``python -m bench.retention_bench load PORT SENDERS SECONDS ACKS``
    _cmd, _port, _senders, _seconds, _acks = sys.argv[1:6]
    _result = asyncio.run(_flat_out(int(_port), int(_senders), float(_seconds)))
    Path(_acks).write_text("".join(f"{t:.6f}\n" for t in _result.pop("acks")))
    print(json.dumps(_result))
