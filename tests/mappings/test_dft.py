"""DFT^P03 → Claim, with its patient, visit, coverages and providers.

Two synthetic fixtures: ``dft_p03`` (two charges with CPT codes and modifiers, two ICD-10-CM
diagnoses, two insurances, an attending with an NPI) and ``dft_p03_minimal`` (one charge carrying
only FT1-7, no DG1, one insurance). Each is checked on meaning, validated against the R4B models
and compared with its golden file; variations of them check the fallbacks and exclusions.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from engine.errors import HL7ValidationError
from engine.hl7v2 import parse_message
from engine.mappings import Mappings, load_mappings
from engine.mappings.fhir_validate import validate_bundle
from engine.mappings.golden import differences
from engine.mappings.transforms import TransformContext, get_transform

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
CPT = "http://www.ama-assn.org/go/cpt"
HCPCS = "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
NPI = "http://hl7.org/fhir/sid/us-npi"
ENCOUNTER_EXT = "http://hl7.org/fhir/5.0/StructureDefinition/extension-Claim.encounter"


@pytest.fixture(scope="module")
def mappings() -> Mappings:
    return load_mappings()


def _text(name: str) -> str:
    return (FIXTURES / "hl7" / f"{name}.hl7").read_text(encoding="ascii")


def _bundle(mappings: Mappings, text: str) -> dict[str, Any]:
    return mappings.to_fhir(parse_message("\r".join(text.splitlines())))


def _resources(bundle: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]


def _claim(bundle: dict[str, Any]) -> dict[str, Any]:
    (claim,) = _resources(bundle, "Claim")
    return claim


def _target(bundle: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """The bundle entry's resource a reference points at (by fullUrl)."""
    (res,) = [e["resource"] for e in bundle["entry"] if e["fullUrl"] == ref["reference"]]
    return res


def _codes(concept: dict[str, Any]) -> list[tuple[str | None, str]]:
    return [(c.get("system"), c["code"]) for c in concept["coding"]]


def _replace_line(text: str, prefix: str, line: str) -> str:
    lines = text.splitlines()
    (i,) = [n for n, old in enumerate(lines) if old.startswith(prefix)]
    lines[i] = line
    return "\n".join(lines)


@pytest.fixture(scope="module")
def full(mappings: Mappings) -> dict[str, Any]:
    return _bundle(mappings, _text("dft_p03"))


@pytest.fixture(scope="module")
def minimal(mappings: Mappings) -> dict[str, Any]:
    return _bundle(mappings, _text("dft_p03_minimal"))


# -- the full fixture ------------------------------------------------------------------------


def test_claim_header(full: dict[str, Any]) -> None:
    claim = _claim(full)
    assert claim["status"] == "active"
    assert claim["use"] == "claim"
    assert _codes(claim["type"]) == [
        ("http://terminology.hl7.org/CodeSystem/claim-type", "professional")
    ]
    assert _codes(claim["priority"]) == [
        ("http://terminology.hl7.org/CodeSystem/processpriority", "normal")
    ]
    # EVN-2, not the date of service
    assert datetime.fromisoformat(claim["created"]) == datetime.fromisoformat(
        "2025-03-10T14:29:55-04:00"
    )


def test_items_codes_modifiers_and_amounts(full: dict[str, Any]) -> None:
    first, second = _claim(full)["item"]
    assert first["sequence"] == 1
    # FT1-25 with CPT; FT1-7 holds the same CPT code, so it is not repeated
    assert _codes(first["productOrService"]) == [(CPT, "99214")]
    assert [_codes(m) for m in first["modifier"]] == [[(CPT, "25")]]
    assert first["servicedDate"] == "2025-03-10"
    assert first["quantity"] == {"value": 1}
    assert first["unitPrice"] == {"value": 185.0, "currency": "USD"}
    assert first["net"] == {"value": 185.0, "currency": "USD"}

    assert second["sequence"] == 2
    # FT1-25 (C4 = CPT) first, then the practice's own charge code from FT1-7
    assert _codes(second["productOrService"]) == [(CPT, "97110"), (None, "PT110")]
    # GP sent without a system is HCPCS Level II; 59 came with CPT
    assert [_codes(m) for m in second["modifier"]] == [[(HCPCS, "GP")], [(CPT, "59")]]
    assert second["servicedPeriod"] == {"start": "2025-03-03", "end": "2025-03-10"}
    assert second["quantity"] == {"value": 2}
    assert second["unitPrice"] == {"value": 45.0, "currency": "USD"}
    assert second["net"] == {"value": 90.0, "currency": "USD"}


