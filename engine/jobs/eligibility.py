"""Insurance eligibility before the visit: X12 270 out to the payer, 271 back, a verdict for the
front desk (X12 005010X279A1; CAQH CORE real-time: 20 s to answer).

For each appointment in the coming business days whose patient has a Coverage (from the
resources the engine has mapped: engine/flow/process.py keeps them), the job builds a 270 from the
Patient, the Coverage, the payer Organization (its identifier is the payer ID) and the practice
(settings: NPI and name), sends it through the payer's adapter (engine/adapters/payer), reads the
271 and stores one check:

* ``eligible``: active coverage (EB01 1-5), with the office-visit copay and the deductible and its
  remainder when the payer gave them;
* ``inactive``: the payer says the coverage is not active (EB01 6-8);
* ``needs_action``: the payer could not match the patient (AAA 72 member ID, 73 name, 75 not found,
  58 date of birth ...) or refused the request: somebody must call or fix the registration;
* ``payer_unavailable``: the payer did not answer (timeout, AAA 42, HTTP 5xx) after the retries.

A patient is not checked twice with the same payer on the same day unless forced; each payer gets
at most ``max_concurrency`` requests at once.

A scheduled run (:class:`RunProgress`) records each check as one of its items, in the check's own
transaction (engine/store/eligibility.py): when the node running it dies, the next leader resumes
the run (engine/jobs/scheduler.py :func:`resume_interrupted`) and checks only the appointments
without an item. Before its 270 goes out a check records its item without a result
(``start_run_item``): a 270 in flight when the node died is never sent a second time; the resumed
run gives that appointment the verdict ``needs_action`` (:data:`INTERRUPTED`: check it by hand).
A new run that comes before the interrupted one is resumed (a new leader's run at start, 5 s
after its election, while a dead node's run waits for its heartbeat to age) finds that started
item too, and gives the appointment the same verdict instead of a second 270 (:data:`IN_FLIGHT`);
so does any other appointment of the same patient and payer (the item's digest names its member:
the 270 asked about the member, not the visit). Not waiting for that answer: the run that sent
it is nearly always a dead node's, whose answer never comes. In one run, a member's checks go one
after another: the first asks, the next are given its answer ("checked today").

Only the node holding the run starts its items (engine/store/eligibility.py): a node that stood
still while another resumed its run, and wakes with its old idea of what is left, is refused at
its next item (:class:`~engine.store.nodes.RunTakenOver`) before that item's 270 goes out, and
its run stops there (the checks it has under way end first: their 270s are out already).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from engine.adapters.payer import (
    PayerAdapter,
    PayerRejected,
    PayerSet,
    PayerUnavailable,
)
from engine.adapters.payer.registry import build_payer
from engine.errors import EngineError
from engine.jobs.targets import PAGE, Target, business_days, target_pages
from engine.jobs.targets import payer_id as _payer_id
from engine.jobs.verdicts import (
    ALREADY_CHECKED,
    IN_FLIGHT,
    INTERRUPTED,
    UNAVAILABLE_AAA,
    CheckOutcome,
    verdict,
)
from engine.retry import CircuitBreaker
from engine.settings import Settings
from engine.store import SqlMessageStore
from engine.store.eligibility import RunItem, RunProgress, RunTakenOver
from engine.x12.x270 import EligibilityInquiry, Payer, Person, Provider, build_270
from engine.x12.x271 import read_271

__all__ = [
    "CheckOutcome",
    "EligibilityService",
    "RunProgress",
    "business_days",
    "local_time",
    "patient_label",
    "worklist",
]

log = logging.getLogger(__name__)


def local_time(value: datetime | None, timezone: str) -> datetime | None:
    """A stored time in the practice's time zone (SQLite hands back naive UTC)."""
    if value is None:
        return None
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return aware.astimezone(ZoneInfo(timezone))


