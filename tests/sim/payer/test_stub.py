"""The stub payer in-process: the roster's answers, latency, outages, unreadable 270s."""

from __future__ import annotations

import asyncio
import time
from datetime import date
from decimal import Decimal

import pytest

from engine.adapters.payer import PayerRejected, PayerUnavailable, check_answer
from engine.sim.payer.stub import OutageMode, StubPayer
from engine.x12.ack import read_acks
from engine.x12.x270 import EligibilityInquiry, Person
from engine.x12.x271 import EligibilityResponse, EligibilityResult, read_271
from tests.adapters.payer.conftest import NOW, TRACE, alice, inquiry, x270


@pytest.fixture(scope="module")
def stub() -> StubPayer:
    return StubPayer(clock=lambda: NOW)


def ask(stub: StubPayer, q: EligibilityInquiry, timeout_s: float = 20.0) -> EligibilityResponse:
    text = asyncio.run(stub.exchange(x270(q), timeout_s=timeout_s))
    assert check_answer(text) == text
    (response,) = read_271(text)
    assert response.warnings == [] and response.reference == TRACE
    return response


def one(stub: StubPayer, q: EligibilityInquiry) -> EligibilityResult:
    (result,) = ask(stub, q).results
    assert result.matches(TRACE, "1234567893")
    return result


def amounts(result: EligibilityResult, info: str, network: bool = True) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for b in result.benefits:
        if b.info.code == info and b.in_network is network and b.amount is not None:
            level = b.coverage_level.code if b.coverage_level else ""
            period = b.time_period.code if b.time_period else ""
            types = ",".join(t.code for t in b.service_types)
            out[f"{level}/{types}/{period}"] = b.amount
    return out


def test_active_member_with_every_benefit(stub: StubPayer) -> None:
    result = one(stub, alice())
    assert result.active is True and result.plan == "BLUE PLAN PPO" and not result.errors
    assert result.person is not None and result.person.name == "TESTPATIENT, ALICE MARIE"
    assert result.member_id == "XQZ123456789" and result.birth_date == date(1984, 2, 29)
    assert result.person.references[0].value == "GRP-5521"
    assert amounts(result, "B") == {"IND/98/27": 25, "IND/UC/27": 75}
    assert amounts(result, "B", network=False) == {"IND/98/27": 60, "IND/UC/27": 120}
    assert amounts(result, "C") == {
        "IND/30/23": 1500,
        "IND/30/29": 650,
        "FAM/30/23": 3000,
        "FAM/30/29": 2150,
    }
    assert amounts(result, "G")["IND/30/29"] == 3875
    coinsurance = {b.in_network: b.percent for b in result.benefits if b.info.code == "A"}
    assert coinsurance == {True: Decimal("0.2"), False: Decimal("0.4")}


def test_a_specific_service_type_lists_only_its_copay(stub: StubPayer) -> None:
    result = one(stub, alice(types=("98",)))
    assert [t.code for t in result.benefits[0].service_types] == ["98"]
    assert amounts(result, "B") == {"IND/98/27": 25}
    assert amounts(result, "C")["IND/30/29"] == 650  # plan-wide amounts still come


def test_hmo_member_with_a_message_and_no_out_of_network(stub: StubPayer) -> None:
    result = one(stub, inquiry("WPH330187245", "Abernathy", "Jonah", date(2001, 5, 27)))
    assert result.active and result.plan == "WESTPEAK HEALTH HMO"
    assert result.benefits[0].messages == ["REFERRAL REQUIRED FOR SPECIALIST VISITS"]
    assert all(b.in_network is not False for b in result.benefits)


def test_deductible_met(stub: StubPayer) -> None:
    result = one(stub, inquiry("90A792440268", "Okafor", "Tobias", date(1955, 4, 6)))
    assert amounts(result, "C") == {"IND/30/23": 1000, "IND/30/29": 0}


def test_inactive_member(stub: StubPayer) -> None:
    result = one(stub, inquiry("90A118204771", "Thornbury", "Elise", date(1978, 2, 14)))
    assert result.active is False and result.plan == "SMITH AND JONES PPO GOLD"
    assert [d.qualifier.code for d in result.dates] == ["346", "347"]
    assert result.dates[1].start == date(2025, 12, 31)


