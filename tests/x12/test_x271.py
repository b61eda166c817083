"""The 271 reader on synthetic fixtures (fixtures/x12/271_*.x12)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from engine.x12.errors import X12Error
from engine.x12.x271 import Benefit, EligibilityResult, read_271

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "x12"


def result_of(name: str) -> list[EligibilityResult]:
    (response,) = read_271((FIXTURES / name).read_text())
    assert response.warnings == []
    return response.results


def benefits(result: EligibilityResult, code: str) -> list[Benefit]:
    return [b for b in result.benefits if b.info.code == code]


def test_subscriber_identity_traces_and_dates() -> None:
    (r,) = result_of("271_subscriber_benefits.x12")
    assert (r.loop, r.is_dependent, r.member_id) == ("2000C", False, "W123456789")
    assert r.person is not None and r.person.name == "OCONNOR-NUNEZ, ZOE M"
    assert r.person.address is not None and r.person.address.city == "SPRINGFIELD"
    assert [(ref.qualifier, ref.value) for ref in r.person.references] == [("6P", "G7700123")]
    assert (r.birth_date, r.gender and str(r.gender)) == (date(1980, 2, 29), "F Female")
    assert r.relationship is not None and str(r.relationship) == "18 Self"
    assert [(str(d.qualifier), d.start) for d in r.dates] == [
        ("346 Plan Begin", date(2025, 1, 1)),
        ("347 Plan End", date(2025, 12, 31)),
    ]
    assert r.matches("TRC-20250314-0001") and r.matches("TRC-20250314-0001", "1999999999")
    assert not r.matches("TRC-20250314-0001", "1000000000") and not r.matches("CV-778812")
    assert [t.echoed for t in r.traces] == [True, False]
    assert r.payer is not None and r.payer.name == "CEDAR VALLEY HEALTH PLAN"
    assert r.payer.contacts[0].channels == (("TE", "5555550100"), ("UR", "WWW.CEDARVALLEY.EXAMPLE"))
    assert r.receiver is not None and (r.receiver.id_qualifier, r.receiver.id) == (
        "XX",
        "1234567893",
    )
    assert r.errors == [] and not r.rejected and r.action == "none"


def test_active_coverage_and_plan() -> None:
    (r,) = result_of("271_subscriber_benefits.x12")
    (active,) = benefits(r, "1")
    assert str(active.info) == "1 Active Coverage"
    assert active.coverage_level is not None and active.coverage_level.code == "IND"
    assert [str(s) for s in active.service_types] == ["30 Health Benefit Plan Coverage"]
    assert active.insurance_type is not None and active.insurance_type.code == "PR"
    assert r.active is True and r.plan == "CEDAR VALLEY PPO GOLD"
    assert len(r.benefits) == 16


def test_deductible_calendar_year_and_remaining() -> None:
    (r,) = result_of("271_subscriber_benefits.x12")
    found = [
        (
            b.coverage_level and b.coverage_level.code,
            b.time_period and str(b.time_period),
            b.amount,
            b.in_network,
        )
        for b in benefits(r, "C")
    ]
    assert found == [
        ("IND", "23 Calendar Year", Decimal("1500"), True),
        ("IND", "29 Remaining", Decimal("650.50"), True),
        ("FAM", "23 Calendar Year", Decimal("3000"), True),
        ("IND", "23 Calendar Year", Decimal("3000"), False),
    ]


def test_copay_coinsurance_out_of_pocket() -> None:
    (r,) = result_of("271_subscriber_benefits.x12")
    office, emergency = benefits(r, "B")
    assert [s.code for s in office.service_types] == ["98", "UC"]
    assert (office.amount, str(office.time_period)) == (Decimal("25"), "27 Visit")
    assert office.messages == ["COPAY WAIVED FOR PREVENTIVE VISITS"]
    assert [(str(d.qualifier), d.start) for d in office.dates] == [
        ("348 Benefit Begin", date(2025, 1, 1))
    ]
    assert emergency.amount == Decimal("150")
    assert [(b.percent, b.in_network) for b in benefits(r, "A")] == [
        (Decimal(".2"), True),
        (Decimal(".4"), False),
        (Decimal(".125"), True),
    ]
    oop = benefits(r, "G")
    assert str(oop[0].info) == "G Out of Pocket (Stop Loss)"
    assert [(b.amount, b.time_period and b.time_period.code) for b in oop] == [
        (Decimal("5000"), "23"),
        (Decimal("4200"), "29"),
    ]


def test_limitations_quantities_exclusions_and_related_entities() -> None:
    (r,) = result_of("271_subscriber_benefits.x12")
    allowed, used = benefits(r, "F")
    assert (str(allowed.quantity_qualifier), allowed.quantity) == ("VS Visits", Decimal("20"))
    assert allowed.authorization_required is True and used.authorization_required is None
    assert (str(used.quantity_qualifier), used.quantity) == ("99 Quantity Used", Decimal("6"))
    (non_covered,) = benefits(r, "I")
    assert str(non_covered.service_types[0]) == "BE Massage Therapy"
    (pcp,) = benefits(r, "L")
    (entity,) = pcp.entities
    assert (str(entity.entity), entity.name, entity.id) == (
        "P3 Primary Care Provider",
        "HALVORSEN, INGRID",
        "1245319599",
    )
    assert entity.contacts[0].channels == (("TE", "5555550142"),)


def test_dependents_with_aaa_at_dependent_and_benefit_level() -> None:
    astrid, nils = result_of("271_dependents.x12")
    assert (astrid.loop, astrid.member_id, astrid.is_dependent) == ("2000D", "W987654321", True)
    assert astrid.subscriber is not None and astrid.subscriber.name == "LINDQVIST, ERIK"
    assert astrid.relationship is not None and str(astrid.relationship) == "19 Child"
    assert astrid.matches("TRC-DEP-0002") and not astrid.matches("TRC-DEP-0003")
    assert astrid.active is True and astrid.plan == "CEDAR VALLEY HMO SILVER"
    (err,) = astrid.errors
    assert (
        str(err) == "2110D: 70 Inconsistent with Patient's Gender (C Please Correct and Resubmit)"
    )
    assert err.action == "fix" and not err.valid_request
    vision = astrid.benefits[-1]
    assert vision.errors == [err] and vision.messages == [
        "VISION BENEFITS REQUIRE A SEPARATE INQUIRY"
    ]
    assert not astrid.rejected and astrid.action == "fix"
    assert nils.person is not None and nils.person.first_name == "NILS"
    assert [str(e) for e in nils.errors] == [
        "2100D: 77 Subscriber Found, Patient Not Found (C Please Correct and Resubmit)"
    ]
    assert nils.rejected and nils.benefits == [] and nils.active is None


def test_rejected_subscriber() -> None:
    (r,) = result_of("271_rejected_subscriber.x12")
    assert [e.reason.code for e in r.errors] == ["72", "73"]
    assert r.errors[0].reason.meaning == "Invalid/Missing Subscriber/Insured ID"
    assert r.errors[0].loop == "2100C" and r.rejected and r.action == "fix"


def test_rejected_at_the_source_has_no_results() -> None:
    (response,) = read_271((FIXTURES / "271_rejected_source.x12").read_text())
    assert response.results == []
    (err,) = response.errors
    assert (
        str(err)
        == "2000A: 42 Unable to Respond at Current Time (X Please Wait 10 Days and Resubmit)"
    )
    assert (err.action, err.wait_days, err.valid_request) == ("retry", 10, True)
    assert response.payer is not None and response.payer.id == "CVHP1"
    assert response.reference == "TRC-SRC-0005" and response.created is not None


def test_inactive_coverage() -> None:
    (r,) = result_of("271_inactive.x12")
    assert r.active is False and r.plan == "CEDAR VALLEY PPO GOLD"
    assert r.benefits[0].messages == ["COVERAGE TERMINATED 12/31/2024"]


def fixture_with(old: str, new: str) -> str:
    text = (FIXTURES / "271_subscriber_benefits.x12").read_text()
    assert old in text
    return text.replace(old, new)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("*23*1500*", "*23*15O0*", "segment 22 (EB): EB07 '15O0' is not a number"),
        (
            "DMG*D8*19800229",
            "DMG*D8*19810229",
            "segment 17 (DMG): DMG02 '19810229' is not a CCYYMMDD",
        ),
        ("DTP*346*D8", "DTP*346*D6", "segment 19 (DTP): DTP02 'D6' is not D8 or RD8"),
        ("HL*3*2*22*0", "HL*3*9*22*0", "segment 10 (HL): HL02 '9' names no level 21 before it"),
        ("HL*3*2*22*0", "HL*3*2*24*0", "segment 10 (HL): HL03 '24' is not a 270/271 level"),
        ("ST*271", "ST*270", "segment 3 (ST): ST01 '270' is not 271"),
    ],
)
def test_unreadable_content_is_refused_naming_segment_and_element(
    old: str, new: str, message: str
) -> None:
    text = fixture_with(old, new)
    if old == "ST*271":
        text = text.replace("GS*HB", "GS*HS")
    with pytest.raises(X12Error) as info:
        read_271(text)
    assert str(info.value).startswith(message)


def test_oddities_that_can_be_read_around_are_warnings() -> None:
    text = fixture_with("HL*2*1*21*1", "HL*2*1*21*0").replace("INS*Y*18*001*25~", "XYZ*1~")
    (response,) = read_271(text)
    assert response.warnings == [
        "segment 8 (HL): HL04 says no children, but HL 3 (segment 10) is its child",
        "segment 18 (XYZ): unexpected in loop 2100C; ignored",
    ]
    assert response.results[0].relationship is not None