@dataclass(frozen=True)
class _Answer:
    """What the payer said about one check, after every attempt it took."""

    result: dict[str, Any]
    response_json: str | None = None
    #: the 270's trace number (TRN02), "" when no 270 was sent
    trace: str = ""
    attempts: int = 0


def _name(resource: dict[str, Any]) -> tuple[str, str]:
    names = resource.get("name") or [{}]
    n = names[0] if isinstance(names, list) else {}
    given = n.get("given") or [""]
    return str(n.get("family", "")), str(given[0])


def _birth(resource: dict[str, Any]) -> date | None:
    text = str(resource.get("birthDate", ""))
    try:
        return date.fromisoformat(text) if len(text) == 10 else None
    except ValueError:
        return None


def _gender(resource: dict[str, Any]) -> str:
    return {"female": "F", "male": "M"}.get(str(resource.get("gender", "")), "U")


#: the stored check's columns a worklist row carries as they are
_WORKLIST_FIELDS = (
    "payer_id",
    "payer_name",
    "status",
    "copay",
    "deductible",
    "deductible_remaining",
    "plan",
    "reason",
)


def _mrn(patient: dict[str, Any]) -> str | None:
    """The patient's medical record number (the identifier typed MR), or None."""
    for ident in patient.get("identifier") or []:
        codings = (ident.get("type") or {}).get("coding") or []
        if any(c.get("code") == "MR" for c in codings) and ident.get("value"):
            return str(ident["value"])
    return None


def patient_label(patient: dict[str, Any]) -> tuple[str | None, str | None]:
    """A Patient's name as the worklist shows it (``Family, Given``) and its MRN (the console's
    worklist names an appointment not checked yet as :func:`worklist` names a checked one)."""
    family, given = _name(patient)
    return ", ".join(n for n in (family, given) if n) or None, _mrn(patient)


def worklist(store: SqlMessageStore, day: date, timezone: str) -> list[dict[str, Any]]:
    """The front desk's list for ``day``: the latest check of each appointment, with the
    patient's name and MRN, and its times in the practice's ``timezone`` (``time`` as HH:MM,
    ``appointment_start`` and ``checked_at`` as ISO 8601 with their offset). The one shape of
    ``engine eligibility list --json`` and ``GET /api/eligibility``; the 271 itself is left out."""
    checks = store.eligibility_for_day(day)
    patients = store.resources_by_url(r["patient_url"] for r in checks)
    out: list[dict[str, Any]] = []
    for r in checks:
        url = r["patient_url"]
        patient = patients.get(url) or {}
        family, given = _name(patient)
        start = local_time(r.get("appointment_start"), timezone)
        checked = local_time(r.get("checked_at"), timezone)
        out.append(
            {
                "check_id": r.get("id"),
                "appointment": r.get("appointment_url"),
                "appointment_start": start.isoformat() if start else None,
                "time": start.strftime("%H:%M") if start else None,
                "timezone": timezone,
                "patient": url,
                "patient_name": ", ".join(n for n in (family, given) if n) or None,
                "mrn": _mrn(patient),
                **{k: r.get(k) for k in _WORKLIST_FIELDS},
                "checked_at": checked.isoformat() if checked else None,
            }
        )
    return out


def _counter(progress: Callable[[int, int], None], done: int, known: int) -> Callable[[], None]:
    """A tick for each check done, telling ``progress`` how many of the ``known``."""
    count = [done]

    def tick() -> None:
        count[0] += 1
        progress(count[0], known)

    return tick