def test_coverage_is_judged_on_the_service_date(stub: StubPayer) -> None:
    q = inquiry("90A118204771", "Thornbury", "Elise", service_date=date(2025, 6, 1))
    assert one(stub, q).active is True


@pytest.mark.parametrize(
    ("member", "last", "first", "birth", "relationship"),
    [
        ("W998877665", "O'Brien-Núñez", "Maeve", date(1986, 1, 12), "19"),
        ("94M472803852", "Okafor", "Tobias", date(1954, 9, 19), "01"),
    ],
)
def test_dependents_are_answered_in_2000d(
    stub: StubPayer, member: str, last: str, first: str, birth: date, relationship: str
) -> None:
    dependents = {
        "W998877665": Person(
            last_name="O'Brien-Núñez", first_name="Seán", birth_date=date(2015, 7, 4)
        ),
        "94M472803852": Person(
            last_name="Okafor", first_name="Tobias", birth_date=date(1955, 4, 6)
        ),
    }
    result = one(stub, inquiry(member, last, first, birth, dependent=dependents[member]))
    assert result.loop == "2000D" and result.active is True and not result.errors
    assert result.relationship is not None and result.relationship.code == relationship
    assert result.subscriber is not None and result.subscriber.id == member
    assert result.birth_date == dependents[member].birth_date


def test_a_dependent_the_member_does_not_have(stub: StubPayer) -> None:
    ghost = Person(last_name="Okafor", first_name="Nobody", birth_date=date(2010, 1, 1))
    result = one(stub, inquiry("94M472803852", dependent=ghost))
    assert result.is_dependent
    assert [(e.loop, e.reason.code) for e in result.errors] == [("2100D", "67")]
    wrong_birth = Person(last_name="Okafor", first_name="Tobias", birth_date=date(1999, 1, 1))
    result = one(stub, inquiry("94M472803852", dependent=wrong_birth))
    assert [(e.loop, e.reason.code) for e in result.errors] == [("2100D", "71")]


@pytest.mark.parametrize(
    ("member", "code", "valid"),
    [
        ("SYNERR072", "72", False),
        ("SYNERR073", "73", False),
        ("SYNERR075", "75", True),
        ("SYNERR058", "58", False),
        ("NOT-IN-ROSTER", "75", True),
    ],
)
def test_subscriber_level_rejections(stub: StubPayer, member: str, code: str, valid: bool) -> None:
    result = one(stub, inquiry(member, "Synthetic", "Person", date(1990, 1, 1)))
    (err,) = result.errors
    assert (err.loop, err.reason.code, err.valid_request, err.action) == (
        "2100C",
        code,
        valid,
        "fix",
    )
    assert result.benefits == [] and result.person is not None
    assert result.person.id == member  # the NM1 echoes what was asked


def test_name_and_birth_date_mismatches(stub: StubPayer) -> None:
    wrong_name = one(stub, inquiry("XQZ123456789", "Testpatient", "Alicia", date(1984, 2, 29)))
    assert [e.reason.code for e in wrong_name.errors] == ["73"]
    wrong_birth = one(stub, inquiry("XQZ123456789", "Testpatient", "Alice", date(1984, 3, 1)))
    assert [e.reason.code for e in wrong_birth.errors] == ["71"]
    # names are compared as X12 carries them: accents and apostrophes do not matter
    assert one(stub, inquiry("W998877665", "OBRIEN-NUNEZ", "maeve")).active is True


def test_search_by_name_and_birth_date_without_a_member_id(stub: StubPayer) -> None:
    result = one(stub, inquiry("", "Abernathy", "Jonah", date(2001, 5, 27)))
    assert result.member_id == "WPH330187245" and result.active is True
    assert [
        e.reason.code for e in one(stub, inquiry("", "No", "Match", date(2001, 5, 27))).errors
    ] == ["75"]


