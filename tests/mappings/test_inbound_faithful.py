"""HL7v2 → FHIR keeps what real feeds carry (issue 9): each test is a shape seen in other
projects' test messages that used to lose data while the conversion exited 0."""

from __future__ import annotations

from typing import Any

import pytest

from engine.errors import HL7ValidationError
from engine.hl7v2 import parse_message
from engine.mappings import Mappings, load_mappings
from engine.mappings.fhir_validate import validate_bundle

ORIGINAL_TEXT = "http://hl7.org/fhir/StructureDefinition/originalText"
MSH = "MSH|^~\\&|REG|CLINIC|ENGINE|HUB|20250102030405||ADT^A04|C1|P|2.3"


@pytest.fixture(scope="module")
def mappings() -> Mappings:
    return load_mappings()


def _convert(
    mappings: Mappings, *segments: str, warnings: list[str] | None = None, msh: str = MSH
) -> dict[str, Any]:
    bundle = mappings.to_fhir(parse_message("\r".join((msh, *segments))), warnings)
    validate_bundle(bundle)
    return bundle


def _one(bundle: dict[str, Any], rtype: str) -> dict[str, Any]:
    (res,) = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]
    return res


def _all(bundle: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]


PID = "PID|1||MRN1^^^HOSP^MR||Doe^Jane||19841231|F"


# -- XTN ----------------------------------------------------------------------------------------


def test_phone_and_email_in_one_repetition_both_survive(mappings: Mappings) -> None:
    pid = PID + "|||||5551234^^^jane@example.com"
    telecom = _one(_convert(mappings, pid), "Patient")["telecom"]
    assert {"system": "phone", "value": "5551234"} in telecom
    assert {"system": "email", "value": "jane@example.com"} in telecom
    assert len(telecom) == 2


def test_a_phone_typed_ph_keeps_its_email_too(mappings: Mappings) -> None:
    pid = PID + "|||||^PRN^PH^jane@example.com^1^555^9876543"
    telecom = _one(_convert(mappings, pid), "Patient")["telecom"]
    phones = [t for t in telecom if t["system"] == "phone"]
    emails = [t for t in telecom if t["system"] == "email"]
    assert [p["value"] for p in phones] == ["+1 555 9876543"]
    assert [e["value"] for e in emails] == ["jane@example.com"]


def test_email_alone_and_internet_typed(mappings: Mappings) -> None:
    pid = (
        PID + "|||||^^^only@example.com~^NET^Internet^net@example.com~mail@example.com^NET^Internet"
    )
    telecom = _one(_convert(mappings, pid), "Patient")["telecom"]
    assert [(t["system"], t["value"]) for t in telecom] == [
        ("email", "only@example.com"),
        ("email", "net@example.com"),
        ("email", "mail@example.com"),
    ]


def test_a_phone_is_never_typed_email(mappings: Mappings) -> None:
    pid = PID + "|||||(555)123-4567^^^x@example.com~(555)765-4321"
    telecom = _one(_convert(mappings, pid), "Patient")["telecom"]
    for t in telecom:
        assert (t["system"] == "email") == ("@" in t["value"]), t


# -- PV1 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pv1_2", "code", "kept"),
    [
        ("OUTPATIENT", "AMB", "OUTPATIENT"),
        ("L", "UNK", "L"),
        ("", "UNK", None),
        ("Walk in clinic", "UNK", "Walk in clinic"),
        ("E", "EMER", None),
    ],
)
def test_a_visit_always_makes_a_valid_encounter(
    mappings: Mappings, pv1_2: str, code: str, kept: str | None
) -> None:
    pv1 = f"PV1|1|{pv1_2}|CLINIC^101^A||||1234^Welby^Marcus||||||||||||V555"
    encounter = _one(_convert(mappings, PID, pv1), "Encounter")
    assert encounter["class"]["code"] == code
    texts = [x["valueString"] for x in encounter["class"].get("extension", [])]
    assert texts == ([kept] if kept else [])
    assert encounter["identifier"][0]["value"] == "V555"


def test_registration_without_a_visit_makes_no_encounter(mappings: Mappings) -> None:
    warnings: list[str] = []
    bundle = _convert(mappings, PID, "PV1|1|N", warnings=warnings)
    assert _all(bundle, "Encounter") == []
    assert not any(w.startswith("PV1") for w in warnings)