class EligibilityService:
    """Runs eligibility checks for appointments, with one adapter per payer."""

    def __init__(
        self,
        store: SqlMessageStore,
        payers: PayerSet,
        settings: Settings,
        *,
        adapter_for: Callable[[str], PayerAdapter] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.payers = payers
        self.settings = settings
        self.clock = clock
        self.rng = rng or random.Random()
        self._adapters: dict[str, PayerAdapter] = {}
        self._limits: dict[str, asyncio.Semaphore] = {}
        self._adapter_for = adapter_for or self._build
        self._control = int(self.clock().timestamp()) % 100_000_000
        #: per payer: after five checks in a row that ended unavailable (each after its
        #: retries), the next checks of that payer are not sent for a while (30 s, doubling up
        #: to 10 min), so a payer that is down is not sent a 270 for every appointment of the day
        self.breaker = CircuitBreaker(threshold=5, base_s=30.0, cap_s=600.0)
        #: scheduled runs one at a time (a resumed run and a new one never ask about the same
        #: appointment together; the later one finds the earlier's checks made today)
        self._runs = asyncio.Lock()
        #: appointments a run reads at a time
        self.page = PAGE

    def _config(self, payer_id: str) -> Any:
        config = self.payers.payers.get(payer_id) or self.payers.default
        if config is None:
            raise EngineError(f"no payer configured for payer id {payer_id!r} and no default")
        return config

    def _build(self, payer_id: str) -> PayerAdapter:
        return build_payer(payer_id, self._config(payer_id))

    def adapter(self, payer_id: str) -> PayerAdapter:
        if payer_id not in self._adapters:
            self._adapters[payer_id] = self._adapter_for(payer_id)
        return self._adapters[payer_id]

    async def close(self) -> None:
        for adapter in self._adapters.values():
            await adapter.close()

    # -- what to check ---------------------------------------------------------------------------

    def targets(self, start: date, days: int) -> list[Target]:
        """Every check of the appointments in the next ``days`` business days, at once (a run
        reads them a page at a time: :func:`engine.jobs.targets.target_pages`)."""
        pages = target_pages(self.store, self.settings.timezone, start, days, self.page)
        return [t for page in pages for t in page]

    # -- checking ----------------------------------------------------------------------------------

    async def check_upcoming(
        self,
        *,
        start: date | None = None,
        days: int | None = None,
        force: bool = False,
        progress: Callable[[int, int], None] | None = None,
        run: RunProgress | None = None,
    ) -> list[CheckOutcome]:
        """Check every appointment in the coming business days (the nightly job). ``run``: the
        scheduled run these checks are items of; the items it has done already are not checked
        again (``already_checked``), and scheduled runs go one at a time."""
        if run is None:
            return await self._check_all(start, days, force, progress, None)
        async with self._runs:
            return await self._check_all(start, days, force, progress, run)

    async def _check_all(
        self,
        start: date | None,
        days: int | None,
        force: bool,
        progress: Callable[[int, int], None] | None,
        run: RunProgress | None,
    ) -> list[CheckOutcome]:
        """The checks a page of appointments at a time (engine/jobs/targets.py: a run's memory
        is a page's, whatever the days hold). ``progress`` is given the checks done and those
        known so far: the pages read."""
        tz = ZoneInfo(self.settings.timezone)
        first = start or (self.clock().astimezone(tz).date() + timedelta(days=1))
        days = days or self.settings.eligibility_days
        pages = target_pages(self.store, self.settings.timezone, first, days, self.page)
        outcomes: list[CheckOutcome] = []
        seen: set[str] = set()
        known = 0
        while (page := await asyncio.to_thread(next, pages, None)) is not None:
            if run is not None:  # one check per item, and none for an item done before
                page = [t for t in {t.key: t for t in page}.values() if t.key not in seen]
                seen.update(t.key for t in page)
            known += len(page)
            tick = None if progress is None else _counter(progress, len(outcomes), known)
            outcomes += await self._check_page(page, force, run, tick)
        return outcomes

    async def _check_page(
        self,
        targets: list[Target],
        force: bool,
        run: RunProgress | None,
        tick: Callable[[], None] | None,
    ) -> list[CheckOutcome]:
        """One page's checks, their outcomes in the targets' order."""

        async def one(t: Target) -> CheckOutcome:
            try:
                outcome = await self._check_in_run(t, force, run)
            except RunTakenOver:  # the run is another node's now: it stops (below)
                raise
            except Exception as exc:  # one bad check must not lose the others
                log.exception("eligibility check failed", extra={"error": type(exc).__name__})
                outcome = CheckOutcome(
                    None,
                    "needs_action",
                    t.patient.get("_full_url", ""),
                    _payer_id(t.payer),
                    reason=f"internal error ({type(exc).__name__})",
                )
            if tick is not None:
                tick()
            return outcome

        # a member's checks one after another (the next is given the first's answer instead of
        # a second 270 beside it), the members' at once; a member's checks on a later page come
        # after this page's, and are given its answer the same way
        members: dict[str, list[int]] = {}
        for n, t in enumerate(targets):
            members.setdefault(t.member, []).append(n)
        outcomes: dict[int, CheckOutcome] = {}
        #: the run found taken over by another node: no member's next check starts here
        taken: list[RunTakenOver] = []

        async def in_turn(group: list[int]) -> None:
            for n in group:
                if taken:
                    return
                try:
                    outcomes[n] = await one(targets[n])
                except RunTakenOver as exc:
                    taken.append(exc)
                    return

        await asyncio.gather(*(in_turn(g) for g in members.values()))
        if taken:
            raise taken[0]
        return [outcomes[n] for n in range(len(targets))]

    async def _check_in_run(self, t: Target, force: bool, run: RunProgress | None) -> CheckOutcome:
        """One check as an item of ``run``: given again if the run did it already."""
        if run is None or (stored := run.earlier(t.key)) is None:
            return await self.check(t, force=force, item=run.item(t.key) if run else None)
        if run.done[stored] is None:
            # its 270 was out when the run's earlier node died, its answer never recorded: not
            # asked again (a second 270 for one appointment), the front desk told to check it
            # by hand
            return await self._record(t, _payer_id(t.payer), _Answer(INTERRUPTED), run.item(stored))
        return CheckOutcome(
            run.done[stored],
            ALREADY_CHECKED,
            t.patient.get("_full_url", ""),
            _payer_id(t.payer),
            reused=True,
        )

    async def check(
        self, target: Target, *, force: bool = False, item: RunItem | None = None
    ) -> CheckOutcome:
        """Ask the payer about one appointment's coverage and store the verdict; a check made
        today already is given again instead, unless ``force``. ``item``: the scheduled run's
        item this check is (recorded with it)."""
        patient_url = target.patient["_full_url"]
        payer_id = _payer_id(target.payer)
        if not force:
            prior = await self._checked_today(patient_url, payer_id)
            if prior is not None:
                return prior
            if await asyncio.to_thread(
                self.store.run_item_open, target.key, self._today(), item
            ):  # another run's 270 for this member is out, or was when its node stopped
                return await self._record(target, payer_id, _Answer(IN_FLIGHT), item)
        try:
            config = self._config(payer_id)
        except EngineError as exc:  # no adapter for this payer: the front desk must know
            answer = _Answer({"status": "needs_action", "reason": str(exc)})
        else:
            answer = await self._ask_unless_paused(target, payer_id, config, item)
        return await self._record(target, payer_id, answer, item)

    def _today(self) -> datetime:
        """The start of today in the practice's time zone."""
        tz = ZoneInfo(self.settings.timezone)
        return datetime.combine(self.clock().astimezone(tz).date(), datetime.min.time(), tz)

    async def _checked_today(self, patient_url: str, payer_id: str) -> CheckOutcome | None:
        """Today's check of this patient with this payer, if there is one."""
        prior = await asyncio.to_thread(
            self.store.eligibility_checked, patient_url, payer_id, self._today()
        )
        if prior is None:
            return None
        return CheckOutcome(
            prior["id"],
            prior["status"],
            patient_url,
            payer_id,
            prior["copay"],
            prior["deductible_remaining"],
            prior["reason"],
            reused=True,
        )

    async def _ask_unless_paused(
        self, target: Target, payer_id: str, config: Any, item: RunItem | None = None
    ) -> _Answer:
        """Ask the payer, unless its breaker is open: then the check is reported unavailable
        without a 270 (the front desk re-checks, or the next run asks)."""
        if self.breaker.is_open(payer_id, time.monotonic()):
            failures = self.breaker.failures(payer_id)
            return _Answer(
                {
                    "status": "payer_unavailable",
                    "reason": f"not asked: the payer's last {failures} checks found it "
                    "unavailable; it is asked again after a pause",
                }
            )
        answer = await self._ask(target, payer_id, config, item)
        if answer.attempts == 0:  # no 270 went out: nothing learnt of the payer
            return answer
        unavailable = answer.result["status"] == "payer_unavailable"
        self.breaker.record(
            payer_id, ok=not unavailable, retryable=unavailable, now=time.monotonic()
        )
        return answer

    async def _ask(
        self, target: Target, payer_id: str, config: Any, item: RunItem | None = None
    ) -> _Answer:
        """The 270 → 271 exchange, tried again while the payer is unavailable as the payer's
        retry policy says (with jitter; a Retry-After the payer sent is believed). ``item``:
        the scheduled run's item, recorded as started once its turn at the payer comes, just
        before its first 270 (a resumed run then never sends it a second one). No 270 when
        the item was started already (by the run's earlier node); RunTakenOver when the run is
        no longer this node's."""
        limit = self._limits.setdefault(payer_id, asyncio.Semaphore(config.max_concurrency))
        self._control += 1
        control = self._control  # this check's own number (ISA13/GS06), read once
        trace = f"{control:09d}"
        inquiry = self._inquiry(target, payer_id, trace)
        policy = config.retry
        attempts = 0
        result: dict[str, Any]
        response_json: str | None = None
        async with limit:
            if item is not None and not await asyncio.to_thread(self.store.start_run_item, item):
                return _Answer(IN_FLIGHT)
            while True:
                attempts += 1
                retry_after = 0.0
                try:
                    answer = await self._exchange(inquiry, payer_id, config, control)
                    result, response_json = self._read(answer, target, trace)
                except PayerUnavailable as exc:
                    result = {"status": "payer_unavailable", "reason": str(exc)}
                    retry_after = exc.retry_after_s or 0.0
                except (PayerRejected, EngineError) as exc:
                    result = {"status": "needs_action", "reason": str(exc)}
                if result["status"] != "payer_unavailable" or policy.gives_up_after(attempts):
                    return _Answer(result, response_json, trace, attempts)
                delay = policy.delay_for(attempts) * self.rng.uniform(0.5, 1.0)
                await asyncio.sleep(max(delay, retry_after))

    async def _exchange(
        self, inquiry: EligibilityInquiry, payer_id: str, config: Any, control: int
    ) -> str:
        """One 270 sent through the payer's adapter; the raw answer (a 271, or a TA1/999)."""
        x270 = build_270(
            inquiry,
            sender_id=config.sender_id or self.settings.x12_sender_id,
            receiver_id=config.receiver_id or payer_id,
            control_number=control,
            now=self.clock(),
        )
        return await self.adapter(payer_id).exchange(x270, timeout_s=config.timeout_s)

    async def _record(
        self, target: Target, payer_id: str, answer: _Answer, item: RunItem | None = None
    ) -> CheckOutcome:
        """Store one check (and the run's item it is, in its transaction); say what it found."""
        result = answer.result
        row = {
            "appointment_url": target.appointment_url,
            "appointment_start": target.appointment_start,
            "patient_url": target.patient["_full_url"],
            "coverage_url": target.coverage.get("_full_url"),
            "payer_id": payer_id,
            "payer_name": target.payer.get("name"),
            "service_date": target.service_date,
            "checked_at": self.clock(),
            "status": result["status"],
            "copay": result.get("copay"),
            "deductible": result.get("deductible"),
            "deductible_remaining": result.get("deductible_remaining"),
            "plan": result.get("plan"),
            "reason": result.get("reason"),
            "trace": answer.trace,
            "attempts": answer.attempts,
            "response": answer.response_json,
        }
        check_id = await asyncio.to_thread(self.store.save_eligibility, row, item)
        log.info(
            "eligibility checked",
            extra={
                "check_id": check_id,
                "payer_id": payer_id,
                "outcome": result["status"],
                "attempts": answer.attempts,
            },
        )
        return CheckOutcome(
            check_id,
            result["status"],
            target.patient["_full_url"],
            payer_id,
            result.get("copay"),
            result.get("deductible_remaining"),
            result.get("reason"),
        )

    def _inquiry(self, target: Target, payer_id: str, trace: str) -> EligibilityInquiry:
        member_id = str(target.coverage.get("subscriberId", ""))
        family, given = _name(target.patient)
        patient = Person(
            last_name=family,
            first_name=given,
            birth_date=_birth(target.patient),
            gender=_gender(target.patient),
            member_id=member_id,
        )
        subscriber, dependent = patient, None
        if target.subscriber is not None:
            s_family, s_given = _name(target.subscriber)
            subscriber = Person(
                last_name=s_family,
                first_name=s_given,
                birth_date=_birth(target.subscriber),
                gender=_gender(target.subscriber),
                member_id=member_id,
            )
            dependent = Person(
                last_name=family,
                first_name=given,
                birth_date=_birth(target.patient),
                gender=_gender(target.patient),
            )
        return EligibilityInquiry(
            payer=Payer(name=str(target.payer.get("name", payer_id)), payer_id=payer_id),
            provider=Provider(
                npi=self.settings.eligibility_provider_npi,
                organization=self.settings.eligibility_provider_name,
            ),
            subscriber=subscriber,
            dependent=dependent,
            trace_number=trace,
            originator_id=f"1{self.settings.eligibility_provider_npi}"[:10],
            service_date=target.service_date,
        )

    def _read(self, answer: str, target: Target, trace: str) -> tuple[dict[str, Any], str | None]:
        """A 271 → the verdict for our patient; a TA1/999 → why the request was refused."""
        if (
            "ST*271" not in answer.replace("\r", "").replace("\n", "")[:400]
            and "*271*" not in answer[:400]
        ):
            from engine.x12.ack import read_acks

            acks = read_acks(answer, strict=False)
            status = "payer_unavailable" if acks.action == "retry" else "needs_action"
            why = "; ".join(acks.reasons) or "no 271 in the answer"
            return {"status": status, "reason": f"the payer refused the request: {why}"}, None
        responses = read_271(answer, strict=False)
        results = [r for resp in responses for r in resp.results]
        mine = [r for r in results if any(t.number == trace for t in r.traces)] or results
        if target.subscriber is not None:
            deps = [r for r in mine if r.is_dependent]
            mine = deps or mine
        if not mine:
            errors = [e for resp in responses for e in resp.errors]
            if errors:
                codes = "; ".join(f"AAA {e.reason.code} {e.reason.meaning}" for e in errors)
                unavailable = any(e.reason.code in UNAVAILABLE_AAA for e in errors)
                return {
                    "status": "payer_unavailable" if unavailable else "needs_action",
                    "reason": codes,
                }, None
            return {
                "status": "needs_action",
                "reason": "the 271 says nothing about the patient",
            }, None
        result = mine[0]
        response_json = None
        try:
            from engine.x12.fhir import x271_to_fhir

            response_json = orjson.dumps(x271_to_fhir(answer)).decode()
        except Exception as exc:  # the verdict stands without its FHIR form
            log.warning("271 to FHIR failed", extra={"error": type(exc).__name__})
        return verdict(result), response_json
