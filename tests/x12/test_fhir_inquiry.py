"""270 → FHIR CoverageEligibilityRequests, the round trip back, generated traces, the spec's
examples, and the one X12 → FHIR entry point."""

from __future__ import annotations

import copy
import json
import re
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest

from engine.errors import ConversionError
from engine.mappings.fhir_validate import validate_bundle
from engine.x12.errors import X12Error
from engine.x12.fhir import (
    X12_SERVICE_TYPE_SYSTEM,
    interchange_to_fhir,
    request_to_inquiry,
    trace_number_for,
    x270_to_fhir,
    x271_to_fhir,
)
from engine.x12.fhir_terms import TRACE_TYPE_TEXT
from engine.x12.x270 import EligibilityInquiry, build_270, read_270

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures" / "x12"
CONFORMANCE = ROOT.parent / "shared" / "conformance" / "x12"
NOW = datetime(2025, 3, 14, 10, 0)
NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def resources(bundle: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]


def target(bundle: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """The entry a reference points at, by full URL (every reference of x270_to_fhir is one)."""
    found: list[dict[str, Any]] = [
        e["resource"] for e in bundle["entry"] if e["fullUrl"] == ref["reference"]
    ]
    assert len(found) == 1, ref
    return found[0]


# -- 270 → FHIR --------------------------------------------------------------------------------


def test_270_with_a_subscriber_and_a_dependent_becomes_valid_linked_fhir() -> None:
    warnings: list[str] = []
    bundle = x270_to_fhir(fixture("270_subscriber_and_dependent.x12"), warnings=warnings)
    validate_bundle(bundle)
    assert bundle["type"] == "collection"
    assert all(e["fullUrl"].startswith("urn:uuid:") for e in bundle["entry"])
    assert warnings == [
        "segment 12 (REF): REF*6P in loop 2100C is not carried into FHIR; passed over"
    ]
    sub_req, dep_req = resources(bundle, "CoverageEligibilityRequest")

    assert sub_req["identifier"][0] == {
        "type": {"text": TRACE_TYPE_TEXT},
        "value": "TRC-20250314-0001",
        "assigner": {"identifier": {"value": "1999999999"}, "display": "trace originator (TRN03)"},
    }
    assert sub_req["created"] == "2025-03-14"
    assert sub_req["servicedPeriod"] == {"start": "2025-03-14", "end": "2025-03-31"}
    assert [i["category"]["coding"][-1] for i in sub_req["item"]] == [
        {"system": X12_SERVICE_TYPE_SYSTEM, "code": c, "display": d}
        for c, d in (
            ("30", "Health Benefit Plan Coverage"),
            ("98", "Professional (Physician) Visit - Office"),
            ("35", "Dental Care"),
        )
    ]
    patient = target(bundle, sub_req["patient"])
    assert patient["name"] == [
        {"family": "OCONNOR-NUNEZ", "given": ["ZOE", "MARIA"], "suffix": ["JR"]}
    ]
    assert (patient["birthDate"], patient["gender"]) == ("1980-02-29", "female")
    assert patient["address"] == [
        {
            "line": ["12 ELM STREET", "APT 4"],
            "city": "SPRINGFIELD",
            "state": "IL",
            "postalCode": "627010000",
        }
    ]
    payer = target(bundle, sub_req["insurer"])
    assert payer["name"] == "CEDAR VALLEY HEALTH PLAN"
    assert payer["identifier"][0]["value"] == "CVHP1"
    assert payer["identifier"][0]["type"]["coding"][0]["code"] == "NIIP"
    provider = target(bundle, sub_req["provider"])
    assert provider["resourceType"] == "Organization"
    assert provider["identifier"] == [{"value": "1234567893", "system": NPI_SYSTEM}]
    coverage = target(bundle, sub_req["insurance"][0]["coverage"])
    assert coverage["subscriberId"] == "W123456789"
    assert coverage["beneficiary"] == sub_req["patient"]
    assert coverage["payor"] == [sub_req["insurer"]]
    assert coverage["relationship"]["coding"][0]["code"] == "self"

    assert dep_req["identifier"][0]["value"] == "TRC-DEP-0002"
    assert dep_req["servicedDate"] == "2025-03-14"
    dependent = target(bundle, dep_req["patient"])
    assert (dependent["name"][0]["given"], dependent["birthDate"]) == (["ASTRID"], "2012-06-07")
    dep_cov = target(bundle, dep_req["insurance"][0]["coverage"])
    assert dep_cov["relationship"]["coding"][0]["code"] == "child"  # INS02 19
    subscriber = target(bundle, dep_cov["subscriber"])
    assert subscriber["resourceType"] == "RelatedPerson"
    assert subscriber["patient"] == dep_req["patient"]
    assert (subscriber["name"][0]["family"], subscriber["birthDate"]) == ("LINDQVIST", "1975-11-03")
    practitioner = target(bundle, dep_req["provider"])
    assert practitioner["resourceType"] == "Practitioner"
    assert practitioner["identifier"][0]["value"] == "1987654328"
    # the payer of both transactions is one resource per transaction, never a dangling one
    urls = {e["fullUrl"] for e in bundle["entry"]}
    assert len(urls) == len(bundle["entry"])
    assert x270_to_fhir(fixture("270_subscriber_and_dependent.x12")) == bundle  # deterministic


def round_trip(text: str) -> list[tuple[EligibilityInquiry, EligibilityInquiry]]:
    bundle = x270_to_fhir(text)
    validate_bundle(bundle)
    originals = read_270(text, strict=False)
    pairs = []
    requests = [
        e["fullUrl"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "CoverageEligibilityRequest"
    ]
    assert len(requests) == len(originals)
    for url, original in zip(requests, originals, strict=True):
        inquiry = request_to_inquiry(bundle, request_id=url)  # TRN03 from the identifier
        rebuilt = build_270(
            inquiry, sender_id="GREENFIELDFP", receiver_id="CEDARVALLEY", control_number=9, now=NOW
        )
        (again,) = read_270(rebuilt)
        pairs.append((original, again))
    return pairs


def test_270_to_fhir_to_270_keeps_what_the_inquiry_asks() -> None:
    for original, again in round_trip(fixture("270_subscriber_and_dependent.x12")):
        assert again == original


@pytest.mark.skipif(not CONFORMANCE.is_dir(), reason="shared conformance samples not present")
def test_public_270_samples_round_trip() -> None:
    samples = sorted(
        p
        for p in CONFORMANCE.rglob("*")
        if p.is_file()
        and (p.suffix == ".270" or p.name.startswith("270_"))
        and "ST*270" in p.read_text(errors="replace")
    )
    assert len(samples) >= 6
    for path in samples:
        for original, again in round_trip(path.read_text()):
            assert again.subscriber.member_id == original.subscriber.member_id, path.name
            assert (again.payer.payer_id, again.provider.npi) == (
                original.payer.payer_id,
                original.provider.npi,
            ), path.name
            assert again.provider.id_qualifier == original.provider.id_qualifier  # XX or SV
            assert (again.trace_number, again.originator_id) == (
                original.trace_number,
                original.originator_id,
            )
            assert again.service_types == (original.service_types or ("30",))
            assert (again.service_date, again.dependent is None) == (
                original.service_date,
                original.dependent is None,
            )
            if original.dependent is not None and again.dependent is not None:
                assert again.dependent.last_name == original.dependent.last_name


def test_a_subscriber_with_dependents_does_not_lose_its_eq_silently() -> None:
    text = fixture("270_subscriber_and_dependent.x12").replace(
        "DMG*D8*19751103*M~", "DMG*D8*19751103*M~EQ*30~"
    )
    text = text.replace("SE*17*0002", "SE*18*0002")
    warnings: list[str] = []
    x270_to_fhir(text, warnings=warnings)
    assert any(
        w.startswith("segment 25 (HL): the EQ/DTP*291 of a subscriber with dependents")
        for w in warnings
    )


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("DMG*D8*19800229*F", "DMG*D8*19800230*F", "segment 15 (DMG): DMG02 '19800230' is not"),
        ("DTP*291*RD8*20250314-20250331", "DTP*291*RD8*20250314", "segment 16 (DTP): DTP03"),
        ("ST*270*0001", "ST*276*0001", "segment 3 (ST): ST01 '276' is not 270"),
    ],
)
def test_unreadable_270_content_is_refused_naming_segment_and_element(
    old: str, new: str, message: str
) -> None:
    with pytest.raises(X12Error, match=re.escape(message)):
        x270_to_fhir(fixture("270_subscriber_and_dependent.x12").replace(old, new))


