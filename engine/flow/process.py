"""Processing (Content-Based Router, Message Translator): parse, route and map, from the queue.

``Processor`` claims received messages (``FOR UPDATE SKIP LOCKED``: several engine processes may
share one PostgreSQL and each message is processed once), routes them (engine/routes), maps them
(engine/mappings) and records one delivery per destination, in one transaction. The deliveries
are the dispatcher's (engine/flow/deliver.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import orjson

from engine.errors import EngineError
from engine.flow.documents import (
    carries_document,
    route_document,
    take_mdm_document,
    takes_documents,
)
from engine.flow.gate import RouteGate
from engine.flow.ingest import fhir_patient_key, patient_key_of
from engine.hl7v2.codec import Message, parse_message
from engine.mappings import Mappings
from engine.pressure import IngestPressure
from engine.retry import backoff_s
from engine.routes.loader import RouteSet
from engine.routes.router import Router
from engine.routes.spec import Route
from engine.store import IndexedResource, NewDelivery, Processed, SqlMessageStore
from engine.store.db import failure_name

__all__ = ["Processor", "RoutedCounter", "index_rows"]

log = logging.getLogger(__name__)

HL7_CONTENT_TYPE = "x-application/hl7-v2+er7"
FHIR_CONTENT_TYPE = "application/fhir+json"


#: the resources kept in the index (what the eligibility job needs)
INDEXED_TYPES = frozenset(
    {"Patient", "Coverage", "Organization", "Appointment", "Practitioner", "RelatedPerson"}
)


def index_rows(bundle: Mapping[str, Any]) -> list[IndexedResource]:
    """The resources of a mapped Bundle to keep in the index, with their patient and start."""
    entries = [e for e in bundle.get("entry", []) if isinstance(e, dict)]
    patients = {
        e["fullUrl"] for e in entries if e.get("resource", {}).get("resourceType") == "Patient"
    }
    rows: list[IndexedResource] = []
    for e in entries:
        res = e.get("resource", {})
        rtype = res.get("resourceType")
        if rtype not in INDEXED_TYPES or not e.get("fullUrl") or not isinstance(e["fullUrl"], str):
            continue
        patient: str | None = None
        start: datetime | None = None
        if rtype == "Patient":
            patient = e["fullUrl"]
        elif rtype == "Coverage":
            patient = (res.get("beneficiary") or {}).get("reference")
        elif rtype == "RelatedPerson":
            patient = (res.get("patient") or {}).get("reference")
        elif rtype == "Appointment":
            for p in res.get("participant", []):
                ref = (p.get("actor") or {}).get("reference")
                if ref in patients:
                    patient = ref
            if res.get("start"):
                try:
                    start = datetime.fromisoformat(str(res["start"]).replace("Z", "+00:00"))
                    # kept in UTC: SQLite stores datetimes without their offset
                    start = start.astimezone(UTC) if start.tzinfo else start
                except ValueError:
                    start = None
        status = res.get("status")
        rows.append(  # a reference or status that is no string (a bad Bundle's) is not kept
            IndexedResource(
                rtype,
                e["fullUrl"],
                orjson.dumps(res),
                patient if isinstance(patient, str) else None,
                start,
                status if isinstance(status, str) else None,
            )
        )
    return rows


def _logical_payers(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries with, for each Coverage whose payer is given by identifier only (a logical
    reference, references.html#logical, as Epic writes ``payor``), an Organization entry made
    from it (its identifier; the display as its name; a ``urn:uuid`` fullUrl that is the same
    for the same payer) and the payor referring to it: the eligibility job reads the payer ID
    from the Organization a Coverage refers to."""
    out: list[dict[str, Any]] = []
    for e in entries:
        res = e.get("resource")
        if not isinstance(res, dict) or res.get("resourceType") != "Coverage":
            out.append(e)
            continue
        payors: list[Any] = []
        made: list[dict[str, Any]] = []
        for payor in res.get("payor") or []:
            ident = payor.get("identifier") if isinstance(payor, dict) else None
            if not isinstance(ident, dict) or payor.get("reference") or not ident.get("value"):
                payors.append(payor)
                continue
            token = f"Organization/{ident.get('system', '')}|{ident['value']}"
            url = f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, token)}"
            org: dict[str, Any] = {"resourceType": "Organization", "identifier": [ident]}
            if payor.get("display"):
                org["name"] = payor["display"]
            made.append({"fullUrl": url, "resource": org})
            payors.append({**payor, "reference": url})
        out += [{**e, "resource": {**res, "payor": payors}}, *made] if made else [e]
    return out