def test_diagnoses_are_icd10cm(full: dict[str, Any]) -> None:
    diagnoses = _claim(full)["diagnosis"]
    assert [d["sequence"] for d in diagnoses] == [1, 2]
    # DG1-3.3 I10 and I10C are both ICD-10-CM on a US claim
    assert [_codes(d["diagnosisCodeableConcept"]) for d in diagnoses] == [
        [(ICD10CM, "E11.9")],
        [(ICD10CM, "M17.11")],
    ]
    principal = [
        d["sequence"]
        for d in diagnoses
        if any(c["code"] == "principal" for t in d.get("type", []) for c in t["coding"])
    ]
    assert principal == [1]


def test_insurance_points_at_each_coverage_in_order(full: dict[str, Any]) -> None:
    claim = _claim(full)
    coverage_urls = [
        e["fullUrl"] for e in full["entry"] if e["resource"]["resourceType"] == "Coverage"
    ]
    assert len(coverage_urls) == 2
    insurance = claim["insurance"]
    assert [(i["sequence"], i["focal"]) for i in insurance] == [(1, True), (2, False)]
    assert [i["coverage"]["reference"] for i in insurance] == coverage_urls
    members = [_target(full, i["coverage"])["subscriberId"] for i in insurance]
    assert members == ["90A118204771", "94M550913268"]
    # the insurer is the primary coverage's payer
    primary = _target(full, insurance[0]["coverage"])
    assert claim["insurer"] == primary["payor"][0]
    assert _target(full, claim["insurer"])["identifier"][0]["value"] == "90417"


def test_provider_and_care_team_have_npis(full: dict[str, Any]) -> None:
    claim = _claim(full)
    provider = _target(full, claim["provider"])
    assert provider["resourceType"] == "Practitioner"
    assert {"system": NPI, "value": "1710497466"}.items() <= provider["identifier"][0].items()
    # each line points at its own performer (FT1-20)
    by_seq = {m["sequence"]: m for m in claim["careTeam"]}
    performers = []
    for item in claim["item"]:
        (seq,) = item["careTeamSequence"]
        practitioner = _target(full, by_seq[seq]["provider"])
        ident = practitioner["identifier"][0]
        performers.append((ident["system"], ident["value"]))
    assert performers == [(NPI, "1710497466"), (NPI, "1483029579")]
    assert claim["careTeam"][0]["provider"] == claim["provider"]


def test_patient_encounter_and_facility(full: dict[str, Any]) -> None:
    claim = _claim(full)
    patient = _target(full, claim["patient"])
    mrn = [
        i
        for i in patient["identifier"]
        if any(c["code"] == "MR" for c in i.get("type", {}).get("coding", []))
    ]
    assert [(i["system"], i["value"]) for i in mrn] == [
        ("urn:oid:2.25.184592301472019384756", "M20418835")
    ]
    assert patient["birthDate"] == "1978-02-14"
    (ext,) = claim["extension"]
    assert ext["url"] == ENCOUNTER_EXT
    encounter = _target(full, ext["valueReference"])
    assert encounter["resourceType"] == "Encounter"
    assert encounter["identifier"][0]["value"] == "V000000207"
    assert encounter["subject"] == claim["patient"]
    assert _target(full, claim["facility"])["name"] == "CLINIC EXAM3"
    assert _target(full, claim["enterer"])["identifier"][0]["value"] == "u40217"


# -- the minimal fixture ---------------------------------------------------------------------


def test_minimal_claim(minimal: dict[str, Any]) -> None:
    claim = _claim(minimal)
    (item,) = claim["item"]
    # FT1-7 when FT1-25 is empty
    assert _codes(item["productOrService"]) == [(CPT, "99213")]
    assert "modifier" not in item and "unitPrice" not in item
    # no currency sent: USD
    assert item["net"] == {"value": 110.0, "currency": "USD"}
    assert item["quantity"] == {"value": 1}
    assert item["servicedDate"] == "2025-03-11"
    assert "diagnosis" not in claim and "careTeam" not in claim
    assert "careTeamSequence" not in item
    # no FT1-20: the attending (PV1-7)
    provider = _target(minimal, claim["provider"])
    assert (provider["identifier"][0]["system"], provider["identifier"][0]["value"]) == (
        NPI,
        "1710497466",
    )
    (insurance,) = claim["insurance"]
    assert (insurance["sequence"], insurance["focal"]) == (1, True)
    assert _target(minimal, insurance["coverage"])["resourceType"] == "Coverage"
    patient = _target(minimal, claim["patient"])
    assert patient["identifier"][0]["value"] == "M20533107"