# -- a request without id or identifier: a generated trace number ------------------------------


def posted_bundle() -> dict[str, Any]:
    """A transaction Bundle as a client POSTs it: urn:uuid fullUrls, no ids, no identifiers."""
    payer = "urn:uuid:0c5e1b0a-1f0e-4c1e-9a52-0d7b5a3e1001"
    prov = "urn:uuid:0c5e1b0a-1f0e-4c1e-9a52-0d7b5a3e1002"
    pat = "urn:uuid:0c5e1b0a-1f0e-4c1e-9a52-0d7b5a3e1003"
    cov = "urn:uuid:0c5e1b0a-1f0e-4c1e-9a52-0d7b5a3e1004"
    req = "urn:uuid:0c5e1b0a-1f0e-4c1e-9a52-0d7b5a3e1005"

    def entry(url: str, resource: dict[str, Any]) -> dict[str, Any]:
        kind = resource["resourceType"]
        return {"fullUrl": url, "resource": resource, "request": {"method": "POST", "url": kind}}

    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            entry(
                payer,
                {
                    "resourceType": "Organization",
                    "name": "Cedar Valley Health Plan",
                    "identifier": [{"value": "CVHP1"}],
                },
            ),
            entry(
                prov,
                {
                    "resourceType": "Organization",
                    "name": "Greenfield Family Practice",
                    "identifier": [{"system": NPI_SYSTEM, "value": "1234567893"}],
                },
            ),
            entry(
                pat,
                {
                    "resourceType": "Patient",
                    "name": [{"family": "Quillfeather", "given": ["Margo"]}],
                    "birthDate": "1969-04-12",
                    "gender": "female",
                },
            ),
            entry(
                cov,
                {
                    "resourceType": "Coverage",
                    "status": "active",
                    "subscriberId": "Q40100001",
                    "beneficiary": {"reference": pat},
                    "payor": [{"reference": payer}],
                },
            ),
            entry(
                req,
                {
                    "resourceType": "CoverageEligibilityRequest",
                    "status": "active",
                    "purpose": ["benefits"],
                    "patient": {"reference": pat},
                    "created": "2025-03-14",
                    "provider": {"reference": prov},
                    "insurer": {"reference": payer},
                    "insurance": [{"focal": True, "coverage": {"reference": cov}}],
                },
            ),
        ],
    }