# -- identifiers and codes ----------------------------------------------------------------------


def test_pid18_is_an_account_number(mappings: Mappings) -> None:
    pid = PID + "||||||||||ACCT991"
    ids = _one(_convert(mappings, pid), "Patient")["identifier"]
    (account,) = [i for i in ids if i["value"] == "ACCT991"]
    assert account["type"]["coding"][0]["code"] == "AN"


@pytest.mark.parametrize("alias", ["MRN", "MR#"])
def test_mrn_aliases_are_the_mrn(mappings: Mappings, alias: str) -> None:
    pid = f"PID|1||X77^^^HOSP^{alias}||Doe^Jane"
    bundle = _convert(mappings, pid)
    (ident,) = _one(bundle, "Patient")["identifier"]
    assert ident["type"]["coding"][0]["code"] == "MR"
    # the conditional update is on the MRN
    (entry,) = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"]
    assert entry["request"]["url"] == "Patient?identifier=urn:engine:identifier:HOSP|X77"


def test_an_unknown_identifier_type_is_kept_as_text(mappings: Mappings) -> None:
    (ident,) = _one(_convert(mappings, "PID|1||X77^^^HOSP^ZZLOCAL"), "Patient")["identifier"]
    assert ident["type"] == {"text": "ZZLOCAL"}


def test_pid2_repeating_pid3_is_kept_once(mappings: Mappings) -> None:
    pid = "PID|1|MRN1|MRN1^^^HOSP^MR||Doe^Jane"
    ids = _one(_convert(mappings, pid), "Patient")["identifier"]
    assert [i["value"] for i in ids] == ["MRN1"]


def test_an_unknown_sex_is_unknown_with_the_code_kept(mappings: Mappings) -> None:
    patient = _one(_convert(mappings, "PID|1||MRN1^^^HOSP^MR||Doe^Jane||19841231|X"), "Patient")
    assert patient["gender"] == "unknown"
    assert patient["_gender"]["extension"] == [{"url": ORIGINAL_TEXT, "valueString": "X"}]


# -- values -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("19841399", "the month does not exist"),
        ("19840231", "the day does not exist in its month"),
        ("198412312599", "the hour does not exist"),
        ("ABC", "not a date/time"),
    ],
)
def test_an_impossible_date_is_an_error_naming_the_field(
    mappings: Mappings, value: str, problem: str
) -> None:
    with pytest.raises(HL7ValidationError) as info:
        _convert(mappings, f"PID|1||MRN1^^^HOSP^MR||Doe^Jane||{value}|F")
    assert info.value.where == "PID-7"
    assert problem in info.value.message
    # a birth date is PHI: neither it nor its parts are echoed
    assert value not in str(info.value)
    assert not any(part in info.value.message for part in ("1984", "13", "31", "25"))


def test_a_doubled_escape_in_msh2_is_read(mappings: Mappings) -> None:
    msh = MSH.replace("^~\\&", "^~\\\\&")
    patient = _one(_convert(mappings, PID, msh=msh), "Patient")
    assert patient["name"][0]["family"] == "Doe"


# -- refusals and warnings ----------------------------------------------------------------------


def test_an_adt_without_pid_is_refused(mappings: Mappings) -> None:
    with pytest.raises(HL7ValidationError, match=r"ADT\^A04 has no PID segment") as info:
        _convert(mappings, "EVN|A04|20250102", "PV1|1|O")
    assert info.value.where == "PID"


def test_an_siu_without_sch_is_refused(mappings: Mappings) -> None:
    msh = MSH.replace("ADT^A04", "SIU^S12")
    with pytest.raises(HL7ValidationError, match=r"SIU\^S12 has no SCH segment"):
        _convert(mappings, PID, msh=msh)


def test_what_no_map_takes_is_listed(mappings: Mappings) -> None:
    warnings: list[str] = []
    pid9 = "PID|1||MRN1^^^HOSP^MR||Doe^Jane||19841231|F|Alias^Ann"
    _convert(mappings, pid9, "ZPI|1|custom|data", warnings=warnings)
    assert "PID: not mapped: PID-9" in warnings
    assert "ZPI: no mapping took this segment (fields 1, 2, 3)" in warnings
    warnings.clear()
    _convert(mappings, PID, warnings=warnings)
    assert warnings == []