# -- validation and golden files ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["dft_p03", "dft_p03_minimal"])
def test_valid_and_golden(mappings: Mappings, name: str) -> None:
    bundle = _bundle(mappings, _text(name))
    validate_bundle(bundle)
    expected = json.loads((FIXTURES / "fhir" / f"{name}.json").read_text(encoding="utf-8"))
    assert differences(expected, bundle) == []


# -- variations ------------------------------------------------------------------------------


def test_payments_and_adjustments_are_not_billed(mappings: Mappings) -> None:
    text = _text("dft_p03")
    payment = "FT1|3|PAY000000077||20250310|20250310|PY|COPAY^Copay^L|||1|-25.00&USD"
    text = text.replace("\nDG1|1|", f"\n{payment}\nDG1|1|", 1)
    claim = _claim(_bundle(mappings, text))
    assert [i["sequence"] for i in claim["item"]] == [1, 2]


def test_a_payment_first_still_bills_the_charges_after_it(mappings: Mappings) -> None:
    """Issue 9: a Claim is made from every charge, whatever comes first (it used to be made only
    when the first FT1 was a charge, and a DFT starting with a copay lost its charges)."""
    payment = "FT1|1|||20250311||PY|COPAY^Copay^L|||1|-25.00&USD"
    charge = "FT1|2|||20250311||CG|99213^Office visit^CPT|||1|110.00"
    text = _replace_line(_text("dft_p03_minimal"), "FT1|", payment + "\n" + charge)
    bundle = _bundle(mappings, text)
    validate_bundle(bundle)
    (item,) = _claim(bundle)["item"]
    assert item["sequence"] == 2
    warnings: list[str] = []
    mappings.to_fhir(parse_message(text.replace("\n", "\r")), warnings)
    assert any(w.startswith("FT1[1]: ") for w in warnings), warnings


def test_only_payments_is_refused_naming_the_reason(mappings: Mappings) -> None:
    text = _replace_line(
        _text("dft_p03_minimal"), "FT1|", "FT1|1|||20250311||PY|COPAY^Copay^L|||1|-25.00&USD"
    )
    with pytest.raises(HL7ValidationError, match=r"makes no Claim: it has no Claim.item"):
        _bundle(mappings, text)


def test_the_gate_refuses_payments_only_and_no_ft1_before_the_ack(mappings: Mappings) -> None:
    """``refusal`` runs before the ACK: what cannot make a Claim is refused there (AR/AE), a DFT
    with a charge is not."""
    text = _text("dft_p03_minimal")
    assert mappings.inbound.refusal(parse_message(text.replace("\n", "\r"))) is None
    payments = _replace_line(text, "FT1|", "FT1|1|||20250311||PY|COPAY^Copay^L|||1|-25.00&USD")
    problem = mappings.inbound.refusal(parse_message(payments.replace("\n", "\r")))
    assert problem is not None and "makes no Claim: it has no Claim.item" in str(problem)
    no_ft1 = "\r".join(line for line in text.splitlines() if not line.startswith("FT1|"))
    problem = mappings.inbound.refusal(parse_message(no_ft1))
    assert problem is not None and problem.where == "FT1"
    bad_date = _replace_line(text, "FT1|", "FT1|1|||20251311||CG|99213^Visit^CPT|||1|110.00")
    problem = mappings.inbound.refusal(parse_message(bad_date.replace("\n", "\r")))
    assert problem is not None and problem.where == "FT1-4"


def test_no_ft1_is_refused(mappings: Mappings) -> None:
    text = "\n".join(
        line for line in _text("dft_p03_minimal").splitlines() if not line.startswith("FT1|")
    )
    with pytest.raises(HL7ValidationError, match=r"DFT\^P03 has no FT1 segment") as info:
        _bundle(mappings, text)
    assert info.value.where == "FT1"


