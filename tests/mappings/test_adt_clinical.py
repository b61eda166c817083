"""ADT OBX, AL1 and DG1 → Observation, AllergyIntolerance and Condition (HL7 v2-to-FHIR IG
OBX[Observation], AL1[AllergyIntolerance], DG1[Condition]; messages/ADT.yaml). The fixture
``adt_a01_clinical.hl7`` is synthetic: height and weight in UCUM units, an ST, a CWE and an SN
observation, two heart rates with the same code, a drug allergy with severity and reactions, a food
allergy without a reaction, and two diagnoses."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from engine.hl7v2.codec import parse_message
from engine.hl7v2.validate import validate
from engine.mappings import Mappings, load_mappings
from engine.mappings.fhir_validate import validate_bundle
from tests.conftest import FIXTURES

UCUM = "http://unitsofmeasure.org"
MSH = "MSH|^~\\&|FRONTDESK|OAKCLINIC|ENGINE|HUB|20260311081500-0500||ADT^A01^ADT_A01|{id}|P|2.5.1"
PID = "PID|1||MRN20078^^^OAKCLINIC^MR||Sampleton^Robin||19751103|F"
PV1 = "PV1|1|I|WARD2^205^A^OAKCLINIC|||||||MED||||||||||V20078^^^OAKCLINIC^VN"


@pytest.fixture(scope="module")
def mappings() -> Mappings:
    return load_mappings()


@pytest.fixture(scope="module")
def bundle(mappings: Mappings) -> dict[str, Any]:
    raw = (FIXTURES / "hl7" / "adt_a01_clinical.hl7").read_bytes()
    return mappings.to_fhir(parse_message(raw))


def convert(mappings: Mappings, *segments: str, warnings: list[str] | None = None) -> Any:
    text = "\r".join([MSH.format(id="CLIN-T-1"), "EVN|A01", PID, *segments]) + "\r"
    return mappings.to_fhir(parse_message(text.encode()), warnings)


def of_type(bundle: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]


def url_of(bundle: dict[str, Any], rtype: str) -> str:
    urls = [str(e["fullUrl"]) for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]
    assert len(urls) == 1, urls
    return urls[0]


def by_code(observations: list[dict[str, Any]], code: str) -> list[dict[str, Any]]:
    return [o for o in observations if o["code"].get("coding", [{}])[0].get("code") == code]


def test_valid_r4_with_one_resource_per_segment(bundle: dict[str, Any]) -> None:
    validate_bundle(bundle)
    urls = [e["fullUrl"] for e in bundle["entry"]]
    assert len(urls) == len(set(urls))
    assert len(of_type(bundle, "Observation")) == 7
    assert len(of_type(bundle, "AllergyIntolerance")) == 2
    assert len(of_type(bundle, "Condition")) == 2
    for entry in bundle["entry"]:
        if entry["resource"]["resourceType"] in ("Observation", "AllergyIntolerance", "Condition"):
            rid = entry["resource"]["id"]
            assert entry["request"] == {
                "method": "PUT",
                "url": f"{entry['resource']['resourceType']}/{rid}",
            }


def test_observations_refer_to_patient_and_encounter(bundle: dict[str, Any]) -> None:
    patient, encounter = url_of(bundle, "Patient"), url_of(bundle, "Encounter")
    for obs in of_type(bundle, "Observation"):
        assert obs["subject"] == {"reference": patient}
        assert obs["encounter"] == {"reference": encounter}


def test_height_and_weight_in_ucum(bundle: dict[str, Any]) -> None:
    observations = of_type(bundle, "Observation")
    [height] = by_code(observations, "8302-2")
    [weight] = by_code(observations, "29463-7")
    assert height["code"]["coding"][0]["system"] == "http://loinc.org"
    assert height["status"] == "final"
    assert height["valueQuantity"] == {
        "value": 182,
        "unit": "centimeter",
        "code": "cm",
        "system": UCUM,
    }
    assert weight["valueQuantity"] == {
        "value": 81.5,
        "unit": "kilogram",
        "code": "kg",
        "system": UCUM,
    }
    assert datetime.fromisoformat(height["effectiveDateTime"]) == datetime.fromisoformat(
        "2026-03-11T08:10:00-05:00"
    )
    performer = height["performer"][0]["reference"]
    doc = next(e["resource"] for e in bundle["entry"] if e["fullUrl"] == performer)
    assert doc["resourceType"] == "Practitioner"
    assert doc["identifier"][0]["value"] == "1234567893"


def test_string_coded_and_structured_numeric_values(bundle: dict[str, Any]) -> None:
    observations = of_type(bundle, "Observation")
    [complaint] = by_code(observations, "8661-1")
    assert complaint["valueString"] == "Shortness of breath on exertion"
    assert "effectiveDateTime" not in complaint
    [smoking] = by_code(observations, "72166-2")
    assert smoking["valueCodeableConcept"] == {
        "coding": [{"system": "http://snomed.info/sct", "code": "8517006", "display": "Ex-smoker"}]
    }
    assert smoking["effectiveDateTime"] == "2026-03-11"
    [temperature] = by_code(observations, "8310-5")  # SN "^37.2": no comparator
    assert temperature["valueQuantity"] == {
        "value": 37.2,
        "unit": "degree Celsius",
        "code": "Cel",
        "system": UCUM,
    }
    for obs in observations:
        assert sum(k.startswith("value") for k in obs) == 1


def test_two_observations_with_one_code_stay_apart(bundle: dict[str, Any]) -> None:
    entries = [
        e
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Observation"
        and e["resource"]["code"]["coding"][0]["code"] == "8867-4"
    ]
    assert len(entries) == 2 and entries[0]["fullUrl"] != entries[1]["fullUrl"]
    first, second = (e["resource"] for e in entries)
    assert (first["status"], first["valueQuantity"]["value"]) == ("preliminary", 112)
    assert (second["status"], second["valueQuantity"]["value"]) == ("final", 98)
    assert first["interpretation"] == [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                    "code": "H",
                    "display": "High",
                }
            ]
        }
    ]
    assert second["interpretation"][0]["coding"][0]["code"] == "N"
    assert first["referenceRange"] == [{"text": "60-100"}]


def test_the_same_message_gives_the_same_observation_urls(
    mappings: Mappings, bundle: dict[str, Any]
) -> None:
    again = mappings.to_fhir(
        parse_message((FIXTURES / "hl7" / "adt_a01_clinical.hl7").read_bytes())
    )
    assert [e["fullUrl"] for e in again["entry"]] == [e["fullUrl"] for e in bundle["entry"]]


def test_drug_allergy_with_severity_and_reactions(bundle: dict[str, Any]) -> None:
    drug, food = of_type(bundle, "AllergyIntolerance")
    assert drug["patient"] == {"reference": url_of(bundle, "Patient")}
    assert drug["clinicalStatus"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
        "code": "active",
        "display": "Active",
    }
    assert drug["category"] == ["medication"] and drug["type"] == "allergy"
    assert drug["code"]["coding"][0] == {
        "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
        "code": "7980",
        "display": "Penicillin G",
    }
    assert drug["reaction"] == [
        {"manifestation": [{"text": "Hives"}, {"text": "Wheezing"}], "severity": "severe"}
    ]
    assert drug["onsetDateTime"] == "2019-04-05"
    assert "encounter" not in drug


def test_food_allergy_without_reaction_has_no_severity(bundle: dict[str, Any]) -> None:
    _drug, food = of_type(bundle, "AllergyIntolerance")
    assert food["category"] == ["food"]
    assert food["code"]["coding"][0]["code"] == "256349002"
    # AL1-4 MO without an AL1-5: reaction.manifestation is 1..*, so no reaction at all
    assert "reaction" not in food


def test_diagnoses_are_encounter_conditions(bundle: dict[str, Any]) -> None:
    heart, diabetes = of_type(bundle, "Condition")
    for cond in (heart, diabetes):
        assert cond["subject"] == {"reference": url_of(bundle, "Patient")}
        assert cond["encounter"] == {"reference": url_of(bundle, "Encounter")}
        assert cond["category"][0]["coding"][0]["code"] == "encounter-diagnosis"
        assert "clinicalStatus" not in cond and "verificationStatus" not in cond
    assert heart["code"] == {
        "coding": [
            {
                "system": "http://hl7.org/fhir/sid/icd-10-cm",
                "code": "I50.9",
                "display": "Heart failure, unspecified",
            }
        ],
        "text": "Heart failure",
    }
    assert datetime.fromisoformat(heart["onsetDateTime"]) == datetime.fromisoformat(
        "2026-03-11T08:05:00-05:00"
    )
    assert datetime.fromisoformat(heart["recordedDate"]) == datetime.fromisoformat(
        "2026-03-11T09:00:00-05:00"
    )
    asserter = next(
        e["resource"] for e in bundle["entry"] if e["fullUrl"] == heart["asserter"]["reference"]
    )
    assert asserter["resourceType"] == "Practitioner"
    assert diabetes["code"]["coding"][0]["code"] == "E11.9"
    assert diabetes["onsetDateTime"] == "2020-06-15"


def test_without_pv1_no_encounter_reference(mappings: Mappings) -> None:
    bundle = convert(
        mappings,
        "OBX|1|NM|29463-7^Body weight^LN||64|kg^^UCUM|||||F",
        "AL1|1|FA^Food allergy^HL70127|227493005^Cashew nut^SCT",
        "DG1|1||J45.909^Unspecified asthma, uncomplicated^I10",
    )
    validate_bundle(bundle)
    assert not of_type(bundle, "Encounter")
    [obs] = of_type(bundle, "Observation")
    [cond] = of_type(bundle, "Condition")
    assert obs["subject"] == cond["subject"] == {"reference": url_of(bundle, "Patient")}
    assert "encounter" not in obs and "encounter" not in cond
    assert obs["valueQuantity"] == {"value": 64, "unit": "kg", "code": "kg", "system": UCUM}


def test_registration_without_visit_has_no_encounter_reference(mappings: Mappings) -> None:
    bundle = convert(mappings, "PV1|1|N", "OBX|1|ST|8661-1^Chief complaint^LN||Cough||||||F")
    validate_bundle(bundle)
    [obs] = of_type(bundle, "Observation")
    assert "encounter" not in obs and not of_type(bundle, "Encounter")


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("F", "final"),
        ("C", "corrected"),
        ("W", "entered-in-error"),
        ("X", "cancelled"),
        ("", "unknown"),
        ("R", "unknown"),
    ],
)
def test_observation_status(mappings: Mappings, status: str, expected: str) -> None:
    bundle = convert(mappings, PV1, f"OBX|1|NM|8867-4^Heart rate^LN||70|/min^^UCUM|||||{status}")
    validate_bundle(bundle)
    [obs] = of_type(bundle, "Observation")
    assert obs["status"] == expected


def test_units_without_ucum_keep_only_their_text(mappings: Mappings) -> None:
    # ISO+ units have no FHIR system: a code without a system would break R4 qty-3
    bundle = convert(mappings, PV1, "OBX|1|NM|8867-4^Heart rate^LN||72|beats/min^^ISO+|||||F")
    validate_bundle(bundle)
    [obs] = of_type(bundle, "Observation")
    assert obs["valueQuantity"] == {"value": 72, "unit": "beats/min"}


@pytest.mark.parametrize(
    ("value", "quantity"),
    [
        ("<^5", {"comparator": "<", "value": 5}),
        (">=^1.5", {"comparator": ">=", "value": 1.5}),
        ("=^440", {"value": 440}),
        # a ratio and a range are not quantities (OBX-5 is reported as not mapped), and "not
        # equal" has no comparator: the number alone would read as equal
        ("^1^:^128", None),
        ("^10^-^20", None),
        ("<>^5", None),
    ],
)
def test_structured_numeric(
    mappings: Mappings, value: str, quantity: dict[str, Any] | None
) -> None:
    bundle = convert(mappings, PV1, f"OBX|1|SN|5195-3^HBsAg^LN||{value}|mg/dL^^UCUM|||||F")
    validate_bundle(bundle)
    [obs] = of_type(bundle, "Observation")
    unit = {"unit": "mg/dL", "code": "mg/dL", "system": UCUM}
    if quantity is None:
        assert not any(k.startswith("value") for k in obs)
    else:
        assert obs["valueQuantity"] == {**quantity, **unit}


def test_observation_without_code_keeps_its_value(mappings: Mappings) -> None:
    bundle = convert(mappings, PV1, "OBX|1|TX|||ECHOCARDIOGRAPHIC REPORT||||||F")
    validate_bundle(bundle)
    [obs] = of_type(bundle, "Observation")
    assert obs["valueString"] == "ECHOCARDIOGRAPHIC REPORT"
    assert obs["code"] == {
        "extension": [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                "valueCode": "unknown",
            }
        ]
    }


def test_deleted_diagnosis_is_entered_in_error(mappings: Mappings) -> None:
    dg1 = "|".join(["DG1", "1", "", "I10^Essential hypertension^I10", *[""] * 17, "D"])
    bundle = convert(mappings, PV1, dg1)
    validate_bundle(bundle)
    [cond] = of_type(bundle, "Condition")
    assert cond["verificationStatus"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
        "code": "entered-in-error",
        "display": "Entered in Error",
    }
    assert "clinicalStatus" not in cond  # R4 con-5


def test_allergen_types_the_ig_leaves_unmapped(mappings: Mappings) -> None:
    bundle = convert(
        mappings,
        "AL1|1|MC^Misc contraindication^HL70127|^Contrast dye",
        "AL1|2|AA^Animal allergy^HL70127|^Cat dander|SV^Severe^HL70128|Sneezing",
    )
    validate_bundle(bundle)
    contra, animal = of_type(bundle, "AllergyIntolerance")
    assert "category" not in contra and "type" not in contra
    assert contra["code"] == {"text": "Contrast dye"}
    assert animal["category"] == ["biologic"] and animal["type"] == "allergy"
    assert animal["reaction"] == [{"manifestation": [{"text": "Sneezing"}], "severity": "severe"}]


def test_what_the_maps_leave_is_reported(mappings: Mappings) -> None:
    warnings: list[str] = []
    convert(
        mappings,
        PV1,
        "OBX|1|SN|5195-3^HBsAg^LN||^1^:^128||||||F",
        "AL1|1|FA^Food allergy^HL70127|256349002^Peanut^SCT|MO^Moderate^HL70128",
        warnings=warnings,
    )
    assert any(w.startswith("OBX") and "OBX-5" in w for w in warnings), warnings
    assert any(w.startswith("AL1") and "AL1-4" in w for w in warnings), warnings


def test_outbound_adt_writes_no_clinical_segments(
    mappings: Mappings, bundle: dict[str, Any]
) -> None:
    """The maps are inbound only: an ADT written from this Bundle is the registration it was."""
    msg = mappings.to_hl7(bundle, control_id="OUT-CLIN-1", timestamp="20260311090000-0500")
    names = [s.name for s in msg.segments]
    assert "PID" in names and "PV1" in names
    assert not {"OBX", "AL1", "DG1"} & set(names)
    assert [str(i) for i in validate(msg.to_er7()) if i.severity == "E"] == []