def _resolved(bundle: Mapping[str, Any]) -> dict[str, Any]:
    """The Bundle as the index keeps it: each relative reference (``Patient/12``) that names an
    entry written as that entry's fullUrl (``https://ehr/fhir/Patient/12``), as FHIR resolves a
    relative reference against the base of the fullUrl of the entry holding it
    (bundle.html#references) and the index keys on fullUrls (references that name no entry are
    left as they are); and a payer given by identifier only made an Organization entry."""
    entries = _logical_payers([e for e in bundle.get("entry", []) if isinstance(e, dict)])
    by_ref: dict[str, str] = {}
    for e in entries:
        url = str(e.get("fullUrl") or "")
        res = e.get("resource") or {}
        if "://" in url and isinstance(res, dict) and res.get("id"):
            by_ref[f"{res.get('resourceType')}/{res['id']}"] = url

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: walk(v) for k, v in node.items()}
            ref = node.get("reference")
            if isinstance(ref, str) and ref in by_ref:
                out["reference"] = by_ref[ref]
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return {**bundle, "entry": walk(entries) if by_ref else entries}


class RoutedCounter(Protocol):
    """Counts messages routed, by route (metrics)."""

    def record_routed(self, routes: Iterable[str]) -> None: ...


class Processor:
    """Claims received messages and turns them into deliveries.

    ``worker``: the node (engine/store/nodes.py) that claims: its claims are taken over when its
    heartbeat stops, and an outcome is recorded only while the claim is still its own.
    """

    def __init__(
        self,
        store: SqlMessageStore,
        routes: RouteSet,
        mappings: Mappings,
        *,
        worker: str | None = None,
        on_routed: Callable[[], None] | None = None,
        batch: int = 100,
        idle_s: float = 0.2,
        default_charset: str = "utf-8",
        stale_after: timedelta = timedelta(minutes=5),
        pressure: IngestPressure | None = None,
        metrics: RoutedCounter | None = None,
        linger_s: float = 0.0,
    ) -> None:
        self.store = store
        #: woken from idle, wait this long before claiming, so that messages arriving one by
        #: one are processed several to a transaction (see run)
        self.linger_s = linger_s
        self.router = Router(routes)
        self.default_charset = default_charset
        self.stale_after = stale_after
        self.mappings = mappings
        self.worker = worker or f"{os.uname().nodename}:{os.getpid()}"
        self.on_routed = on_routed
        self.batch = batch
        self.idle_s = idle_s
        self._wake = asyncio.Event()
        self.pressure = pressure
        self.metrics = metrics
        #: a step failed with claims of this worker's perhaps committed and not in hand (its
        #: batch's, or a claim whose reply was lost): all given back before the next claim
        self._in_doubt = False
        #: the last claim was short and left no message behind: linger before the next
        self._took_all = False
        #: processed by :meth:`_cycle` and not finished yet: finished with the next claim
        self._processed: list[Processed] = []

    def wake(self) -> None:
        """Called when messages were stored: process them now rather than at the next poll."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Process batches until ``stop`` is set: at once while there is work, else on a wake
        or every ``idle_s``. Claims older than ``stale_after`` are taken back every minute (the
        fallback: a dead node's claims are taken over within seconds by the worker's
        heartbeat, see engine/flow/worker.py)."""
        loop = asyncio.get_running_loop()
        next_reclaim = 0.0
        failures = 0
        while not stop.is_set():
            try:
                if loop.time() >= next_reclaim:
                    # messages claimed by a worker that died (not by one still working)
                    await asyncio.to_thread(self.store.reclaim_stale, self.stale_after)
                    next_reclaim = loop.time() + 60
                if self.pressure is not None:
                    await self.pressure.yield_to()  # a burst: ACKs first
                finished, n = await asyncio.to_thread(self._cycle)
                failures = 0
            except Exception as exc:  # the database away for a moment: wait and go on
                failures += 1
                log.error("processor failed", extra={"error": failure_name(exc)})
                await asyncio.sleep(backoff_s(failures))
                continue
            if finished and self.on_routed is not None:
                self.on_routed()
            if n:
                if self._took_all and self.linger_s > 0:
                    # a short batch that took every message waiting: they arrive one at a
                    # time, faster than batches finish. Waiting lets the next batch gather
                    # several: at 200 messages/s the claims took four or five each, and the
                    # claim and finish transactions (about 7 ms of SQLite's one write lock a
                    # batch, whatever its size) held the lock more than the receiver's ACKs
                    # left. Not after a batch that left messages behind (a patient's next
                    # message waits for the one before: its backlog goes one per claim)
                    await asyncio.sleep(self.linger_s)
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.idle_s)
                if self.linger_s > 0:
                    # woken from idle: messages arrive one at a time. Each batch costs the
                    # store a claim and a finish transaction under SQLite's one write lock,
                    # whatever its size; at 200 messages/s batches of one kept the lock busy
                    # half the time and the receiver's ACKs waited behind them. Not after a
                    # short batch: one patient's backlog is claimed one message at a time
                    # (order per patient), and a wait after each would slow it to 50/s
                    await asyncio.sleep(self.linger_s)
        await self._finish_processed()

    async def _finish_processed(self) -> None:
        """On stop: finish what the last cycle processed (else its messages stay claimed until
        the next start's reclaim); if the database is away, they are processed again then."""
        if not self._processed:
            return
        try:
            finished, _ = await asyncio.to_thread(self._cycle, 0)
        except Exception as exc:
            log.warning("batch not finished on stop", extra={"error": type(exc).__name__})
            return
        if finished and self.on_routed is not None:
            self.on_routed()

    def _cycle(self, limit: int | None = None) -> tuple[int, int]:
        """The running processor's step: finish what the last step processed and claim the
        next batch in one transaction (:meth:`SqlMessageStore.finish_and_claim`), then process
        that batch, to be finished by the next step. Returns (messages finished, claimed).

        :meth:`process_batch` (claim, process, finish: two transactions) stays for callers that
        want a batch done when it returns. Here a batch is finished one step later: after the
        linger, when there is one, so a message's deliveries are queued up to ``linger_s``
        later than with :meth:`process_batch`, and a steady trickle costs one transaction a
        batch instead of two."""
        self._give_back_in_doubt()
        done, self._processed = self._processed, []
        # from here until the claimed batch is in hand, a failure leaves claims of ours that
        # nothing holds: those ``done`` if the finish did not commit, those claimed if it did
        # and its reply was lost (before 7 December only the first were given back; the others
        # waited 5 minutes for reclaim_stale, holding their patients' later messages)
        self._in_doubt = True
        kept, claimed = self.store.finish_and_claim(
            done, self.worker, self.batch if limit is None else limit
        )
        if self.metrics is not None:  # counted once stored (see process_batch)
            for processed in kept:
                self.metrics.record_routed(d.route for d in processed.new_deliveries)
        self._took_all = (
            0 < len(claimed) < self.batch
            and self.linger_s > 0
            and not self.store.any_received()  # none left behind (patient order), none new
        )
        self._processed = [self.process_one(mid, raw, kind) for mid, raw, kind in claimed]
        self._in_doubt = False  # the next step finishes them (or gives them back if it fails)
        return len(done), len(claimed)

    def _give_back_in_doubt(self) -> None:
        """After a failed step, before the next claim: every message still ``processing`` under
        this worker's name is put back (``received``). None is in hand then (a processor holds
        one batch, in ``_processed``, which a failed step has already let go)."""
        if self._in_doubt:
            self.store.release_processing(self.worker)
            self._in_doubt = False

    def process_batch(self) -> int:
        """Claim and process one batch; returns how many messages it took.

        A batch that could not be finished (the database away) is given back before the next
        claim, once the database answers again: its claims are this live worker's, which no
        heartbeat takes over, and they would hold their patients' later messages back for
        the 5 minutes of :meth:`reclaim_stale` (the fault campaign, scenario postgres)."""
        self._give_back_in_doubt()
        self._in_doubt = True  # a claim whose reply is lost may have committed
        claimed = self.store.claim_received(self.worker, self.batch)
        if not claimed:
            self._in_doubt = self._took_all = False
            return 0
        self._took_all = (
            len(claimed) < self.batch
            and self.linger_s > 0
            and not self.store.any_received()  # none left behind (patient order), none new
        )
        done = [self.process_one(message_id, raw, kind) for message_id, raw, kind in claimed]
        kept = self.store.finish_batch(done)  # one transaction for the whole batch
        self._in_doubt = False
        if self.metrics is not None:  # counted once stored: not a failed batch, nor an
            for processed in kept:  # outcome whose claim another worker had taken back
                self.metrics.record_routed(d.route for d in processed.new_deliveries)
        return len(claimed)

    def process_one(self, message_id: int, raw: bytes, kind: str) -> Processed:
        """Route and map one message into its outcome: state, patient key, deliveries, the
        resources to index and what the message carried that no mapping took. Never raises: a
        message that cannot be processed is parked in state ``error`` with the reason."""
        warnings: list[str] = []
        try:
            if kind == "fhir":
                done = self._from_fhir(message_id, raw, warnings)
            elif kind == "document":
                done = self._from_document(message_id, raw, warnings)
            else:
                done = self._from_hl7v2(message_id, raw, warnings)
        except Exception as exc:
            if isinstance(exc, EngineError):
                reason = str(exc)
            else:  # a bug must not stop the queue: park the message
                log.exception("processing failed", extra={"message_id": message_id})
                reason = f"internal error ({type(exc).__name__})"
            done = Processed(
                message_id, "error", reason, worker=self.worker, warnings=_warning_text(warnings)
            )
        log.info(
            "message processed",
            extra={
                "message_id": message_id,
                "outcome": done.state,
                "deliveries": len(done.new_deliveries),
                "warnings": len(warnings),  # how many, never what: they name fields
            },
        )
        return done

    def _from_fhir(self, message_id: int, raw: bytes, warnings: list[str]) -> Processed:
        """A FHIR resource or Bundle received over HTTP or pulled from an EHR
        (engine/jobs/pull.py): routed by resource type, mapped to HL7v2 for the routes that
        want it, passed on as it came for the others. A Bundle's resources are indexed for the
        jobs whether or not a route takes it (a pulled appointment is checked for eligibility
        with no route at all), its relative references resolved against the entries' fullUrls
        first (https://hl7.org/fhir/R4/bundle.html#references), as the index keys on them."""
        doc = orjson.loads(raw)
        indexed: list[IndexedResource] = []
        if doc.get("resourceType") == "Bundle" and isinstance(doc.get("entry"), list):
            indexed = index_rows(_resolved(doc))
        routes = self.router.match(resource_type=str(doc.get("resourceType")))
        key = fhir_patient_key(doc) or f"msg:{message_id}"
        made: list[NewDelivery] = []
        for route in routes:
            if route.mapping == "hl7v2":
                msg = self.mappings.to_hl7(doc, control_id=f"E{message_id}", warnings=warnings)
                body, dkind, ctype = msg.to_bytes(), "hl7v2", HL7_CONTENT_TYPE
            else:
                body, dkind, ctype = raw, "fhir-bundle", FHIR_CONTENT_TYPE
            made += [
                NewDelivery(dest, route.name, dkind, ctype, body, key)
                for dest in route.destinations
            ]
        return self._routed(message_id, key, made, indexed, warnings)

    def _from_hl7v2(self, message_id: int, raw: bytes, warnings: list[str]) -> Processed:
        """An HL7v2 message: routed by type and trigger, mapped to a FHIR Bundle once for all
        the routes that want one (its resources indexed for the jobs), passed on as it came for
        the others."""
        message = parse_message(raw, default_charset=self.default_charset)
        if carries_document(message) and takes_documents(self.router):
            return self._from_mdm(message_id, message, raw, warnings)
        routes = self._mappable(self.router.match(message=message), message, warnings)
        key = patient_key_of(message) or f"msg:{message_id}"
        made: list[NewDelivery] = []
        indexed: list[IndexedResource] = []
        bundle: bytes | None = None
        for route in routes:
            if route.mapping == "fhir":
                if bundle is None:
                    mapped = self.mappings.to_fhir(message, warnings)
                    indexed = index_rows(mapped)
                    bundle = orjson.dumps(mapped)
                body, dkind, ctype = bundle, "fhir-bundle", FHIR_CONTENT_TYPE
            else:
                body, dkind, ctype = raw, "hl7v2", HL7_CONTENT_TYPE
            made += [
                NewDelivery(dest, route.name, dkind, ctype, body, key)
                for dest in route.destinations
            ]
        return self._routed(message_id, key, made, indexed, warnings)

    def _from_document(self, message_id: int, raw: bytes, warnings: list[str]) -> Processed:
        """A stored document (kind ``document``, its metadata as JSON): routed by type, sender
        and practice, and mapped per route into a DocumentEnvelope (engine/flow/documents.py)."""
        key, made = route_document(message_id, raw, self.router, self.mappings, self.store)
        return self._routed(message_id, key, made, [], warnings)

    def _from_mdm(
        self, message_id: int, message: Message, raw: bytes, warnings: list[str]
    ) -> Processed:
        """An MDM with a document, when routes take documents: the document is stored as one
        (its own message, routed as a document); the HL7v2 routes that pass the MDM on as
        received still get it; a FHIR mapping route is skipped (there is no FHIR map of MDM:
        the document's routes map it)."""
        routes = self.router.match(message=message)
        try:
            _, notes = take_mdm_document(message, self.mappings, self.store)
        except EngineError as exc:
            if all(r.mapping == "fhir" for r in routes):
                raise
            notes = [f"its document not taken: {exc}"]  # the MDM is still passed on
        warnings += notes
        key = patient_key_of(message) or f"msg:{message_id}"
        made: list[NewDelivery] = []
        for route in routes:
            if route.mapping == "fhir":
                warnings.append(f"route {route.name} skipped: an MDM is mapped as its document")
                continue
            made += [
                NewDelivery(dest, route.name, "hl7v2", HL7_CONTENT_TYPE, raw, key)
                for dest in route.destinations
            ]
        return Processed(
            message_id, "routed", None, key, made, [], self.worker, _warning_text(warnings)
        )

    def _mappable(self, routes: list[Route], message: Message, warnings: list[str]) -> list[Route]:
        """The routes to run: all of them, but for the mapping routes of a message whose type
        and trigger the FHIR mapping has no map for (ADT^A02, ORU) that a pass-through route
        takes: those are skipped with a warning and the message goes on as received (the gate
        took it for the pass-through route). With no pass-through route nothing is skipped and
        the mapping's error parks the message (routes changed since the ACK)."""
        mapping = [r for r in routes if r.mapping == "fhir"]
        if not mapping or len(mapping) == len(routes):
            return routes
        problem = RouteGate.unmapped(self.mappings, message)
        if problem is None:
            return routes
        warnings += [f"route {r.name} skipped: {problem}" for r in mapping]
        return [r for r in routes if r.mapping != "fhir"]

    def _routed(
        self,
        message_id: int,
        key: str,
        made: list[NewDelivery],
        indexed: list[IndexedResource],
        warnings: list[str],
    ) -> Processed:
        """A message some route took (``routed``) or none wanted (``unrouted``)."""
        state = "routed" if made else "unrouted"
        return Processed(
            message_id, state, None, key, made, indexed, self.worker, _warning_text(warnings)
        )


#: at most this much warning text is kept per message (a message with hundreds of unmapped
#: Z-segments says so in its first lines)
_WARNINGS_MAX = 8000


def _warning_text(warnings: list[str]) -> str | None:
    if not warnings:
        return None
    text = "\n".join(dict.fromkeys(warnings))  # once each (a Bundle built for two routes)
    if len(text) > _WARNINGS_MAX:
        text = text[: _WARNINGS_MAX - 30].rsplit("\n", 1)[0] + "\n(more not shown)"
    return text
