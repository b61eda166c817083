"""What the stub payer's roster answers to one eligibility inquiry (the rules, no I/O).

:func:`answer_inquiry` looks the subscriber up by member ID (2100C NM109), or by last name, first
name and birth date when the 270 sends no ID, and says (as a
:class:`~engine.sim.payer.x271.EligibilityAnswer`):

* found, active on the service date (DTP*291, else the stub's today): EB*1 coverage with the
  plan, then per network (EB12 Y/N) the copays by service type (EB*B, EB06 27 per visit),
  coinsurance (EB*A), deductible and out-of-pocket maximum (EB*C, EB*G; calendar year EB06 23
  and remaining EB06 29, individual and family). Copays are listed for the service types asked
  (all of them when ``30`` is asked); the plan-wide amounts always;
* found, not active on that date: EB*6 inactive, with the plan's dates (DTP*346/347);
* a roster member with ``reject``: that AAA in 2100C (72, 73, 75, 58 ...);
* member ID not in the roster: AAA*Y**75*C (subscriber not found; correct and resubmit);
* the name sent differs from the roster's: AAA*N**73*C; the birth date sent: AAA*N**71*C;
* a dependent (2000D) the member does not have: AAA*Y**67*C in 2100D (patient not found); one
  whose birth date differs: AAA*N**71*C in 2100D. When a dependent is asked about, the 2000C
  level only identifies the subscriber and the benefits are the dependent's (2110D).

Names are compared as X12 carries them (:func:`engine.x12.charset.to_basic`: upper case, accents
and apostrophes gone); a middle name is not compared.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import date
from decimal import Decimal

from engine.sim.payer.roster import (
    RELATIONSHIP_CODES,
    Accumulator,
    Dependent,
    Member,
    NetworkBenefits,
    Roster,
)
from engine.sim.payer.x271 import (
    BenefitLine,
    EligibilityAnswer,
    PatientAnswer,
    Rejection,
)
from engine.x12.charset import to_basic
from engine.x12.x270 import EligibilityInquiry, Person

__all__ = ["answer_inquiry", "find_member"]

_NOT_FOUND = Rejection("75", "C", True)
_NAME_MISMATCH = Rejection("73", "C", False)
_BIRTH_DATE_MISMATCH = Rejection("71", "C", False)
_PATIENT_NOT_FOUND = Rejection("67", "C", True)


def _basic(name: str) -> str:
    return to_basic(name, max_length=60)


def _accumulator(
    info: str, acc: Accumulator | None, ins: str, network: bool
) -> Iterator[BenefitLine]:
    if acc is None:
        return
    for level, period, amount in (
        ("IND", "23", acc.individual),
        ("IND", "29", acc.individual_remaining),
        ("FAM", "23", acc.family),
        ("FAM", "29", acc.family_remaining),
    ):
        if amount is not None:
            yield BenefitLine(info, level, ("30",), ins, "", period, amount, in_network=network)


def _network_lines(
    benefits: NetworkBenefits | None, network: bool, ins: str, asked: tuple[str, ...]
) -> Iterator[BenefitLine]:
    if benefits is None:
        return
    for code, amount in benefits.copays.items():
        if "30" in asked or code in asked:
            yield BenefitLine("B", "IND", (code,), ins, "", "27", amount, in_network=network)
    if benefits.coinsurance_percent is not None:
        percent = benefits.coinsurance_percent / Decimal(100)
        yield BenefitLine("A", "IND", ("30",), ins, percent=percent, in_network=network)
    yield from _accumulator("C", benefits.deductible, ins, network)
    yield from _accumulator("G", benefits.out_of_pocket, ins, network)


def _active_on(member: Member, when: date) -> bool:
    cov = member.coverage
    if not member.active or cov is None:
        return False
    return cov.start <= when and (cov.end is None or when <= cov.end)


def _benefits(
    member: Member, when: date, asked: tuple[str, ...], dependent: Dependent | None = None
) -> tuple[BenefitLine, ...]:
    ins = member.insurance_type
    level = "FAM" if member.dependents else "IND"
    types = asked or ("30",)
    active = _active_on(member, when) and (dependent is None or dependent.active)
    if not active:
        return (BenefitLine("6", level, types, ins, member.plan),)
    lines = [BenefitLine("1", level, types, ins, member.plan, messages=tuple(member.messages))]
    lines += _network_lines(member.in_network, True, ins, types)
    lines += _network_lines(member.out_of_network, False, ins, types)
    return tuple(lines)


def find_member(roster: Roster, sub: Person) -> tuple[str, Member | None]:
    """``(member ID, member)`` by NM109, else by exact name and birth date (one match only)."""
    members = roster.members
    if sub.member_id:
        return sub.member_id, members.get(sub.member_id)
    if not (sub.last_name and sub.first_name and sub.birth_date):
        return "", None
    found = [
        (mid, m)
        for mid, m in members.items()
        if m.reject is None
        and _basic(m.last_name) == _basic(sub.last_name)
        and _basic(m.first_name) == _basic(sub.first_name)
        and m.birth_date == sub.birth_date
    ]
    return found[0] if len(found) == 1 else ("", None)


def _dependent(member: Member, asked: Person, when: date, types: tuple[str, ...]) -> PatientAnswer:
    match = [
        d
        for d in member.dependents
        if _basic(d.last_name) == _basic(asked.last_name)
        and _basic(d.first_name) == _basic(asked.first_name)
    ]
    if not match:
        return PatientAnswer(asked, rejection=_PATIENT_NOT_FOUND)
    dep = match[0]
    if asked.birth_date is not None and asked.birth_date != dep.birth_date:
        return PatientAnswer(asked, rejection=_BIRTH_DATE_MISMATCH)
    cov = member.coverage
    return PatientAnswer(
        Person(
            last_name=dep.last_name,
            first_name=dep.first_name,
            middle_name=dep.middle_name,
            suffix=dep.suffix,
            birth_date=dep.birth_date,
            gender=dep.gender,
        ),
        relationship=RELATIONSHIP_CODES[dep.relationship],
        plan_begin=cov.start if cov else None,
        plan_end=cov.end if cov else None,
        benefits=_benefits(member, when, types, dep),
    )


def answer_inquiry(
    roster: Roster, inquiry: EligibilityInquiry, today: date, *, reference: str = ""
) -> EligibilityAnswer:
    """The roster's answer to one inquiry; ``today`` when the 270 names no service date."""
    sub = inquiry.subscriber
    when = inquiry.service_date or today
    member_id, member = find_member(roster, sub)

    def rejected(rejection: Rejection) -> EligibilityAnswer:
        return EligibilityAnswer(
            inquiry, PatientAnswer(sub, rejection=rejection), reference=reference
        )

    if member is None:
        return rejected(_NOT_FOUND)
    if member.reject is not None:
        r = member.reject
        return rejected(Rejection(r.code, r.follow_up, r.valid_request))
    if (sub.last_name and _basic(sub.last_name) != _basic(member.last_name)) or (
        sub.first_name and _basic(sub.first_name) != _basic(member.first_name)
    ):
        return rejected(_NAME_MISMATCH)
    if sub.birth_date is not None and sub.birth_date != member.birth_date:
        return rejected(_BIRTH_DATE_MISMATCH)
    cov = member.coverage
    subscriber = PatientAnswer(
        Person(
            last_name=member.last_name,
            first_name=member.first_name,
            middle_name=member.middle_name,
            suffix=member.suffix,
            member_id=member_id,
            birth_date=member.birth_date,
            gender=member.gender,
        ),
        group_number=member.group.number if member.group else "",
        group_name=member.group.name if member.group else "",
        plan_begin=cov.start if cov else None,
        plan_end=cov.end if cov else None,
        benefits=_benefits(member, when, inquiry.service_types),
    )
    if inquiry.dependent is None:
        return EligibilityAnswer(inquiry, subscriber, reference=reference)
    # the subscriber level only identifies the subscriber of the dependent asked about
    subscriber = replace(subscriber, plan_begin=None, plan_end=None, benefits=())
    dependent = _dependent(member, inquiry.dependent, when, inquiry.service_types)
    return EligibilityAnswer(inquiry, subscriber, dependent, reference=reference)