def test_a_posted_request_gets_a_deterministic_trace_that_the_271_carries_back() -> None:
    bundle = posted_bundle()
    req_entry = bundle["entry"][-1]
    warnings: list[str] = []
    inquiry = request_to_inquiry(bundle, originator_id="1999999999", warnings=warnings)
    trace = inquiry.trace_number
    assert re.fullmatch(r"FHIR[0-9A-F]{26}", trace)
    assert trace == trace_number_for(req_entry["resource"], req_entry["fullUrl"])
    assert warnings == [
        f"CoverageEligibilityRequest has no identifier or id: trace number (TRN02) {trace} "
        "derived from its fullUrl and content"
    ]
    assert request_to_inquiry(copy.deepcopy(bundle), originator_id="1999999999").trace_number == (
        trace
    )  # the same input, the same number
    other = copy.deepcopy(bundle)
    other["entry"][-1]["fullUrl"] = "urn:uuid:0c5e1b0a-1f0e-4c1e-9a52-0d7b5a3e1099"
    assert request_to_inquiry(other, originator_id="1999999999").trace_number != trace
    later = copy.deepcopy(bundle)
    later["entry"][-1]["resource"]["created"] = "2025-03-15"
    assert request_to_inquiry(later, originator_id="1999999999").trace_number != trace

    x270 = build_270(
        inquiry, sender_id="GREENFIELDFP", receiver_id="CVHP1", control_number=3, now=NOW
    )
    assert f"TRN*1*{trace}*1999999999~" in x270
    # the payer's 271 echoes the trace (TRN01 2)
    x271 = fixture("271_subscriber_benefits.x12").replace(
        "TRN*2*TRC-20250314-0001*", f"TRN*2*{trace}*"
    )
    by_identifier = x271_to_fhir(x271, trace=trace)
    (response,) = resources(by_identifier, "CoverageEligibilityResponse")
    assert response["request"]["identifier"] == {
        "type": {"text": TRACE_TYPE_TEXT},
        "value": trace,
    }
    by_reference = x271_to_fhir(x271, trace=trace, request=req_entry["fullUrl"])
    (response,) = resources(by_reference, "CoverageEligibilityResponse")
    assert response["request"] == {"reference": req_entry["fullUrl"]}


