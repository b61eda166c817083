"""Acknowledgments of what we sent: the TA1 (interchange) and the 999 (005010X231A1).

A TA1 answers an interchange's envelope: TA101 its ISA13, TA104 ``A`` accepted, ``E`` accepted
with errors, ``R`` rejected, TA105 a note code saying why. A 999 answers the functional groups and
transaction sets inside::

    AK1  functional group (GS01, GS06, GS08)
    AK2    transaction set (ST01, ST02, ST03)          loop 2000
    IK3      segment error: ID, position in the set, loop, IK304 code       loop 2100
    CTX      context
    IK4        element error: position (element:component:repetition), reference number,
               IK403 code, the bad value                                     loop 2110
    IK5    transaction set result: IK501 A/E/M/R/W/X, IK502-IK506 codes
    AK9  group result: AK901 A/E/M/P/R/W/X, counts (included, received, accepted), AK905-AK909

:func:`read_acks` reads every TA1 and 999 of an interchange into an :class:`AckResult` that says
whether everything was accepted, why not (each reason names the code and its meaning, and for a
999 the segment and element at fault), and what to do: ``none``, ``retry`` (send again with new
control numbers: a duplicate control number, a truncated transmission) or ``fix`` (the data or
the trading-partner setup is wrong; sending it again unchanged would fail again).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.x12 import codes
from engine.x12.codes import Action, Code, describe
from engine.x12.envelope import Interchange, Transaction, parse_interchanges
from engine.x12.errors import X12Error
from engine.x12.segments import Segment

__all__ = [
    "AckResult",
    "ElementError",
    "GroupAck",
    "InterchangeAck",
    "SegmentError",
    "TransactionAck",
    "read_999_transaction",
    "read_acks",
    "read_ta1",
]

#: TA105 notes after which sending again (with a new ISA13) can succeed unchanged
_TA1_RETRY = frozenset(("023", "025"))
#: IK502 / AK905 codes after which sending again with new control numbers can succeed
_999_RETRY = frozenset(("23",))
_AK9_RETRY = frozenset(("19",))
_REJECTED = frozenset("MRWX")


def _worst(actions: list[Action]) -> Action:
    order: tuple[Action, ...] = ("none", "retry", "fix", "stop")
    return max(actions, key=order.index, default="none")


@dataclass(frozen=True, slots=True)
class InterchangeAck:
    """A TA1: the answer about interchange ``control_number`` (TA101 = our ISA13)."""

    control_number: str
    date: str
    time: str
    status: Code
    note: Code

    @property
    def accepted(self) -> bool:
        """TA104 A or E: the interchange was taken (E: with errors noted in TA105)."""
        return self.status.code in ("A", "E")

    @property
    def action(self) -> Action:
        if self.accepted:
            return "none"
        return "retry" if self.note.code in _TA1_RETRY else "fix"

    def __str__(self) -> str:
        verdict = {"A": "accepted", "E": "accepted with errors", "R": "rejected"}.get(
            self.status.code, f"status {self.status.code}"
        )
        note = "" if self.note.code == "000" else f": {self.note}"
        return f"TA1: interchange {self.control_number} {verdict}{note}"


def read_ta1(seg: Segment) -> InterchangeAck:
    """One TA1 segment."""
    if seg.get(4) not in codes.TA104_CODES:
        raise X12Error(
            f"TA104 {seg.get(4)!r} is not A, E or R",
            segment_id="TA1",
            position=seg.position,
            element=4,
        )
    return InterchangeAck(
        control_number=seg.get(1),
        date=seg.get(2),
        time=seg.get(3),
        status=describe(codes.TA104_CODES, seg.get(4)),
        note=describe(codes.TA105_CODES, seg.get(5) or "000"),
    )


@dataclass(frozen=True, slots=True)
class ElementError:
    """IK4: element ``position`` (and component, repetition) of the segment, IK403 why."""

    position: int
    component: int | None
    repetition: int | None
    reference: str
    code: Code
    bad_value: str

    def label(self, segment_id: str = "") -> str:
        """``NM109``, ``EB03 repetition 2``, ``EB13-2``: the element as a guide names it."""
        name = f"{segment_id}{self.position:02d}" if segment_id else f"element {self.position}"
        if self.component:
            name += f"-{self.component}"
        if self.repetition:
            name += f" repetition {self.repetition}"
        return name

    def describe(self, segment_id: str = "") -> str:
        ref = f" (data element {self.reference})" if self.reference else ""
        bad = f", value {self.bad_value!r}" if self.bad_value else ""
        return f"{self.label(segment_id)}{ref}: {self.code}{bad}"

    def __str__(self) -> str:
        return self.describe()


@dataclass(frozen=True, slots=True)
class SegmentError:
    """IK3: segment ``segment_id`` at ``position`` in the transaction set (ST = 1)."""

    segment_id: str
    position: int
    loop: str
    code: Code | None
    elements: tuple[ElementError, ...] = ()
    context: tuple[str, ...] = ()

    def __str__(self) -> str:
        loop = f" (loop {self.loop})" if self.loop else ""
        head = f"segment {self.segment_id} at position {self.position}{loop}"
        parts = [str(self.code)] if self.code else []
        parts += [e.describe(self.segment_id) for e in self.elements]
        return f"{head}: " + "; ".join(parts) if parts else head


@dataclass(frozen=True, slots=True)
class TransactionAck:
    """AK2 ... IK5: the answer about one transaction set we sent."""

    transaction_set: str
    control_number: str
    convention: str
    status: Code
    codes: tuple[Code, ...]
    segment_errors: tuple[SegmentError, ...]

    @property
    def accepted(self) -> bool:
        """IK501 A or E."""
        return self.status.code in ("A", "E")

    @property
    def action(self) -> Action:
        if self.accepted:
            return "none"
        if self.codes and all(c.code in _999_RETRY for c in self.codes):
            return "retry"
        return "fix"

    def __str__(self) -> str:
        verdict = "accepted" if self.accepted else "rejected"
        if self.status.code == "E":
            verdict = "accepted with errors"
        detail = [str(c) for c in self.codes] + [str(e) for e in self.segment_errors]
        head = f"999: transaction {self.transaction_set} {self.control_number} {verdict}"
        return head + (": " + "; ".join(detail) if detail else "")


@dataclass(frozen=True, slots=True)
class GroupAck:
    """AK1 ... AK9: the answer about one functional group (``control_number`` = our GS06)."""

    functional_id: str
    control_number: str
    version: str
    status: Code
    included: int
    received: int
    accepted_count: int
    codes: tuple[Code, ...]
    transactions: tuple[TransactionAck, ...]

    @property
    def accepted(self) -> bool:
        """AK901 A or E: every transaction set was accepted (P: only some)."""
        return self.status.code in ("A", "E")

    @property
    def action(self) -> Action:
        if self.accepted:
            return "none"
        actions = [t.action for t in self.transactions if not t.accepted]
        if self.status.code in _REJECTED and not actions:
            group_retry = self.codes and all(c.code in _AK9_RETRY for c in self.codes)
            actions.append("retry" if group_retry else "fix")
        return _worst(actions)

    def __str__(self) -> str:
        head = (
            f"999: group {self.functional_id} {self.control_number} {self.status.code} "
            f"{self.status.meaning} ({self.accepted_count} of {self.received} transaction sets "
            "accepted)"
        )
        return head + ("".join(f"; {c}" for c in self.codes))


@dataclass
class AckResult:
    """Every TA1 and 999 of one or more interchanges, and the verdict."""

    interchanges: list[InterchangeAck] = field(default_factory=list)
    groups: list[GroupAck] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        """Nothing was rejected: every TA1 and every 999 group and transaction accepted."""
        return all(a.accepted for a in self.interchanges) and all(
            g.accepted and all(t.accepted for t in g.transactions) for g in self.groups
        )

    @property
    def action(self) -> Action:
        actions = [a.action for a in self.interchanges] + [g.action for g in self.groups]
        return _worst(actions)

    @property
    def reasons(self) -> list[str]:
        """One line per rejection or noted error: the code, its meaning, the segment."""
        out = [str(a) for a in self.interchanges if a.status.code != "A"]
        for group in self.groups:
            if group.status.code != "A":
                out.append(str(group))
            out += [str(t) for t in group.transactions if t.status.code != "A"]
        return out


def _int(seg: Segment, n: int) -> int:
    value = seg.get(n)
    if not value.isdigit():
        raise X12Error(
            f"{seg.id}{n:02d} {value!r} is not a number",
            segment_id=seg.id,
            position=seg.position,
            element=n,
        )
    return int(value)


def _ik4(seg: Segment) -> ElementError:
    parts = seg.components(1)
    if not parts or not parts[0].isdigit():
        raise X12Error(
            f"IK401 {seg.get(1)!r} is not an element position",
            segment_id="IK4",
            position=seg.position,
            element=1,
        )
    comp = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    rep = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else None
    return ElementError(
        position=int(parts[0]),
        component=comp,
        repetition=rep,
        reference=seg.get(2),
        code=describe(codes.IK403_CODES, seg.get(3)),
        bad_value=seg.get(4),
    )


def _segment_error(ik3: Segment, ik4s: list[ElementError], contexts: list[str]) -> SegmentError:
    """Loop 2100: an IK3 with its CTX and its IK4s (loop 2110)."""
    return SegmentError(
        segment_id=ik3.get(1),
        position=_int(ik3, 2),
        loop=ik3.get(3),
        code=describe(codes.IK304_CODES, ik3.get(4)) if ik3.get(4) else None,
        elements=tuple(ik4s),
        context=tuple(contexts),
    )


def _transaction_ack(ak2: Segment, ik5: Segment, errors: list[SegmentError]) -> TransactionAck:
    """Loop 2000: the AK2 naming our transaction set, the IK5 answering it, its segment errors."""
    return TransactionAck(
        transaction_set=ak2.get(1),
        control_number=ak2.get(2),
        convention=ak2.get(3),
        status=describe(codes.IK501_CODES, ik5.get(1)),
        codes=tuple(describe(codes.IK502_CODES, ik5.get(n)) for n in range(2, 7) if ik5.get(n)),
        segment_errors=tuple(errors),
    )


def _group_ack(ak1: Segment, ak9: Segment, transactions: list[TransactionAck]) -> GroupAck:
    """The AK1 naming our functional group, the AK9 answering it, its transaction sets."""
    return GroupAck(
        functional_id=ak1.get(1),
        control_number=ak1.get(2),
        version=ak1.get(3),
        status=describe(codes.AK901_CODES, ak9.get(1)),
        included=_int(ak9, 2),
        received=_int(ak9, 3),
        accepted_count=_int(ak9, 4),
        codes=tuple(describe(codes.AK905_CODES, ak9.get(n)) for n in range(5, 10) if ak9.get(n)),
        transactions=tuple(transactions),
    )


def read_999_transaction(tx: Transaction) -> list[GroupAck]:
    """The group acknowledgments (AK1 ... AK9) of one 999 transaction set."""
    if tx.id != "999":
        raise X12Error(
            f"ST01 {tx.id!r} is not 999", segment_id="ST", position=tx.st.position, element=1
        )
    groups: list[GroupAck] = []
    ak1: Segment | None = None
    ak2: Segment | None = None
    transactions: list[TransactionAck] = []
    seg_errors: list[SegmentError] = []
    ik3: Segment | None = None
    ik4s: list[ElementError] = []
    contexts: list[str] = []

    def close_ik3() -> None:
        nonlocal ik3, ik4s, contexts
        if ik3 is not None:
            seg_errors.append(_segment_error(ik3, ik4s, contexts))
        ik3, ik4s, contexts = None, [], []

    for seg in tx.body:
        sid = seg.id
        if sid == "AK1":
            ak1, transactions = seg, []
        elif sid == "AK2":
            ak2, seg_errors = seg, []
        elif sid == "IK3":
            close_ik3()
            ik3 = seg
        elif sid == "IK4":
            ik4s.append(_ik4(seg))
        elif sid == "CTX":
            contexts.append(seg.get(1))
        elif sid == "IK5":
            close_ik3()
            if ak2 is None:
                raise X12Error("IK5 without an AK2", segment_id="IK5", position=seg.position)
            transactions.append(_transaction_ack(ak2, seg, seg_errors))
            ak2 = None
        elif sid == "AK9":
            if ak1 is None:
                raise X12Error("AK9 without an AK1", segment_id="AK9", position=seg.position)
            groups.append(_group_ack(ak1, seg, transactions))
            ak1 = None
    if ak1 is not None:
        raise X12Error(f"AK1 ({ak1.where()}) has no AK9", segment_id="AK1", position=ak1.position)
    return groups


def read_acks(source: str | bytes | Interchange, *, strict: bool = True) -> AckResult:
    """Every TA1 and 999 in ``source``; other transaction sets are refused."""
    interchanges = (
        [source] if isinstance(source, Interchange) else parse_interchanges(source, strict=strict)
    )
    result = AckResult()
    for interchange in interchanges:
        result.interchanges.extend(read_ta1(seg) for seg in interchange.ta1)
        for tx in interchange.transactions():
            result.groups.extend(read_999_transaction(tx))
    return result