def test_created_falls_back_to_msh7(mappings: Mappings) -> None:
    text = _replace_line(_text("dft_p03_minimal"), "EVN|", "EVN|P03")
    claim = _claim(_bundle(mappings, text))
    assert datetime.fromisoformat(claim["created"]) == datetime.fromisoformat(
        "2025-03-11T09:15:22-04:00"
    )


def test_currency_sent_is_kept(mappings: Mappings) -> None:
    text = _replace_line(
        _text("dft_p03_minimal"),
        "FT1|",
        "FT1|1|||20250311||CG|99213^Office visit^CPT|||1|110.00&CAD|110.00&CAD",
    )
    (item,) = _claim(_bundle(mappings, text))["item"]
    assert item["net"] == item["unitPrice"] == {"value": 110.0, "currency": "CAD"}


def test_uncoded_transaction_code_next_to_a_procedure_code(mappings: Mappings) -> None:
    # FT1-7 without a coding system follows FT1-25 as the practice's charge code
    text = _replace_line(
        _text("dft_p03_minimal"),
        "FT1|",
        "FT1|1|||20250311||CG|4471^Office visit level 3|||1|110.00"
        + "|" * 14
        + "99213^Office visit^CPT",
    )
    (item,) = _claim(_bundle(mappings, text))["item"]
    assert _codes(item["productOrService"]) == [(CPT, "99213"), (None, "4471")]


def test_transaction_code_alone_keeps_its_alternate_coding(mappings: Mappings) -> None:
    text = _replace_line(
        _text("dft_p03_minimal"),
        "FT1|",
        "FT1|1|||20250311||CG|4471^Office visit level 3^L^99213^Office visit^CPT|||1|110.00",
    )
    (item,) = _claim(_bundle(mappings, text))["item"]
    assert _codes(item["productOrService"]) == [(None, "4471"), (CPT, "99213")]


def test_self_pay_bills_the_patient(mappings: Mappings) -> None:
    """Issue 9: no IN1 is a self-pay visit: a Coverage whose payor is the Patient (FHIR R4
    Coverage.payor), and the Claim is still made with it."""
    text = "\n".join(
        line for line in _text("dft_p03_minimal").splitlines() if not line.startswith("IN1|")
    )
    bundle = _bundle(mappings, text)
    validate_bundle(bundle)
    (patient,) = _resources(bundle, "Patient")
    (coverage,) = _resources(bundle, "Coverage")
    patient_url = next(e["fullUrl"] for e in bundle["entry"] if e["resource"] is patient)
    assert coverage["payor"] == [{"reference": patient_url}]
    assert coverage["beneficiary"] == {"reference": patient_url}
    assert coverage["type"]["coding"][0]["code"] == "pay"
    claim = _claim(bundle)
    coverage_url = next(e["fullUrl"] for e in bundle["entry"] if e["resource"] is coverage)
    assert claim["insurance"] == [
        {"sequence": 1, "focal": True, "coverage": {"reference": coverage_url}}
    ]
    assert len(claim["item"]) == 1
    # the same patient's next self-pay DFT updates the same Coverage
    again = _bundle(mappings, text.replace("DFT0000000002", "DFT0000000003"))
    (coverage2,) = _resources(again, "Coverage")
    assert coverage2["id"] == coverage["id"]


def test_provider_falls_back_to_the_sending_facility(mappings: Mappings) -> None:
    """No FT1-20 and no PV1-7: the sending facility (MSH-4) is the provider, an Organization."""
    text = _replace_line(
        _text("dft_p03_minimal"),
        "PV1|",
        "PV1|1|O|||||||||||||||||V000000231^^^MAPLEFM&2.25.184592301472019384756&ISO^VN",
    )
    bundle = _bundle(mappings, text)
    validate_bundle(bundle)
    provider = _target(bundle, _claim(bundle)["provider"])
    assert provider["resourceType"] == "Organization"
    assert provider["name"] == "MAPLEFM"


@pytest.mark.parametrize(
    ("code", "system"),
    [
        ("25", CPT),
        ("59", CPT),
        ("1P", CPT),
        ("LT", HCPCS),
        ("XS", HCPCS),
        ("gp", HCPCS),
        ("", None),
        ("ABC", None),
        ("5", None),
    ],
)
def test_procedure_modifier_system(code: str, system: str | None) -> None:
    transform = get_transform("procedure_modifier_system")
    assert transform.inbound([code], TransformContext()) == system
    assert transform.outbound(system, TransformContext()) == []
