"""A stub payer: answers 270s with 271s from a roster of synthetic members (in-process).

Each patient of a 270 (:func:`engine.x12.x270.read_270`) gets the roster's answer
(:mod:`engine.sim.payer.answers`: active with copays, deductible, coinsurance and
out-of-pocket; inactive; an AAA for a member ID, name or birth date that does not match), written
as a 005010X279A1 271 (:mod:`engine.sim.payer.x271`) from the 270's receiver to its
sender, echoing its BHT03 and TRN.

A 270 the stub cannot read gets what a payer sends: a TA1 rejecting the envelope (TA105 note)
or a 999 rejecting the group or transaction set (IK3/IK4 where a data element is at fault);
bytes that are not an interchange at all raise :class:`PayerRejected`.

Test switches: ``latency_ms`` plus up to ``jitter_ms`` before each answer; :meth:`set_outage`
takes the whole stub or one payer ID down, in one of three modes: ``aaa42`` answers a 271 with
AAA*Y**42*R in 2100A (unable to respond at current time; resubmission allowed), ``unavailable``
refuses (in-process :class:`PayerUnavailable`; the HTTP stub answers 503), ``silent`` never
answers (the caller's timeout fires). ``requests`` and ``outcomes`` count what happened.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal, TypedDict

from engine.adapters.payer.contract import PayerRejected, PayerUnavailable
from engine.sim.payer.answers import answer_inquiry
from engine.sim.payer.roster import Roster, load_roster
from engine.sim.payer.x271 import (
    EligibilityAnswer,
    Rejection,
    SyntaxReject,
    build_271,
    build_999,
    build_ta1,
)
from engine.x12.envelope import FunctionalGroup, Interchange, Transaction, parse_interchange
from engine.x12.errors import X12Error
from engine.x12.x270 import EligibilityInquiry, read_270

__all__ = ["OutageMode", "StubPayer", "StubReply"]

log = logging.getLogger(__name__)

OutageMode = Literal["aaa42", "unavailable", "silent"]

_UNABLE_TO_RESPOND = Rejection("42", "R", True)


class _Envelope(TypedDict):
    sender_id: str
    receiver_id: str
    sender_qualifier: str
    receiver_qualifier: str
    control_number: int
    now: datetime
    usage: str


@dataclass(frozen=True)
class StubReply:
    """What the stub does with one request: ``answer`` (``text`` is X12: a 271, TA1 or 999),
    ``unavailable`` (refuse: 503) or ``silent`` (say nothing). ``outcome`` names it for the
    counters: ``271``, ``aaa42``, ``ta1``, ``999``, ``unavailable``, ``silent``."""

    kind: Literal["answer", "unavailable", "silent"]
    outcome: str
    text: str = ""
    payer_id: str = ""


def _isa_fields(text: str) -> tuple[str, str, str, str, str] | None:
    """ISA13, ISA09, ISA10, ISA06, ISA08 read from a fixed-width ISA, for a TA1 about an
    interchange that does not parse past it; None when there is no ISA to read."""
    text = text.lstrip("\ufeff \t\r\n")
    if not text.startswith("ISA") or len(text) < 106:
        return None
    parts = text[:106].split(text[3])
    if len(parts) < 17 or not (len(parts[13]) == 9 and parts[13].isdigit()):
        return None
    return parts[13], parts[9], parts[10], parts[6].strip(), parts[8].strip()


class StubPayer:
    """The stub payer in-process; a :class:`~engine.adapters.payer.contract.PayerAdapter`.

    Safe to share between the HTTP stub's server thread and a test's thread: the switches are
    plain attributes, the counters are updated under ``lock``.
    """

    def __init__(
        self,
        roster: Roster | None = None,
        *,
        name: str = "stub",
        latency_ms: int = 0,
        jitter_ms: int = 0,
        max_concurrency: int = 4,
        seed: int | None = None,
        clock: Callable[[], datetime] = datetime.now,
    ) -> None:
        self.name = name
        self.roster = roster if roster is not None else load_roster()
        self.latency_ms = latency_ms
        self.jitter_ms = jitter_ms
        self.max_concurrency = max_concurrency
        self.clock = clock
        #: the whole stub's outage (None: up)
        self.down: OutageMode | None = None
        #: outages of single payer IDs (2100A NM109)
        self.down_payers: dict[str, OutageMode] = {}
        self.lock = threading.Lock()
        #: requests received, in all and by payer ID ("" when the 270 could not be read)
        self.requests = 0
        self.requests_by_payer: Counter[str] = Counter()
        #: what the stub did, by :attr:`StubReply.outcome`
        self.outcomes: Counter[str] = Counter()
        self._random = random.Random(seed)
        self._control = itertools.count(1)
        self._limit: asyncio.Semaphore | None = None

    # -- switches --------------------------------------------------------------------------------

    def set_outage(self, mode: OutageMode | None = "aaa42", payer_id: str | None = None) -> None:
        """Take the whole stub (or one payer ID) down in ``mode``; ``None`` brings it back."""
        with self.lock:
            if payer_id is None:
                self.down = mode
            elif mode is None:
                self.down_payers.pop(payer_id, None)
            else:
                self.down_payers[payer_id] = mode

    def outage_for(self, payer_id: str) -> OutageMode | None:
        with self.lock:
            return self.down_payers.get(payer_id, self.down)

    def reset(self) -> None:
        """Up again, no latency, counters at zero."""
        with self.lock:
            self.down = None
            self.down_payers.clear()
            self.latency_ms = self.jitter_ms = 0
            self.requests = 0
            self.requests_by_payer.clear()
            self.outcomes.clear()

    def delay_s(self) -> float:
        """This request's latency: ``latency_ms`` plus a uniform share of ``jitter_ms``."""
        with self.lock:
            jitter = self._random.uniform(0, self.jitter_ms) if self.jitter_ms else 0.0
            return (self.latency_ms + jitter) / 1000

    # -- the adapter -----------------------------------------------------------------------------

    async def exchange(self, x270: str, *, timeout_s: float = 20.0) -> str:
        if self._limit is None:
            self._limit = asyncio.Semaphore(self.max_concurrency)
        async with self._limit:
            delay = self.delay_s()
            if delay >= timeout_s:
                await asyncio.sleep(timeout_s)
                raise PayerUnavailable(f"{self.name}: no answer within {timeout_s:g} s")
            await asyncio.sleep(delay)
            reply = self.respond(x270)
            if reply.kind == "unavailable":
                raise PayerUnavailable(f"{self.name}: the payer is down (outage switch)")
            if reply.kind == "silent":
                await asyncio.sleep(timeout_s - delay)
                raise PayerUnavailable(f"{self.name}: no answer within {timeout_s:g} s")
            return reply.text

    async def close(self) -> None:
        return None

    # -- answering -------------------------------------------------------------------------------

    def respond(self, x270: str) -> StubReply:
        """Decide and build the answer to one 270 (no latency: the caller waits)."""
        try:
            interchange = parse_interchange(x270)
            inquiries = self._inquiries(interchange)
        except X12Error as exc:
            reply = self._syntax_reject(x270, exc)
        else:
            today = self.clock().date()
            payer_id = inquiries[0][0].payer.payer_id
            mode = self.outage_for(payer_id)
            if mode in ("unavailable", "silent"):
                reply = StubReply(mode, mode, payer_id=payer_id)
            else:
                if mode == "aaa42":
                    answers = [
                        EligibilityAnswer(q, source_rejection=_UNABLE_TO_RESPOND, reference=ref)
                        for q, ref in inquiries
                    ]
                else:
                    answers = [
                        answer_inquiry(self.roster, q, today, reference=ref) for q, ref in inquiries
                    ]
                text = build_271(answers, **self._envelope(interchange))
                reply = StubReply("answer", mode or "271", text, payer_id)
        with self.lock:
            self.requests += 1
            self.requests_by_payer[reply.payer_id] += 1
            self.outcomes[reply.outcome] += 1
        log.info(
            "stub payer answered",
            extra={"payer": self.name, "payer_id": reply.payer_id, "outcome": reply.outcome},
        )
        return reply

    # -- envelopes and syntax rejects ------------------------------------------------------------

    @staticmethod
    def _inquiries(interchange: Interchange) -> list[tuple[EligibilityInquiry, str]]:
        """Each patient's inquiry with its transaction's BHT03 (the 271 echoes it)."""
        out: list[tuple[EligibilityInquiry, str]] = []
        for group in interchange.groups:
            for tx in group.transactions:
                one = replace(interchange, groups=[FunctionalGroup(group.gs, [tx], group.ge)])
                bht = tx.body[0] if tx.body and tx.body[0].id == "BHT" else None
                reference = bht.get(3) if bht is not None else ""
                out += [(q, reference) for q in read_270(one)]
        if not out:
            raise X12Error("the 270 asks about no patient (no 2000C or 2000D level)", ack_code="5")
        return out

    def _next_control(self) -> int:
        with self.lock:
            return next(self._control) % 999_999_999 or 1

    def _envelope(self, interchange: Interchange) -> _Envelope:
        """Envelope arguments answering ``interchange``: its receiver sends, its sender gets."""
        return {
            "sender_id": interchange.receiver_id or "STUBPAYER",
            "receiver_id": interchange.sender_id or "UNKNOWN",
            "sender_qualifier": interchange.receiver_qualifier or "ZZ",
            "receiver_qualifier": interchange.sender_qualifier or "ZZ",
            "control_number": self._next_control(),
            "now": self.clock(),
            "usage": interchange.usage if interchange.usage in ("P", "T") else "P",
        }

    def _syntax_reject(self, x270: str, exc: X12Error) -> StubReply:
        """A TA1 or a 999 for a 270 that cannot be read; PayerRejected when not even the ISA
        can be."""
        if exc.ack_level in ("IK5", "AK9") or exc.ack_level is None:
            try:
                interchange = parse_interchange(x270, strict=False)
            except X12Error:
                interchange = None
            if interchange is not None and interchange.groups:
                text = build_999(_syntax_fault(interchange, exc), **self._envelope(interchange))
                return StubReply("answer", "999", text)
        fields = _isa_fields(x270)
        if fields is None:
            with self.lock:
                self.requests += 1
                self.outcomes["refused"] += 1
            raise PayerRejected(f"{self.name}: the request is not an X12 interchange") from exc
        isa13, isa09, isa10, sender, receiver = fields
        text = build_ta1(
            request_control_number=isa13,
            request_date=isa09,
            request_time=isa10,
            note=exc.ack_code if exc.ack_level == "TA1" and exc.ack_code else "024",
            sender_id=receiver or "STUBPAYER",
            receiver_id=sender or "UNKNOWN",
            control_number=self._next_control(),
            now=self.clock(),
        )
        return StubReply("answer", "ta1", text)