# -- the FHIR R4 spec's examples ----------------------------------------------------------------

#: coverageeligibilityrequest-example.json (R4), without its narrative and meta
SPEC_EXAMPLE: dict[str, Any] = {
    "resourceType": "CoverageEligibilityRequest",
    "id": "52345",
    "identifier": [
        {"system": "http://happyvalley.com/coverageelegibilityrequest", "value": "52345"}
    ],
    "status": "active",
    "priority": {"coding": [{"code": "normal"}]},
    "purpose": ["validation"],
    "patient": {"reference": "Patient/pat1"},
    "created": "2014-08-16",
    "provider": {"reference": "Organization/1"},
    "insurer": {"reference": "Organization/2"},
    "insurance": [{"focal": True, "coverage": {"reference": "Coverage/9876B1"}}],
}
#: coverageeligibilityrequest-example-2.json (R4), without its narrative and meta
SPEC_EXAMPLE_2: dict[str, Any] = {
    **SPEC_EXAMPLE,
    "id": "52346",
    "identifier": [
        {"system": "http://happyvalley.com/coverageelegibilityrequest", "value": "52346"}
    ],
    "purpose": ["validation", "benefits"],
    "servicedDate": "2014-09-17",
    "enterer": {"identifier": {"system": "http://happyvalleyclinic.com/staff", "value": "14"}},
    "facility": {
        "identifier": {"system": "http://statecliniclicensor.com/clinicid", "value": "G35B9"}
    },
    "insurance": [{"coverage": {"reference": "Coverage/9876B1"}, "businessArrangement": "NB8742"}],
    "item": [
        {
            "category": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/ex-benefitcategory",
                        "code": "69",
                        "display": "Maternity",
                    }
                ]
            }
        }
    ],
}


SPEC_FILES = ROOT / "tests" / "corpus" / "fhir" / "fhir-r4-spec-examples"


@pytest.mark.parametrize(
    ("name", "example"),
    [
        ("coverageeligibilityrequest-example.json", SPEC_EXAMPLE),
        ("coverageeligibilityrequest-example-2.json", SPEC_EXAMPLE_2),
    ],
)
def test_the_spec_examples_here_are_the_published_ones(name: str, example: dict[str, Any]) -> None:
    path = SPEC_FILES / name
    if not path.is_file():
        pytest.skip(f"{name} not in tests/corpus/fhir")
    published = json.loads(path.read_text())
    published.pop("text", None)  # narrative and meta aside
    published.pop("meta", None)
    assert published == example