def test_latency_and_jitter() -> None:
    stub = StubPayer(latency_ms=60, jitter_ms=40, seed=7, clock=lambda: NOW)
    delays = [stub.delay_s() for _ in range(20)]
    assert all(0.06 <= d <= 0.1 for d in delays) and len(set(delays)) > 1
    started = time.monotonic()
    text = asyncio.run(stub.exchange(x270(alice())))
    assert time.monotonic() - started >= 0.06 and "ST*271" in text


def test_latency_beyond_the_timeout_is_unavailable() -> None:
    stub = StubPayer(latency_ms=5000, clock=lambda: NOW)
    with pytest.raises(PayerUnavailable, match="no answer within 0.05 s"):  # not the 5 s answer
        asyncio.run(stub.exchange(x270(alice()), timeout_s=0.05))
    assert stub.requests == 0  # the stub never got to it


def test_outage_answers_aaa_42_for_the_whole_stub_or_one_payer() -> None:
    stub = StubPayer(clock=lambda: NOW)
    stub.set_outage("aaa42", payer_id="DOWNPAY")
    response = ask(stub, alice(payer_id="DOWNPAY"))
    assert response.results == []
    (err,) = response.errors
    assert (err.loop, err.reason.code, err.follow_up and err.follow_up.code) == ("2100A", "42", "R")
    assert err.action == "retry"
    assert one(stub, alice(payer_id="UPPAY")).active is True  # other payers still answer
    stub.set_outage("aaa42")
    assert ask(stub, alice(payer_id="UPPAY")).errors[0].reason.code == "42"
    stub.set_outage(None)
    stub.set_outage(None, payer_id="DOWNPAY")
    assert one(stub, alice(payer_id="DOWNPAY")).active is True
    assert stub.requests == 4
    assert stub.requests_by_payer == {"DOWNPAY": 2, "UPPAY": 2}
    assert stub.outcomes == {"aaa42": 2, "271": 2}


@pytest.mark.parametrize("mode", ["unavailable", "silent"])
def test_outage_without_an_answer(mode: OutageMode) -> None:
    stub = StubPayer(clock=lambda: NOW)
    stub.set_outage(mode)
    # a silent payer is waited for until the timeout; an unavailable one says so at once
    expected = "no answer within 0.05 s" if mode == "silent" else "the payer is down"
    started = time.monotonic()
    with pytest.raises(PayerUnavailable, match=expected):
        asyncio.run(stub.exchange(x270(alice()), timeout_s=0.05))
    assert mode != "silent" or time.monotonic() - started >= 0.05
    assert stub.outcomes == {mode: 1}


def test_unreadable_270s_get_a_ta1_or_a_999() -> None:
    stub = StubPayer(clock=lambda: NOW)
    good = x270(alice())
    ta1 = asyncio.run(stub.exchange(good.replace("IEA*1*", "IEA*2*")))
    acks = read_acks(ta1)
    assert (
        acks.interchanges[0].note.code == "021"
        and acks.interchanges[0].control_number == "000000042"
    )
    with pytest.raises(PayerRejected, match="TA1: interchange 000000042 rejected: 021"):
        check_answer(ta1)
    count = asyncio.run(stub.exchange(good.replace("SE*", "SE*9")))
    assert read_acks(count).groups[0].transactions[0].codes[0].code == "4"
    bad_date = asyncio.run(stub.exchange(good.replace("DMG*D8*19840229", "DMG*D8*19841329")))
    (tx,) = read_acks(bad_date).groups[0].transactions
    assert (tx.segment_errors[0].segment_id, tx.segment_errors[0].elements[0].code.code) == (
        "DMG",
        "8",
    )
    with pytest.raises(PayerRejected, match="DMG at 1[0-9] DMG02 8"):
        check_answer(bad_date)
    with pytest.raises(PayerRejected, match="not an X12 interchange"):
        asyncio.run(stub.exchange("hello"))
    assert stub.outcomes == {"ta1": 1, "999": 2, "refused": 1} and stub.requests == 4


def test_check_answer_sorts_what_is_not_a_271() -> None:
    with pytest.raises(PayerUnavailable, match="not X12"):
        check_answer("<html>502 Bad Gateway</html>")
    with pytest.raises(PayerUnavailable, match="neither a 271 nor a TA1/999"):
        check_answer(x270(alice()))
