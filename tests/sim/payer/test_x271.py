"""The stub's 271 builder read back by engine.x12.x271.read_271, its TA1/999 by read_acks."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from engine.sim.payer.x271 import (
    BenefitLine,
    EligibilityAnswer,
    PatientAnswer,
    Rejection,
    SyntaxReject,
    build_271,
    build_999,
    build_ta1,
    x12_decimal,
)
from engine.x12.ack import read_acks
from engine.x12.envelope import parse_interchange
from engine.x12.x270 import Person
from engine.x12.x271 import EligibilityResponse, read_271
from tests.adapters.payer.conftest import NOW, TRACE, inquiry

SUBSCRIBER = Person(
    last_name="Harlow",
    first_name="Alice",
    member_id="SYN100001",
    birth_date=date(1984, 3, 15),
    gender="F",
)


def eb(
    info: str,
    level: str,
    service_type: str,
    period: str = "",
    *,
    amount: str | None = None,
    percent: str | None = None,
    network: bool = True,
) -> BenefitLine:
    return BenefitLine(
        info,
        level,
        (service_type,),
        "PR",
        time_period=period,
        amount=Decimal(amount) if amount is not None else None,
        percent=Decimal(percent) if percent is not None else None,
        in_network=network,
    )


def build(*answers: EligibilityAnswer) -> str:
    return build_271(answers, sender_id="SYNPAY", receiver_id="ENGINE", control_number=9, now=NOW)


def read_one(text: str) -> EligibilityResponse:
    interchange = parse_interchange(text)  # strict: every count and control number right
    assert interchange.groups[0].functional_id == "HB"
    responses = read_271(text)
    assert len(responses) == 1 and responses[0].warnings == []
    return responses[0]


def test_active_with_copays_deductible_coinsurance_and_out_of_pocket() -> None:
    lines = (
        BenefitLine("1", "FAM", ("30",), "PR", "Synthetic Gold PPO", messages=("CALL FOR AUTH",)),
        eb("B", "IND", "98", "27", amount="25.00"),
        eb("B", "IND", "UC", "27", amount="75"),
        eb("A", "IND", "30", percent="0.20"),
        eb("C", "IND", "30", "23", amount="1500"),
        eb("C", "IND", "30", "29", amount="650.50"),
        eb("C", "FAM", "30", "23", amount="3000"),
        eb("G", "IND", "30", "23", amount="5000"),
        eb("G", "IND", "30", "29", amount="3875"),
        eb("A", "IND", "30", percent="0.4", network=False),
    )
    answer = PatientAnswer(
        SUBSCRIBER,
        group_number="GRP0042",
        group_name="Synthetic Employer",
        plan_begin=date(2026, 1, 1),
        plan_end=date(2026, 12, 31),
        benefits=lines,
    )
    q = inquiry("SYN100001", "Harlow", "Alice", date(1984, 3, 15))
    response = read_one(build(EligibilityAnswer(q, answer, reference="REF-270")))
    assert response.reference == "REF-270" and response.errors == []
    assert response.payer is not None and response.payer.id == "SYNPAY"
    assert response.receiver is not None and response.receiver.id == "1234567893"
    (result,) = response.results
    assert result.loop == "2000C" and result.matches(TRACE, "1234567893")
    assert result.person is not None and result.person.name == "HARLOW, ALICE"
    assert result.member_id == "SYN100001" and result.birth_date == date(1984, 3, 15)
    assert result.gender is not None and result.gender.code == "F"
    assert result.relationship is not None and result.relationship.code == "18"
    assert [(d.qualifier.code, d.start) for d in result.dates] == [
        ("346", date(2026, 1, 1)),
        ("347", date(2026, 12, 31)),
    ]
    assert result.person.references[0].value == "GRP0042"
    assert result.active is True and result.plan == "SYNTHETIC GOLD PPO" and not result.rejected
    got = [
        (
            b.info.code,
            b.coverage_level.code if b.coverage_level else None,
            [t.code for t in b.service_types],
            b.time_period.code if b.time_period else None,
            b.amount,
            b.percent,
            b.in_network,
        )
        for b in result.benefits
    ]
    want = [
        (
            x.info,
            x.coverage_level,
            list(x.service_types),
            x.time_period or None,
            x.amount,
            x.percent,
            x.in_network,
        )
        for x in lines
    ]
    assert got == want  # Decimal compares by value: 25.00 == 25, 0.20 == 0.2
    assert result.benefits[0].messages == ["CALL FOR AUTH"]
    assert result.benefits[0].insurance_type is not None
    assert result.benefits[0].insurance_type.code == "PR"


def test_inactive() -> None:
    answer = PatientAnswer(
        SUBSCRIBER,
        plan_begin=date(2022, 1, 1),
        plan_end=date(2025, 12, 31),
        benefits=(BenefitLine("6", "IND", ("30",), "", "Synthetic Bronze"),),
    )
    (result,) = read_one(build(EligibilityAnswer(inquiry("SYN100001"), answer))).results
    assert result.active is False and result.plan == "SYNTHETIC BRONZE"
    assert result.dates[-1].start == date(2025, 12, 31) and not result.rejected


def test_dependent_answered_in_2000d() -> None:
    dependent = Person(
        last_name="Harlow", first_name="Ben", birth_date=date(2012, 7, 2), gender="M"
    )
    q = inquiry("SYN100001", "Harlow", "Alice", dependent=dependent)
    answer = EligibilityAnswer(
        q,
        PatientAnswer(SUBSCRIBER),
        PatientAnswer(
            dependent,
            relationship="19",
            plan_begin=date(2026, 1, 1),
            benefits=(BenefitLine("1", "FAM", ("30",), "HM", "Synthetic HMO"),),
        ),
    )
    text = build(answer)
    assert "HL*3*2*22*1~" in text and "HL*4*3*23*0~TRN*2*" in text
    (result,) = read_one(text).results  # the subscriber level only identifies the subscriber
    assert result.loop == "2000D" and result.is_dependent and result.matches(TRACE)
    assert result.person is not None and result.person.name == "HARLOW, BEN"
    assert result.subscriber is not None and result.subscriber.id == "SYN100001"
    assert result.member_id == "SYN100001"
    assert result.relationship is not None and result.relationship.code == "19"
    assert result.birth_date == date(2012, 7, 2) and result.active is True


@pytest.mark.parametrize(
    ("reason", "valid"),
    [("72", False), ("73", False), ("75", True), ("58", False), ("71", False)],
)
def test_subscriber_rejections(reason: str, valid: bool) -> None:
    asked = Person(last_name="Nobody", first_name="Nemo", member_id="SYN999999")
    dependent = Person(last_name="Nobody", first_name="Kid")
    q = inquiry("SYN999999", "Nobody", "Nemo", dependent=dependent)
    rejection = Rejection(reason, "C", valid)
    # a subscriber the payer cannot find has no dependent loop: the TRN moves to 2000C
    text = build(
        EligibilityAnswer(q, PatientAnswer(asked, rejection=rejection), PatientAnswer(dependent))
    )
    response = read_one(text)
    (result,) = response.results
    assert result.loop == "2000C" and result.matches(TRACE) and result.benefits == []
    assert result.person is not None and result.person.id == "SYN999999"  # echoed as asked
    (err,) = result.errors
    assert (err.loop, err.reason.code, err.valid_request) == ("2100C", reason, valid)
    assert err.follow_up is not None and err.follow_up.code == "C"
    assert result.rejected and result.action == "fix"


def test_dependent_not_found_is_an_aaa_in_2100d() -> None:
    dependent = Person(last_name="Harlow", first_name="Zed")
    q = inquiry("SYN100001", dependent=dependent)
    answer = EligibilityAnswer(
        q, PatientAnswer(SUBSCRIBER), PatientAnswer(dependent, rejection=Rejection("67"))
    )
    (result,) = read_one(build(answer)).results
    assert result.is_dependent and [(e.loop, e.reason.code) for e in result.errors] == [
        ("2100D", "67")
    ]


def test_unable_to_respond_ends_after_the_payer() -> None:
    answer = EligibilityAnswer(inquiry("SYN100001"), source_rejection=Rejection("42", "R"))
    text = build(answer)
    assert "HL*1**20*0~" in text and "HL*2" not in text  # X12 RFI 2445: nothing follows
    response = read_one(text)
    assert response.results == [] and response.reference == TRACE
    (err,) = response.errors
    assert (err.loop, err.reason.code, err.action) == ("2100A", "42", "retry")


def test_two_answers_are_two_transaction_sets() -> None:
    a = EligibilityAnswer(inquiry("SYN100001"), PatientAnswer(SUBSCRIBER))
    b = EligibilityAnswer(inquiry("SYN100002"), source_rejection=Rejection("42", "R"))
    responses = read_271(build(a, b))
    assert [r.control_number for r in responses] == ["0001", "0002"]


def test_x12_decimal() -> None:
    assert [x12_decimal(Decimal(v)) for v in ("1500", "1500.00", "0.20", "25.5", "0", "-0")] == [
        "1500",
        "1500",
        "0.2",
        "25.5",
        "0",
        "0",
    ]


def test_ta1_and_999_read_back_as_rejections() -> None:
    ta1 = build_ta1(
        request_control_number="000000042",
        request_date="261127",
        request_time="1800",
        note="021",
        sender_id="SYNPAY",
        receiver_id="ENGINE",
        control_number=3,
        now=NOW,
    )
    acks = read_acks(ta1)
    assert not acks.accepted and acks.action == "fix"
    assert acks.interchanges[0].control_number == "000000042"
    assert acks.interchanges[0].note.code == "021"
    reject = SyntaxReject(
        functional_id="HS",
        group_control="42",
        version="005010X279A1",
        code="5",
        transaction_set="270",
        transaction_control="0001",
        convention="005010X279A1",
        segment_id="DMG",
        position=12,
        element=2,
        element_code="8",
    )
    acks = read_acks(build_999(reject, sender_id="S", receiver_id="R", control_number=4, now=NOW))
    (group,) = acks.groups
    (tx,) = group.transactions
    assert not acks.accepted and acks.action == "fix"
    assert (tx.control_number, tx.codes[0].code) == ("0001", "5")
    (seg,) = tx.segment_errors
    assert (seg.segment_id, seg.position, seg.elements[0].position) == ("DMG", 12, 2)
    assert seg.elements[0].code.code == "8"
    group_reject = SyntaxReject("HS", "42", "005010X279A1", "5")
    acks = read_acks(
        build_999(group_reject, sender_id="S", receiver_id="R", control_number=5, now=NOW)
    )
    assert acks.groups[0].codes[0].code == "5" and acks.groups[0].transactions == ()