def referenced() -> list[dict[str, Any]]:
    """Synthetic Patient/pat1, Coverage/9876B1, Organization/1 and /2 with what a 270 needs
    (the spec's own organization 1 has no NPI: a US 270 names its provider by one)."""
    return [
        {
            "resourceType": "Patient",
            "id": "pat1",
            "name": [{"use": "official", "family": "Donald", "given": ["Duck"]}],
            "birthDate": "1974-12-25",
            "gender": "male",
        },
        {
            "resourceType": "Coverage",
            "id": "9876B1",
            "status": "active",
            "subscriberId": "AB9876B1",
            "beneficiary": {"reference": "Patient/pat1"},
            "relationship": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/subscriber-relationship",
                        "code": "self",
                    }
                ]
            },
            "payor": [{"reference": "Organization/2"}],
        },
        {
            "resourceType": "Organization",
            "id": "1",
            "name": "Gastroenterology",
            "identifier": [{"system": NPI_SYSTEM, "value": "1234567893"}],
        },
        {
            "resourceType": "Organization",
            "id": "2",
            "name": "XYZ Insurance",
            "identifier": [{"system": "urn:oid:2.16.840.1.113883.3.19.2.3", "value": "666666"}],
        },
    ]


@pytest.mark.parametrize("example", [SPEC_EXAMPLE, SPEC_EXAMPLE_2], ids=["example", "example-2"])
def test_spec_examples_with_their_references_in_one_bundle_convert(example: dict[str, Any]) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": f"http://example.org/fhir/{r['resourceType']}/{r['id']}", "resource": r}
            for r in [copy.deepcopy(example), *referenced()]
        ],
    }
    validate_bundle(bundle)
    inquiry = request_to_inquiry(bundle, originator_id="1999999999")
    assert inquiry.trace_number == example["id"]
    assert (inquiry.payer.name, inquiry.payer.payer_id) == ("XYZ Insurance", "666666")
    assert (inquiry.provider.npi, inquiry.subscriber.member_id) == ("1234567893", "AB9876B1")
    assert inquiry.subscriber.birth_date == date(1974, 12, 25)
    assert inquiry.service_types == (("69",) if "item" in example else ("30",))
    assert inquiry.service_date == (date(2014, 9, 17) if "servicedDate" in example else None)
    text = build_270(inquiry, sender_id="S", receiver_id="666666", control_number=1, now=NOW)
    (again,) = read_270(text)
    assert (again.subscriber.last_name, again.trace_number) == ("DONALD", example["id"])


def test_a_spec_example_alone_is_refused_naming_every_missing_element() -> None:
    with pytest.raises(ConversionError) as info:
        request_to_inquiry(SPEC_EXAMPLE, originator_id="1999999999")
    message = str(info.value)
    assert message == (
        "CoverageEligibilityRequest.insurer: 'Organization/2' is not in the input; the 270 needs "
        "the payer ID (loop 2100A NM109) as the reference's identifier, the payer name (loop "
        "2100A NM103) as the reference's display; "
        "CoverageEligibilityRequest.patient: 'Patient/pat1' is not in the input, and there is no "
        "member ID (Coverage.subscriberId); the 270 needs one or the other (loop 2100C NM109, or "
        "NM103/NM104 and DMG02); "
        "CoverageEligibilityRequest.provider: 'Organization/1' is not in the input; the 270 needs "
        "the provider's ID (loop 2100B NM109), an NPI (identifier system "
        "http://hl7.org/fhir/sid/us-npi) or an identifier typed PRN or TAX, in the reference, "
        "the provider's name "
        "(loop 2100B NM103) as the reference's display"
    )