def _syntax_fault(interchange: Interchange, exc: X12Error) -> SyntaxReject:
    """Which group and transaction set ``exc`` is about, as a 999 says it."""
    group = interchange.groups[0]
    tx: Transaction | None = group.transactions[0] if group.transactions else None
    for g in interchange.groups:
        for t in g.transactions:
            if exc.position is not None and t.st.position <= exc.position <= t.se.position:
                group, tx = g, t
    if exc.ack_level == "AK9" or tx is None:
        return SyntaxReject(
            group.functional_id, group.control_number, group.version, exc.ack_code or "1"
        )
    position = exc.position - tx.st.position + 1 if exc.position is not None else 0
    # a trailer fault (SE01 count, SE02 control number) is the IK502 code alone; a data fault
    # found reading the 270 names its segment (IK3) and element (IK4)
    in_set = exc.ack_level is None and 0 < position <= len(tx.segments)
    return SyntaxReject(
        functional_id=group.functional_id,
        group_control=group.control_number,
        version=group.version,
        code=exc.ack_code if exc.ack_level == "IK5" and exc.ack_code else "5",
        transaction_set=tx.id,
        transaction_control=tx.control_number,
        convention=tx.convention,
        segment_id=(exc.segment_id or "") if in_set else "",
        position=position if in_set else 0,
        element=exc.element if in_set else None,
        element_code="8" if "date" in exc.message.lower() else "7",
    )
