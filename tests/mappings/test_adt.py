"""ADT → FHIR: registration, visit, discharge, cancel, merge. Assertions on meaning, then golden
files (generated once, after these assertions were checked by hand)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest

from engine.errors import UnsupportedMessageError
from engine.hl7v2.codec import parse_message
from engine.mappings import Mappings, load_mappings
from engine.mappings.fhir_validate import validate_bundle
from engine.mappings.golden import differences
from tests.conftest import FIXTURES

ADT_FIXTURES = ["adt_a01", "adt_a03", "adt_a04", "adt_a11", "adt_a28", "adt_a40"]


@pytest.fixture(scope="module")
def mappings() -> Mappings:
    return load_mappings()


def convert(mappings: Mappings, name: str) -> dict[str, Any]:
    return mappings.to_fhir(parse_message((FIXTURES / "hl7" / f"{name}.hl7").read_bytes()))


def of_type(bundle: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]


def by_url(bundle: dict[str, Any], url: str) -> dict[str, Any]:
    return next(e["resource"] for e in bundle["entry"] if e["fullUrl"] == url)


@pytest.mark.parametrize("name", ADT_FIXTURES)
def test_valid_fhir_r4b_and_transaction_entries(mappings: Mappings, name: str) -> None:
    bundle = convert(mappings, name)
    validate_bundle(bundle)
    assert bundle["type"] == "transaction"
    urls = [e["fullUrl"] for e in bundle["entry"]]
    assert len(urls) == len(set(urls)) and all(u.startswith("urn:uuid:") for u in urls)
    for entry in bundle["entry"]:
        assert entry["request"]["method"] == "PUT"


@pytest.mark.parametrize("name", ADT_FIXTURES)
def test_golden(mappings: Mappings, name: str) -> None:
    expected = json.loads((FIXTURES / "fhir" / f"{name}.json").read_text())
    assert differences(expected, convert(mappings, name)) == []


def test_a01_patient_demographics_and_mrn(mappings: Mappings) -> None:
    bundle = convert(mappings, "adt_a01")
    entry = bundle["entry"][0]
    patient = entry["resource"]
    assert entry["request"]["url"] == "Patient?identifier=urn:engine:identifier:OAKCLINIC|MRN20001"
    mrn = patient["identifier"][0]
    assert (mrn["value"], mrn["type"]["coding"][0]["code"]) == ("MRN20001", "MR")
    ssn = next(i for i in patient["identifier"] if i["value"] == "444-55-6666")
    assert ssn["system"] == "http://hl7.org/fhir/sid/us-ssn"
    official, maiden = patient["name"]
    assert official == {
        "family": "Testpatient",
        "given": ["Alice", "Marie"],
        "prefix": ["Ms."],
        "use": "official",
    }
    assert maiden["use"] == "maiden"
    assert patient["birthDate"] == "1984-02-29" and patient["gender"] == "female"
    home, postal = patient["address"]
    assert home["line"] == ["742 Evergreen Ter", "Apt 3"] and home["use"] == "home"
    assert postal["type"] == "postal"
    email = next(t for t in patient["telecom"] if t["system"] == "email")
    assert email["value"] == "alice.testpatient@example.com"
    work = next(t for t in patient["telecom"] if t.get("use") == "work")
    assert work["value"] == "+1 217 5550199"
    assert patient["maritalStatus"]["coding"][0]["code"] == "M"
    assert patient["deceasedBoolean"] is False


def test_a01_encounter_practitioner_and_coverage(mappings: Mappings) -> None:
    bundle = convert(mappings, "adt_a01")
    patient_url = bundle["entry"][0]["fullUrl"]
    [enc] = of_type(bundle, "Encounter")
    assert enc["status"] == "in-progress" and enc["class"]["code"] == "IMP"
    assert enc["subject"]["reference"] == patient_url
    assert datetime.fromisoformat(enc["period"]["start"]) == datetime.fromisoformat(
        "2026-03-10T14:10:00+00:00"
    )
    attender = enc["participant"][0]
    assert attender["type"][0]["coding"][0]["code"] == "ATND"
    doc = by_url(bundle, attender["individual"]["reference"])
    assert doc["identifier"][0] == {
        "value": "1234567893",
        "system": "http://hl7.org/fhir/sid/us-npi",
        "type": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                    "code": "NPI",
                    "display": "National provider identifier",
                }
            ]
        },
    }
    [cov] = of_type(bundle, "Coverage")
    assert cov["subscriberId"] == "XQZ123456789" and cov["order"] == 1
    assert cov["beneficiary"]["reference"] == patient_url
    assert cov["subscriber"]["reference"] == patient_url  # IN1-17 SEL
    assert cov["relationship"]["coding"][0]["code"] == "self"
    classes = {c["type"]["coding"][0]["code"]: c["value"] for c in cov["class"]}
    assert classes == {"plan": "BCBS-PPO", "group": "GRP-5521"}
    payer = by_url(bundle, cov["payor"][0]["reference"])
    assert payer["identifier"][0]["value"] == "BCBS01" and payer["name"] == "Example Blue Cross"
    [nk1] = of_type(bundle, "RelatedPerson")
    assert nk1["relationship"][0]["coding"][0]["code"] == "SPS"


def test_a03_discharge_finishes_the_encounter(mappings: Mappings) -> None:
    [enc] = of_type(convert(mappings, "adt_a03"), "Encounter")
    assert enc["status"] == "finished"
    assert enc["period"]["end"].startswith("2026-03-12T15:55:00")
    assert enc["hospitalization"]["dischargeDisposition"]["coding"][0]["code"] == "01"


def test_a11_cancel_marks_the_encounter_in_error(mappings: Mappings) -> None:
    [enc] = of_type(convert(mappings, "adt_a11"), "Encounter")
    assert enc["status"] == "entered-in-error"


def test_a28_registration_has_no_encounter_and_a_dependent_coverage(mappings: Mappings) -> None:
    bundle = convert(mappings, "adt_a28")
    assert of_type(bundle, "Encounter") == []  # PV1-2 N: no visit
    [patient] = of_type(bundle, "Patient")
    assert patient["name"][0]["family"] == "O'Brien-Núñez"
    [cov] = of_type(bundle, "Coverage")
    subscriber = by_url(bundle, cov["subscriber"]["reference"])
    assert subscriber["resourceType"] == "RelatedPerson"
    assert subscriber["name"][0]["given"] == ["Maeve"] and subscriber["birthDate"] == "1986-01-12"
    assert cov["relationship"]["coding"][0]["code"] == "other"


def test_a40_merge_links_both_patients(mappings: Mappings) -> None:
    bundle = convert(mappings, "adt_a40")
    survivor, prior = of_type(bundle, "Patient")
    assert survivor["link"][0]["type"] == "replaces"
    assert survivor["link"][0]["other"]["identifier"]["value"] == "MRN39999"
    assert prior["active"] is False
    assert prior["link"][0] == {
        "type": "replaced-by",
        "other": {"reference": bundle["entry"][0]["fullUrl"]},
    }


def test_a40_with_two_merges_pairs_each_prior_with_its_own_survivor(mappings: Mappings) -> None:
    raw = (FIXTURES / "hl7" / "adt_a40.hl7").read_bytes().rstrip(b"\r") + (
        b"\rPID|1||MRN50001^^^OAKCLINIC^MR||Second^Sam||19700101|M\rMRG|MRN59999^^^OAKCLINIC^MR\r"
    )
    bundle = mappings.to_fhir(parse_message(raw))
    patients = {
        e["resource"]["identifier"][0]["value"]: (e["fullUrl"], e["resource"])
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Patient"
    }
    assert set(patients) == {"MRN30007", "MRN39999", "MRN50001", "MRN59999"}
    assert patients["MRN50001"][1]["link"][0]["other"]["identifier"]["value"] == "MRN59999"
    assert patients["MRN59999"][1]["link"][0]["other"]["reference"] == patients["MRN50001"][0]
    assert patients["MRN39999"][1]["link"][0]["other"]["reference"] == patients["MRN30007"][0]
    assert patients["MRN50001"][1]["name"][0]["family"] == "Second"  # not merged into one


def test_same_patient_same_full_url_across_messages(mappings: Mappings) -> None:
    a01 = convert(mappings, "adt_a01")["entry"][0]["fullUrl"]
    a03 = convert(mappings, "adt_a03")["entry"][0]["fullUrl"]
    assert a01 == a03


def test_timestamp_without_offset_gets_the_facility_zone(mappings: Mappings) -> None:
    raw = (FIXTURES / "hl7" / "adt_a03.hl7").read_bytes().replace(b"-0500|", b"|")
    [enc] = of_type(mappings.to_fhir(parse_message(raw)), "Encounter")
    # site.yaml's default zone, America/New_York, is on daylight time (-04:00) from 2026-03-08
    assert enc["period"]["start"] == "2026-03-10T09:10:00-04:00"


def test_unsupported_trigger_is_named(mappings: Mappings) -> None:
    raw = b"MSH|^~\\&|A|B|C|D|20260101||ADT^A02|X|P|2.5.1\rPID|1\r"
    with pytest.raises(UnsupportedMessageError) as info:
        mappings.to_fhir(parse_message(raw))
    assert "ADT^A02" in str(info.value) and info.value.code == "201"