def test_absent_references_become_what_they_carry() -> None:
    example = copy.deepcopy(SPEC_EXAMPLE_2)
    example["insurer"] = {
        "reference": "Organization/2",
        "identifier": {"value": "666666"},
        "display": "XYZ Insurance",
    }
    example["provider"] = {
        "reference": "Organization/1",
        "identifier": {"system": NPI_SYSTEM, "value": "1234567893"},
        "display": "Happy Valley Clinic",
    }
    example["insurance"][0]["coverage"] = {
        "reference": "Coverage/9876B1",
        "identifier": {
            "type": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MB"}
                ]
            },
            "value": "AB9876B1",
        },
    }
    warnings: list[str] = []
    inquiry = request_to_inquiry(example, originator_id="1999999999", warnings=warnings)
    assert (inquiry.payer.name, inquiry.payer.payer_id) == ("XYZ Insurance", "666666")
    assert (inquiry.provider.organization, inquiry.provider.npi) == (
        "Happy Valley Clinic",
        "1234567893",
    )
    assert inquiry.subscriber.member_id == "AB9876B1"
    assert inquiry.subscriber.last_name == ""  # asked by member ID alone
    assert warnings == [
        "CoverageEligibilityRequest.insurer: 'Organization/2' is not in the input; the 270 names "
        "the payer by the reference's identifier and display",
        "CoverageEligibilityRequest.insurance.coverage: 'Coverage/9876B1' is not in the input; "
        "the member ID (loop 2100C NM109) is the reference's identifier",
        "CoverageEligibilityRequest.patient: 'Patient/pat1' is not in the input; the 270 asks by "
        "the member ID alone",
        "CoverageEligibilityRequest.provider: 'Organization/1' is not in the input; the 270 names "
        "the provider by the reference's identifier and display",
    ]
    text = build_270(inquiry, sender_id="S", receiver_id="666666", control_number=1, now=NOW)
    (again,) = read_270(text)
    assert (again.subscriber.member_id, again.service_types) == ("AB9876B1", ("69",))


# -- the one entry point -----------------------------------------------------------------------


def test_interchange_to_fhir_tells_270_from_271() -> None:
    bundle, warnings = interchange_to_fhir(fixture("270_subscriber_and_dependent.x12").encode())
    assert len(resources(bundle, "CoverageEligibilityRequest")) == 2
    assert warnings == [
        "segment 12 (REF): REF*6P in loop 2100C is not carried into FHIR; passed over"
    ]
    validate_bundle(bundle)
    faulty = fixture("271_subscriber_benefits.x12").replace("SE*41*0001", "SE*40*0001")
    bundle, warnings = interchange_to_fhir(faulty.encode())
    assert len(resources(bundle, "CoverageEligibilityResponse")) == 1
    assert "segment 43 (SE): SE01 says 40 segments, the transaction has 41" in warnings
    validate_bundle(bundle)


@pytest.mark.parametrize(
    ("name", "message", "where"),
    [
        ("999_accepted.x12", "X12 999: only a 270 or 271 converts to FHIR", "segment 3 (ST)"),
        ("ta1_rejected.x12", "X12 TA1: only a 270 or 271 converts to FHIR", "segment 2 (TA1)"),
    ],
)
def test_interchange_to_fhir_refuses_acknowledgments_by_name(
    name: str, message: str, where: str
) -> None:
    with pytest.raises(X12Error) as info:
        interchange_to_fhir((FIXTURES / name).read_bytes())
    assert (info.value.message, info.value.where) == (message, where)


def test_interchange_to_fhir_refuses_mixed_and_cut_off_files() -> None:
    mixed = fixture("270_subscriber_and_dependent.x12") + fixture("271_dependents.x12")
    with pytest.raises(X12Error, match="holds both 270 and 271"):
        interchange_to_fhir(mixed.encode())
    cut = fixture("271_dependents.x12")
    with pytest.raises(X12Error, match="expected SE"):
        interchange_to_fhir(cut[: cut.index("SE*")].encode())


def test_interchange_to_fhir_refuses_an_empty_group_by_its_gs() -> None:
    text = fixture("271_dependents.x12")
    empty = text[: text.index("ST*")] + text[text.index("GE*") :].replace("GE*1*", "GE*0*")
    with pytest.raises(X12Error) as info:
        interchange_to_fhir(empty.encode())
    assert str(info.value) == (
        "segment 2 (GS): the functional group holds no transaction set: nothing converts to FHIR"
    )
