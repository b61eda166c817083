"""Real-world 271s: envelope faults are warnings (noted in a 999), truncation refused, 4010."""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest

from engine.mappings.fhir_validate import validate_bundle
from engine.x12.ack import read_acks
from engine.x12.acknowledge import acknowledge
from engine.x12.envelope import Interchange, parse_interchange
from engine.x12.errors import X12Error
from engine.x12.fhir import x271_to_fhir
from engine.x12.x271 import read_271

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures" / "x12"
CONFORMANCE = ROOT.parent / "shared" / "conformance" / "x12"
NOW = datetime(2025, 3, 14, 9, 45)


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def with_segment(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


SUBSCRIBER = fixture("271_subscriber_benefits.x12")
# "SE*<n>*0001~" of the fixture, and its segment position
_SE = re.search(r"SE\*(\d+)\*0001~", SUBSCRIBER)
assert _SE is not None
SE_COUNT = int(_SE.group(1))
SE_POSITION = SE_COUNT + 2  # ISA, GS, then ST ... SE


@pytest.mark.parametrize(
    ("old", "new", "warning"),
    [
        (
            f"SE*{SE_COUNT}*0001~",
            f"SE*{SE_COUNT - 1}*0001~",
            f"segment {SE_POSITION} (SE): SE01 says {SE_COUNT - 1} segments, the transaction "
            f"has {SE_COUNT}",
        ),
        (
            f"SE*{SE_COUNT}*0001~",
            f"SE*{SE_COUNT}*0009~",
            f"segment {SE_POSITION} (SE): SE02 '0009' does not match ST02 '0001' (segment 3)",
        ),
        (
            "GE*1*101~",
            "GE*3*101~",
            f"segment {SE_POSITION + 1} (GE): GE01 says 3 transaction sets, the group has 1",
        ),
        (
            "GE*1*101~",
            "GE*1*999~",
            f"segment {SE_POSITION + 1} (GE): GE02 '999' does not match GS06 '101' (segment 2)",
        ),
        (
            "IEA*1*000000101~",
            "IEA*2*000000101~",
            f"segment {SE_POSITION + 2} (IEA): IEA01 says 2 functional groups, the interchange "
            "has 1",
        ),
        (
            "IEA*1*000000101~",
            "IEA*1*000000102~",
            f"segment {SE_POSITION + 2} (IEA): IEA02 '000000102' does not match ISA13 "
            "'000000101' (segment 1)",
        ),
    ],
    ids=["SE01", "SE02", "GE01", "GE02", "IEA01", "IEA02"],
)
def test_envelope_faults_of_a_271_are_warnings_by_default(old: str, new: str, warning: str) -> None:
    text = with_segment(SUBSCRIBER, old, new)
    (response,) = read_271(text)
    assert warning in response.warnings
    assert response.results[0].member_id == "W123456789"  # the answer is read all the same
    collected: list[str] = []
    bundle = x271_to_fhir(text, warnings=collected)
    assert warning in collected
    validate_bundle(bundle)
    with pytest.raises(X12Error, match=re.escape(warning.split(": ", 1)[1])):
        read_271(text, strict=True)


def test_the_fixture_control_numbers_are_what_the_cases_assume() -> None:
    ic = parse_interchange(SUBSCRIBER)
    assert (ic.control_number, ic.groups[0].control_number) == ("000000101", "101")
    assert ic.warnings == [] and ic.faults == []


@pytest.mark.parametrize(
    ("cut", "message"),
    [
        (lambda t: t[: t.index("IEA*")], "the data ends after this segment; expected GS"),
        (lambda t: t[: t.index("SE*")], "the data ends after this segment; expected SE"),
        (lambda t: t[: t.index("EB*") + 8], "the data ends after this segment; expected SE"),
        (
            lambda t: re.sub(r"SE\*\d+\*0001~", "", t),
            "transaction 271 '0001' (segment 3) has no SE before this GE",
        ),
        (
            lambda t: t[: t.index("SE*")] + t,
            "transaction 271 '0001' (segment 3) has no SE before this ISA",
        ),
    ],
    ids=["no-IEA", "no-SE-at-end", "cut-mid-segment", "no-SE", "next-ISA-inside"],
)
def test_truncated_interchanges_are_refused_even_when_lenient(cut: object, message: str) -> None:
    assert callable(cut)
    text = cut(SUBSCRIBER)
    for strict in (False, True):
        with pytest.raises(X12Error, match=re.escape(message)):
            read_271(text, strict=strict)
    with pytest.raises(X12Error, match=re.escape(message)):
        x271_to_fhir(text)


# -- the 999 that notes what was tolerated ---------------------------------------------------


def ack999(interchange: Interchange) -> str:
    return acknowledge(
        interchange, sender_id="GREENFIELDFP", receiver_id="CEDARVALLEY", control_number=55, now=NOW
    )


def test_a_clean_interchange_is_acknowledged_a_and_reads_back() -> None:
    ack = ack999(parse_interchange(SUBSCRIBER))
    assert "AK1*HB*101*005010X279A1~AK2*271*0001*005010X279A1~IK5*A~AK9*A*1*1*1~" in ack
    assert "TA1" not in ack
    result = read_acks(ack)
    assert result.accepted and result.reasons == []


def test_count_and_control_faults_are_noted_in_the_999_not_rejected() -> None:
    text = with_segment(SUBSCRIBER, f"SE*{SE_COUNT}*0001~", f"SE*{SE_COUNT + 4}*0001~")
    text = with_segment(text, "GE*1*101~", "GE*2*777~")
    text = with_segment(text, "IEA*1*000000101~", "IEA*1*000000100~")
    interchange = parse_interchange(text, strict=False)
    assert [(f.segment_id, f.element, f.ack_level, f.ack_code) for f in interchange.faults] == [
        ("SE", 1, "IK5", "4"),
        ("GE", 1, "AK9", "5"),
        ("GE", 2, "AK9", "4"),
        ("IEA", 2, "TA1", "001"),
    ]
    ack = ack999(interchange)
    assert "TA1*000000101*250314*0931*E*001~" in ack
    assert "IK5*E*4~" in ack
    assert "AK9*E*2*1*1*5*4~" in ack  # GE01 claimed 2, 1 received, 1 accepted
    result = read_acks(ack)
    assert result.accepted  # E is an acceptance
    (group,) = result.groups
    assert group.status.code == "E" and [c.code for c in group.codes] == ["5", "4"]
    (tx,) = group.transactions
    assert tx.status.code == "E" and tx.codes[0].meaning == (
        "Number of Included Segments Does Not Match Actual Count"
    )
    assert result.interchanges[0].note.code == "001"
    assert any("accepted with errors" in r for r in result.reasons)


def test_a_control_number_mismatch_is_ik502_3() -> None:
    text = with_segment(SUBSCRIBER, f"SE*{SE_COUNT}*0001~", f"SE*{SE_COUNT}*0002~")
    ack = ack999(parse_interchange(text, strict=False))
    assert "IK5*E*3~AK9*E*1*1*1~" in ack


# -- 4010 ----------------------------------------------------------------------------------


def test_a_4010_271_is_read_with_a_warning_naming_the_version() -> None:
    text = fixture("271_4010_subscriber.x12")
    (response,) = read_271(text)
    assert response.warnings == [
        "segment 1 (ISA): ISA12 '00401' is a 4010 envelope; its transactions are read as their "
        "GS08 says",
        "segment 2 (GS): GS08 '004010X092A1': a 4010 271, read as 4010 with the 005010X279A1 "
        "reader (same loops and segments; 4010-only codes show as unknown)",
    ]
    (result,) = response.results
    assert (result.member_id, result.active, result.plan) == (
        "Q40100001",
        True,
        "CEDAR VALLEY PPO GOLD",
    )
    assert result.matches("TRC-4010-0001")
    assert [(b.info.code, b.amount, b.percent) for b in result.benefits][1:] == [
        ("C", Decimal(500), None),
        ("C", Decimal("125.5"), None),
        ("B", Decimal(25), None),
        ("A", None, Decimal(".2")),
    ]
    warnings: list[str] = []
    bundle = x271_to_fhir(text, warnings=warnings)
    validate_bundle(bundle)
    assert any("read as 4010" in w for w in warnings)
    response_res = next(
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "CoverageEligibilityResponse"
    )
    assert response_res["insurance"][0]["inforce"] is True


def test_another_version_is_refused_naming_gs08() -> None:
    text = fixture("271_4010_subscriber.x12").replace("004010X092A1", "003070X070")
    with pytest.raises(X12Error) as info:
        read_271(text)
    assert str(info.value) == (
        "segment 2 (GS): GS08 '003070X070': X12 version 003070 is not read; a 271 is read as "
        "005010X279A1 or 004010X092A1"
    )
    assert (info.value.element, info.value.ack_code, info.value.ack_level) == (8, "2", "AK9")


# -- public samples (read-only, outside the repository) -------------------------------------


@pytest.mark.skipif(not CONFORMANCE.is_dir(), reason="shared conformance samples not present")
def test_every_public_271_sample_converts_leniently_with_named_warnings() -> None:
    samples = sorted(
        p
        for p in CONFORMANCE.rglob("*")
        if p.is_file() and (p.suffix == ".271" or p.name.startswith("271_"))
    )
    assert len(samples) >= 10
    faulty = 0
    for path in samples:
        warnings: list[str] = []
        bundle = x271_to_fhir(path.read_bytes(), warnings=warnings)
        validate_bundle(bundle)
        assert all(re.match(r"segment \d+ \(\w+\): ", w) for w in warnings), path.name
        faulty += any("SE01 says" in w or "SE02" in w for w in warnings)
    assert faulty >= 8  # the oopfactory Validation* files and the linuxforhealth error sample


def test_an_isa_off_its_fixed_widths_is_read_by_its_separators_when_lenient() -> None:
    short = SUBSCRIBER.replace("*ZZ*GREENFIELDFP   *", "*ZZ*GREENFIELDFP  *", 1)
    message = (
        "segment 1 (ISA): ISA is 105 characters, X12 fixes it at 106: ISA08 (interchange "
        "receiver ID) is 14 characters, must be 15"
    )
    with pytest.raises(X12Error, match=re.escape(message)):
        parse_interchange(short)
    lenient = parse_interchange(short, strict=False)
    assert lenient.warnings == [message + "; read by its element separators"]
    assert lenient.receiver_id == "GREENFIELDFP"
    assert [(f.segment_id, f.ack_level, f.ack_code) for f in lenient.faults] == [
        ("ISA", "TA1", "008")
    ]
    assert "TA1*000000101*250314*0931*E*008~" in ack999(lenient)
    (response,) = read_271(short)
    assert response.results[0].member_id == "W123456789"


def test_a_ta1_after_the_groups_is_named_and_tolerated_when_lenient() -> None:
    text = SUBSCRIBER.replace("IEA*", "TA1*000000044*250314*0930*A*000~IEA*", 1)
    message = "a TA1 after a functional group; X12 puts TA1s between the ISA and the first GS"
    with pytest.raises(X12Error, match=re.escape(message)):
        parse_interchange(text)
    assert parse_interchange(text, strict=False).ta1[0].get(1) == "000000044"


def test_dates_padded_with_spaces_are_read() -> None:
    text = with_segment(SUBSCRIBER, "DMG*D8*19800229*F~", "DMG*D8*19800229 *F~")
    (response,) = read_271(text)
    assert str(response.results[0].birth_date) == "1980-02-29"