def test_repetitions_a_rule_does_not_read_are_listed(mappings: Mappings) -> None:
    warnings: list[str] = []
    pid = PID + "||||||||||ACCT1~ACCT2"  # PID-18 is read once (an account number is one)
    _convert(mappings, pid, warnings=warnings)
    assert warnings == ["PID: not mapped: PID-18 (repetitions after the first)"]
    warnings.clear()
    _convert(mappings, PID + "||||||||||ACCT1~", warnings=warnings)
    assert warnings == []


@pytest.mark.parametrize(
    "pid",
    [
        "PID|1||1001^^^H^MR||Doe^John||19840220|M||||||||||1001",  # account number = MRN
        "PID|1||1001^^^H^MR||Doe^John||19840220|M||||||||||1001^^^H",
        "PID|1||1001^^^^MR~1001^^^^SS||Doe^John",
        "PID|1||1001^^^H^MR~1001^^^H^PI||Doe^John",
    ],
)
def test_identifiers_of_different_types_are_all_kept(mappings: Mappings, pid: str) -> None:
    ids = _one(_convert(mappings, pid), "Patient")["identifier"]
    assert len(ids) == 2, ids


def test_an_siu_with_nobody_taking_part_is_refused_before_the_ack(mappings: Mappings) -> None:
    msh = MSH.replace("ADT^A04", "SIU^S12")
    sch = "SCH|A1^^X|F1^^X|||||||||^^^202601011000^202601011100"
    message = parse_message("\r".join((msh, sch)))
    problem = mappings.inbound.refusal(message)
    assert problem is not None and "Appointment.participant" in str(problem)
    with pytest.raises(HL7ValidationError, match="Appointment.participant"):
        mappings.to_fhir(message)
    assert mappings.inbound.refusal(parse_message("\r".join((msh, sch, PID)))) is None


def test_a_charge_without_a_code_is_not_billed_blind(mappings: Mappings) -> None:
    msh = MSH.replace("ADT^A04", "DFT^P03")
    uncoded = "FT1|1|||20250311||CG||||1|110.00"
    coded = "FT1|2|||20250311||CG|99213^Visit^CPT|||1|110.00"
    warnings: list[str] = []
    bundle = _convert(mappings, PID, uncoded, coded, msh=msh, warnings=warnings)
    assert [i["sequence"] for i in _one(bundle, "Claim")["item"]] == [2]
    assert any(w.startswith("FT1[1]: not mapped") for w in warnings), warnings
    problem = mappings.inbound.refusal(parse_message("\r".join((msh, PID, uncoded))))
    assert problem is not None and "Claim.item" in str(problem)


def test_an_email_under_a_phone_type_is_an_email(mappings: Mappings) -> None:
    telecom = _one(_convert(mappings, PID + "|||||^PRN^PH^a@example.com"), "Patient")["telecom"]
    assert [(t["system"], t["value"]) for t in telecom] == [("email", "a@example.com")]


def test_next_of_kin_and_payer_keep_both_phone_and_email(mappings: Mappings) -> None:
    nk1 = "NK1|1|Doe^Jim|SPO^Spouse^HL70063||0404111111^^^kin@example.com"
    bundle = _convert(mappings, PID, nk1)
    telecom = _one(bundle, "RelatedPerson")["telecom"]
    assert {(t["system"], t["value"]) for t in telecom} == {
        ("phone", "0404111111"),
        ("email", "kin@example.com"),
    }


def test_a_plan_named_only_is_a_valid_coverage_class(mappings: Mappings) -> None:
    in1 = "IN1|1|^Blue Plan|60054^^^^NIIP|Westpeak Health|||||||||||||SEL||||||||||||||||||||W1"
    coverage = _one(_convert(mappings, PID, in1), "Coverage")
    (plan,) = [c for c in coverage["class"] if c["type"]["coding"][0]["code"] == "plan"]
    assert plan["value"] == "Blue Plan" and plan["name"] == "Blue Plan"
