"""Writing a payer's answers, for the stub payer: the 271 (005010X279A1), and the TA1 or 999
(005010X231A1) a payer sends back for a 270 it cannot read.

What :func:`build_271` writes for each :class:`EligibilityAnswer`, one transaction set each::

    ST*271*0001*005010X279A1   BHT*0022*11*<270's BHT03>*CCYYMMDD*HHMMSS
    2000A  HL*1**20*1
    2100A    NM1*PR*2*<payer>*****PI*<payer id>     AAA*Y**42*R when the payer cannot answer
                                                    now; nothing follows it (X12 RFI 2445)
    2000B  HL*2*1*21*1
    2100B    NM1*1P*2*<organization>*****XX*<NPI>
    2000C  HL*3*2*22*0|1
             TRN*2*<270's trace>*<270's originator>  (in 2000D instead when a dependent follows)
    2100C    NM1*IL*1*<last>*<first>*<middle>**<suffix>*MI*<member id>
             REF*6P*<group number>*<group name>      AAA*<Y|N>**<reason>*<follow-up>
             DMG*D8*<birth date>*<gender>            DTP*346 (plan begin), DTP*347 (plan end)
    2110C    EB*<info>*<level>*<service types>*<insurance type>*<plan>*<period>*<amount>*
               <percent>****<network>                MSG*<text>
    2000D  HL*4*3*23*0   TRN*2 ...;  2100D NM1*03, AAA, DMG, INS*N*<relationship>, DTP;  2110D EB

Per the guide, when a 2100C/2100D AAA says the person was not found (or the request was wrong),
the NM1 echoes what the 270 sent and no benefit loops follow. Amounts and percents are written
as X12 decimals without trailing zeros (``1500``, ``0.2`` for 20%). Names pass through
:func:`engine.x12.charset.to_basic`; identifiers are written as received.

:func:`build_ta1` answers an interchange whose envelope is wrong (TA104 R, a TA105 note code);
:func:`build_999` rejects one functional group or transaction set (AK9/IK5 R, the IK3/IK4 of the
fault when it is known).

Incomplete: no 2120C/D (related entities: a PCP, another payer), no HSD/III, no TRN*1 of the
payer's own; one 271 transaction set per patient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from engine.x12.charset import to_basic
from engine.x12.envelope import SegmentData, build_interchange
from engine.x12.errors import X12Error
from engine.x12.segments import DEFAULT_DELIMITERS, Element, format_segment
from engine.x12.x270 import CONVENTION, EligibilityInquiry, Person

__all__ = [
    "ACK_CONVENTION",
    "BenefitLine",
    "EligibilityAnswer",
    "PatientAnswer",
    "Rejection",
    "SyntaxReject",
    "build_271",
    "build_999",
    "build_ta1",
    "x12_decimal",
]

#: GS08/ST03 of a 999
ACK_CONVENTION = "005010X231A1"


@dataclass(frozen=True)
class Rejection:
    """An AAA: ``reason`` AAA03 (42, 72, 75 ...), ``follow_up`` AAA04 (C correct and resubmit,
    R resubmission allowed ...), ``valid_request`` AAA01 (Y/N)."""

    reason: str
    follow_up: str = "C"
    valid_request: bool = True


@dataclass(frozen=True)
class BenefitLine:
    """One EB (loop 2110C/D) and its MSG segments. ``percent`` is a fraction (0.2 is 20%);
    ``in_network`` writes EB12 Y/N (None: not sent)."""

    info: str
    coverage_level: str = ""
    service_types: tuple[str, ...] = ()
    insurance_type: str = ""
    plan_name: str = ""
    time_period: str = ""
    amount: Decimal | None = None
    percent: Decimal | None = None
    in_network: bool | None = None
    messages: tuple[str, ...] = ()


@dataclass(frozen=True)
class PatientAnswer:
    """The payer's answer about one person: who (as the payer has them, or as asked when not
    found), the plan dates, the benefits, or the AAA that stands for them."""

    person: Person
    #: INS02 for a dependent (19 child, 01 spouse); "" writes no INS (a subscriber)
    relationship: str = ""
    group_number: str = ""
    group_name: str = ""
    plan_begin: date | None = None
    plan_end: date | None = None
    benefits: tuple[BenefitLine, ...] = ()
    rejection: Rejection | None = None


@dataclass(frozen=True)
class EligibilityAnswer:
    """A 271 transaction set answering ``inquiry``.

    ``source_rejection`` (2100A AAA, e.g. 42 unable to respond now) ends the answer after the
    payer's name. Otherwise ``subscriber`` is required; ``dependent`` answers a 270 that asked
    about a dependent (2000D). ``reference`` is BHT03: the 270's BHT03 (default its trace).
    """

    inquiry: EligibilityInquiry
    subscriber: PatientAnswer | None = None
    dependent: PatientAnswer | None = None
    source_rejection: Rejection | None = None
    reference: str = ""


def x12_decimal(value: Decimal) -> str:
    """An X12 R (decimal) value: no exponent, no trailing zeros (``1500``, ``0.2``)."""
    if not value.is_finite():
        raise X12Error(f"{value} is not a number X12 can carry")
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text


def _d8(value: date) -> str:
    return value.strftime("%Y%m%d")


def _aaa(rejection: Rejection) -> SegmentData:
    valid = "Y" if rejection.valid_request else "N"
    return ("AAA", [valid, "", rejection.reason, rejection.follow_up])


def _eb(line: BenefitLine) -> list[SegmentData]:
    eb: list[Element] = [
        line.info,
        line.coverage_level,
        list(line.service_types),
        line.insurance_type,
        to_basic(line.plan_name, kind="text", max_length=50),
        line.time_period,
        x12_decimal(line.amount) if line.amount is not None else "",
        x12_decimal(line.percent) if line.percent is not None else "",
        "",
        "",
        "",
        {True: "Y", False: "N", None: ""}[line.in_network],
    ]
    out: list[SegmentData] = [("EB", eb)]
    out += [("MSG", [to_basic(text, kind="text", max_length=264)]) for text in line.messages]
    return out


def _person(answer: PatientAnswer, entity: str) -> list[SegmentData]:
    """NM1 ... DTP and the 2110 loops of a 2100C (``IL``) or 2100D (``03``)."""
    p = answer.person
    nm1: list[Element] = [
        entity,
        "1",
        to_basic(p.last_name, max_length=60),
        to_basic(p.first_name, max_length=35),
        to_basic(p.middle_name, max_length=25),
        "",
        to_basic(p.suffix, max_length=10),
    ]
    if p.member_id:
        nm1 += ["MI", p.member_id]
    out: list[SegmentData] = [("NM1", nm1)]
    if answer.group_number and answer.rejection is None:
        out.append(("REF", ["6P", answer.group_number, to_basic(answer.group_name, kind="text")]))
    if answer.rejection is not None:
        out.append(_aaa(answer.rejection))
    if p.birth_date is not None:
        gender = p.gender if p.gender in ("F", "M", "U") else ""
        out.append(("DMG", ["D8", _d8(p.birth_date), gender]))
    if answer.rejection is not None:
        return out
    if answer.relationship:
        out.append(("INS", ["N", answer.relationship]))
    if answer.plan_begin is not None:
        out.append(("DTP", ["346", "D8", _d8(answer.plan_begin)]))
    if answer.plan_end is not None:
        out.append(("DTP", ["347", "D8", _d8(answer.plan_end)]))
    for line in answer.benefits:
        out += _eb(line)
    return out


def _body(answer: EligibilityAnswer, now: datetime) -> list[SegmentData]:
    inquiry = answer.inquiry
    payer, provider = inquiry.payer, inquiry.provider
    reference = answer.reference or inquiry.trace_number
    body: list[SegmentData] = [
        ("BHT", ["0022", "11", reference, _d8(now), now.strftime("%H%M%S")]),
        ("HL", ["1", "", "20", "0" if answer.source_rejection else "1"]),
        (
            "NM1",
            [
                "PR",
                "2",
                to_basic(payer.name, kind="text", max_length=60),
                "",
                "",
                "",
                "",
                payer.id_qualifier or "PI",
                payer.payer_id,
            ],
        ),
    ]
    if answer.source_rejection is not None:
        body.append(_aaa(answer.source_rejection))
        return body
    if answer.subscriber is None:
        raise X12Error("a 271 answer needs a subscriber (loop 2000C) or a 2100A rejection")
    if provider.organization:
        name: list[Element] = ["2", to_basic(provider.organization, kind="text", max_length=60)]
        name += ["", ""]
    else:
        name = ["1", to_basic(provider.last_name, max_length=60)]
        name += [to_basic(provider.first_name, max_length=35), ""]
    body += [
        ("HL", ["2", "1", "21", "1"]),
        ("NM1", ["1P", *name, "", "", provider.id_qualifier or "XX", provider.npi]),
    ]
    dependent = answer.dependent
    # a subscriber the payer could not find has no dependents to answer for
    if answer.subscriber.rejection is not None:
        dependent = None
    trn: SegmentData = ("TRN", ["2", inquiry.trace_number, inquiry.originator_id])
    body.append(("HL", ["3", "2", "22", "1" if dependent else "0"]))
    if dependent is None:
        body.append(trn)
    body += _person(answer.subscriber, "IL")
    if dependent is not None:
        body += [("HL", ["4", "3", "23", "0"]), trn]
        body += _person(dependent, "03")
    return body


def build_271(
    answers: Sequence[EligibilityAnswer],
    *,
    sender_id: str,
    receiver_id: str,
    control_number: int,
    now: datetime,
    sender_qualifier: str = "ZZ",
    receiver_qualifier: str = "ZZ",
    usage: str = "P",
) -> str:
    """A 271 interchange, one transaction set per answer (ISA13 = GS06 = ``control_number``).

    Raises :class:`X12Error` when a value cannot be written (an identifier with a delimiter).
    """
    return build_interchange(
        [_body(a, now) for a in answers],
        transaction_set="271",
        convention=CONVENTION,
        functional_id="HB",
        sender_id=sender_id,
        receiver_id=receiver_id,
        control_number=control_number,
        now=now,
        sender_qualifier=sender_qualifier,
        receiver_qualifier=receiver_qualifier,
        usage=usage,
    )


def build_ta1(
    *,
    request_control_number: str,
    request_date: str,
    request_time: str,
    note: str,
    sender_id: str,
    receiver_id: str,
    control_number: int,
    now: datetime,
    sender_qualifier: str = "ZZ",
    receiver_qualifier: str = "ZZ",
    usage: str = "P",
) -> str:
    """An interchange holding only a TA1 that rejects interchange ``request_control_number``
    (TA101-TA103: the request's ISA13, ISA09, ISA10; TA104 R; TA105 ``note``)."""
    envelope = build_interchange(
        [],
        transaction_set="999",
        convention=ACK_CONVENTION,
        functional_id="FA",
        sender_id=sender_id,
        receiver_id=receiver_id,
        control_number=control_number,
        now=now,
        sender_qualifier=sender_qualifier,
        receiver_qualifier=receiver_qualifier,
        usage=usage,
    )
    d = DEFAULT_DELIMITERS
    isa = envelope[: envelope.index(d.segment) + 1]  # the ISA, fixed width, is written first
    ta1 = format_segment("TA1", [request_control_number, request_date, request_time, "R", note], d)
    return isa + ta1 + format_segment("IEA", ["0", f"{control_number:09d}"], d)


@dataclass(frozen=True)
class SyntaxReject:
    """What a 999 rejects: a group (GS01, GS06, GS08), and a transaction set in it (ST01, ST02,
    ST03) unless the fault is the group's (``transaction_set`` empty).

    ``code`` is the IK502 (transaction) or AK905 (group) syntax error code; ``segment_id`` and
    ``position`` (in the transaction set, ST = 1) the segment at fault with its IK304 code, and
    ``element`` the element with its IK403 code, when known.
    """

    functional_id: str
    group_control: str
    version: str
    code: str
    transaction_set: str = ""
    transaction_control: str = ""
    convention: str = ""
    segment_id: str = ""
    position: int = 0
    segment_code: str = "8"
    element: int | None = None
    element_code: str = "7"


def build_999(
    reject: SyntaxReject,
    *,
    sender_id: str,
    receiver_id: str,
    control_number: int,
    now: datetime,
    sender_qualifier: str = "ZZ",
    receiver_qualifier: str = "ZZ",
    usage: str = "P",
) -> str:
    """A 999 interchange rejecting one group or one transaction set (AK901 R, IK501 R)."""
    r = reject
    body: list[SegmentData] = [("AK1", [r.functional_id, r.group_control, r.version])]
    group_codes: list[Element] = []
    if r.transaction_set:
        body.append(("AK2", [r.transaction_set, r.transaction_control, r.convention]))
        if r.segment_id and r.position > 0:
            body.append(("IK3", [r.segment_id, str(r.position), "", r.segment_code]))
            if r.element is not None:
                body.append(("IK4", [str(r.element), "", r.element_code]))
        body.append(("IK5", ["R", r.code]))
    else:
        group_codes = [r.code]
    body.append(("AK9", ["R", "1", "1", "0", *group_codes]))
    return build_interchange(
        [body],
        transaction_set="999",
        convention=ACK_CONVENTION,
        functional_id="FA",
        sender_id=sender_id,
        receiver_id=receiver_id,
        control_number=control_number,
        now=now,
        sender_qualifier=sender_qualifier,
        receiver_qualifier=receiver_qualifier,
        usage=usage,
    )
