"""The 270 builder and reader: round trips, transliteration, and what cannot be written."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.x12.charset import to_basic
from engine.x12.envelope import parse_interchange
from engine.x12.errors import X12Error
from engine.x12.x270 import (
    Address,
    EligibilityInquiry,
    Payer,
    Person,
    Provider,
    build_270,
    normalize_inquiry,
    npi_is_valid,
    read_270,
)

NOW = datetime(2025, 3, 14, 9, 30)
INQUIRY = EligibilityInquiry(
    payer=Payer("CEDAR VALLEY HEALTH PLAN", "CVHP1"),
    provider=Provider("1234567893", organization="GREENFIELD FAMILY PRACTICE"),
    subscriber=Person(
        "LINDQVIST",
        "ERIK",
        middle_name="J",
        suffix="JR",
        member_id="W987654321",
        birth_date=date(1975, 11, 3),
        gender="M",
        address=Address("12 ELM STREET", "APT 4", "SPRINGFIELD", "IL", "627010000"),
    ),
    trace_number="TRC-0001",
    originator_id="1999999999",
    service_date=date(2025, 3, 14),
    service_types=("30", "98", "UC"),
)


def build(inquiry: EligibilityInquiry, control: int = 7) -> str:
    return build_270(
        inquiry,
        sender_id="GREENFIELDFP",
        receiver_id="CEDARVALLEY",
        control_number=control,
        now=NOW,
    )


def test_subscriber_round_trip() -> None:
    text = build(INQUIRY)
    ic = parse_interchange(text)  # strict: counts and control numbers are right
    assert ic.warnings == []
    assert read_270(text) == [INQUIRY]
    segments = [s.to_x12() for s in next(ic.transactions()).segments]
    assert segments[:4] == [
        "ST*270*0001*005010X279A1~",
        "BHT*0022*13*TRC-0001*20250314*0930~",
        "HL*1**20*1~",
        "NM1*PR*2*CEDAR VALLEY HEALTH PLAN*****PI*CVHP1~",
    ]
    assert "NM1*IL*1*LINDQVIST*ERIK*J**JR*MI*W987654321~" in segments
    assert "TRN*1*TRC-0001*1999999999~" in segments
    assert "DMG*D8*19751103*M~" in segments
    assert "DTP*291*D8*20250314~" in segments
    assert "EQ*30^98^UC~" in segments


def test_dependent_round_trip_puts_trn_dtp_and_eq_at_the_dependent() -> None:
    inquiry = replace(
        INQUIRY,
        subscriber=Person("LINDQVIST", "ERIK", member_id="W987654321"),
        dependent=Person("LINDQVIST", "ASTRID", birth_date=date(2012, 6, 7), gender="F"),
        service_date_end=date(2025, 3, 31),
        service_types=("30",),
        provider=Provider("1987654328", last_name="ABERNATHY", first_name="CLARA"),
    )
    text = build(inquiry)
    assert read_270(text) == [inquiry]
    ids = [s.to_x12() for s in next(parse_interchange(text).transactions()).segments]
    assert ids[6:] == [
        "HL*3*2*22*1~",
        "NM1*IL*1*LINDQVIST*ERIK****MI*W987654321~",
        "HL*4*3*23*0~",
        "TRN*1*TRC-0001*1999999999~",
        "NM1*03*1*LINDQVIST*ASTRID~",
        "DMG*D8*20120607*F~",
        "DTP*291*RD8*20250314-20250331~",
        "EQ*30~",
        "SE*15*0001~",
    ]
    assert "NM1*1P*1*ABERNATHY*CLARA****XX*1987654328~" in ids


def test_names_and_addresses_are_transliterated() -> None:
    inquiry = replace(
        INQUIRY,
        payer=Payer("Cedar Valley: Health*Plan", "CVHP1"),
        subscriber=replace(
            INQUIRY.subscriber,
            last_name="O'Connor-Núñez",
            first_name="Zoë",
            middle_name="",
            suffix="",
            gender="X",
            address=Address("12 Rue de l'Église #4", "Apt 7~8", "São Paulo", "il", "62701-0000"),
        ),
    )
    text = build(inquiry)
    (back,) = read_270(text)
    assert back == normalize_inquiry(inquiry)
    assert back.payer.name == "CEDAR VALLEY HEALTH PLAN"
    assert (back.subscriber.last_name, back.subscriber.first_name) == ("OCONNOR-NUNEZ", "ZOE")
    assert back.subscriber.gender == ""  # DMG03 only for F and M
    assert back.subscriber.address == Address(
        "12 RUE DE LEGLISE 4", "APT 7 8", "SAO PAULO", "IL", "627010000"
    )


def test_default_service_type_is_30_and_no_date_means_no_dtp() -> None:
    text = build(replace(INQUIRY, service_types=(), service_date=None))
    segments = [s.to_x12() for s in parse_interchange(text).segments()]
    assert "EQ*30~" in segments and not any(s.startswith("DTP") for s in segments)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"provider": Provider("1234567890", organization="X")}, "NPI '1234567890' is not ten"),
        ({"payer": Payer("", "CVHP1")}, "the payer name is empty"),
        (
            {"subscriber": Person("LINDQVIST", "ERIK", member_id="W1*2")},
            r"member ID 'W1\*2' contains '\*'",
        ),
        ({"subscriber": Person("LINDQVIST", "ERIK")}, "needs a member ID, or a last name"),
        ({"originator_id": "123"}, "originator ID '123' must be 10 to 10 characters"),
        ({"trace_number": "T~1"}, "trace number 'T~1' contains '~'"),
        ({"service_types": ("30", "ABC")}, "service type code 'ABC' must be 1 to 2"),
        ({"dependent": Person("李", "明")}, "the dependent needs a last and first name"),
        ({"provider": Provider("1234567893")}, "neither an organization nor a last name"),
    ],
)
def test_what_cannot_be_written_is_refused_naming_the_element(
    change: dict[str, object], message: str
) -> None:
    with pytest.raises(X12Error, match=message):
        build(replace(INQUIRY, **change))  # type: ignore[arg-type]


def test_npi_check_digit() -> None:
    assert npi_is_valid("1234567893") and npi_is_valid("1987654328")
    assert not npi_is_valid("1234567890") and not npi_is_valid("123456789")


def test_read_270_refuses_a_271() -> None:
    text = build(INQUIRY).replace("ST*270", "ST*271")
    with pytest.raises(X12Error, match="ST01 '271' is not 270"):
        read_270(text)


names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)


@settings(max_examples=150, deadline=None)
@given(last=names, first=names, line=names, city=names)
def test_any_text_builds_a_valid_270_that_reads_back(
    last: str, first: str, line: str, city: str
) -> None:
    last = last if to_basic(last) else "SMITH"
    line = line if to_basic(line, kind="text") else "1 MAIN ST"
    address = Address(line, "", city, "IL", "62701")
    inquiry = replace(
        INQUIRY,
        subscriber=replace(INQUIRY.subscriber, last_name=last, first_name=first, address=address),
    )
    text = build(inquiry)
    assert read_270(text) == [normalize_inquiry(inquiry)]
