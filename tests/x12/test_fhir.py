"""FHIR ⇄ X12: CoverageEligibilityRequest → 270; 271 → valid, faithful FHIR responses."""

from __future__ import annotations

import copy
import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from engine.errors import ConversionError
from engine.mappings.fhir_validate import validate_bundle
from engine.x12.errors import X12Error
from engine.x12.fhir import (
    X12_REJECT_REASON_SYSTEM,
    X12_SERVICE_TYPE_SYSTEM,
    coverage_eligibility_request_to_270,
    request_to_inquiry,
    x271_to_fhir,
)
from engine.x12.x270 import Address, read_270

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "x12"
NOW = datetime(2025, 3, 14, 9, 30)
CREATED = datetime(2025, 3, 14, 9, 31, tzinfo=UTC)
ENVELOPE: dict[str, Any] = {
    "sender_id": "GREENFIELDFP",
    "receiver_id": "CEDARVALLEY",
    "control_number": 7,
    "originator_id": "1999999999",
    "now": NOW,
}


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


def x12(name: str) -> str:
    return (FIXTURES / name).read_text()


# -- CoverageEligibilityRequest → 270 -------------------------------------------------------------


def test_subscriber_request_to_270() -> None:
    (inquiry,) = read_270(
        coverage_eligibility_request_to_270(load("coverage_eligibility_request.json"), **ENVELOPE)
    )
    assert (inquiry.payer.name, inquiry.payer.payer_id) == ("CEDAR VALLEY HEALTH PLAN", "CVHP1")
    assert (inquiry.provider.organization, inquiry.provider.npi) == (
        "GREENFIELD FAMILY PRACTICE",
        "1234567893",
    )
    sub = inquiry.subscriber
    assert (sub.last_name, sub.first_name, sub.middle_name) == ("OCONNOR-NUNEZ", "ZOE", "MARIA")
    assert (sub.member_id, sub.birth_date, sub.gender) == ("W123456789", date(1980, 2, 29), "F")
    assert sub.address == Address("12 ELM STREET", "APT 4", "SPRINGFIELD", "IL", "627010000")
    assert inquiry.dependent is None
    assert (inquiry.trace_number, inquiry.originator_id) == ("TRC-20250314-0001", "1999999999")
    assert (inquiry.service_date, inquiry.service_types) == (date(2025, 3, 14), ("30", "98", "35"))


def test_dependent_request_with_contained_resources_to_270() -> None:
    (inquiry,) = read_270(
        coverage_eligibility_request_to_270(
            load("coverage_eligibility_request_dependent.json"), **ENVELOPE
        )
    )
    assert (inquiry.provider.last_name, inquiry.provider.first_name, inquiry.provider.npi) == (
        "ABERNATHY",
        "CLARA",
        "1987654328",
    )
    assert inquiry.payer.payer_id == "CVHP1"  # the only identifier
    sub, dep = inquiry.subscriber, inquiry.dependent
    assert (sub.last_name, sub.first_name, sub.member_id, sub.birth_date) == (
        "LINDQVIST",
        "ERIK",
        "W987654321",
        date(1975, 11, 3),
    )
    assert dep is not None and (dep.first_name, dep.birth_date, dep.gender) == (
        "ASTRID",
        date(2012, 6, 7),
        "F",
    )
    assert (inquiry.service_date, inquiry.service_date_end) == (
        date(2025, 3, 14),
        date(2025, 3, 31),
    )
    assert inquiry.trace_number == "cer-2002" and inquiry.service_types == ("30",)


def _resource(bundle: dict[str, Any], rtype: str) -> dict[str, Any]:
    return next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda b: _resource(b, "Organization").update(identifier=[]),
            "CoverageEligibilityRequest.insurer: Organization/payer-1 has 0 identifiers and none "
            "typed NIIP",
        ),
        (
            lambda b: b["entry"][3]["resource"].update(identifier=[]),
            "CoverageEligibilityRequest.provider: Organization/prov-1 has no NPI",
        ),
        (
            # an absent patient is refused only when the 270 has no member ID to ask by instead
            # (issue 9: a reference not in the input becomes what it can)
            lambda b: (
                _resource(b, "CoverageEligibilityRequest").update(
                    patient={"reference": "Patient/nobody"}
                ),
                _resource(b, "Coverage").pop("subscriberId"),
            ),
            "CoverageEligibilityRequest.patient: 'Patient/nobody' is not in the input, and there "
            "is no member ID",
        ),
        (
            lambda b: _resource(b, "CoverageEligibilityRequest")["item"].append(
                {
                    "category": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/ex-benefitcategory",
                                "code": "F3",
                            }
                        ]
                    }
                }
            ),
            "item[3].category: ex-benefitcategory F3 has no X12 service type",
        ),
        (
            lambda b: b["entry"].append(copy.deepcopy(b["entry"][0])),
            "expected one CoverageEligibilityRequest, found 2",
        ),
        (
            lambda b: _resource(b, "CoverageEligibilityRequest").update(
                insurer={"reference": "Coverage/cov-1"}
            ),
            "'Coverage/cov-1' is a Coverage, not a Organization",
        ),
    ],
)
def test_request_problems_name_the_element(mutate: Any, message: str) -> None:
    bundle = load("coverage_eligibility_request.json")
    mutate(bundle)
    with pytest.raises(ConversionError, match=message.replace("[", r"\[").replace("]", r"\]")):
        request_to_inquiry(bundle, originator_id="1999999999")


def test_invalid_npi_is_refused_by_the_builder() -> None:
    bundle = load("coverage_eligibility_request.json")
    bundle["entry"][3]["resource"]["identifier"][0]["value"] = "1234567890"
    with pytest.raises(X12Error, match="NPI '1234567890' is not ten digits with a valid check"):
        coverage_eligibility_request_to_270(bundle, **ENVELOPE)


# -- 271 → CoverageEligibilityResponse -----------------------------------------------------------


def convert(name: str, **kwargs: Any) -> dict[str, Any]:
    bundle = x271_to_fhir(x12(name), created=CREATED, **kwargs)
    validate_bundle(bundle)  # every resource, then the Bundle, against the R4B models
    return bundle


def responses(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "CoverageEligibilityResponse"
    ]


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("271_*.x12")))
def test_every_271_fixture_converts_to_valid_fhir(name: str) -> None:
    bundle = convert(name)
    assert bundle["type"] == "collection" and responses(bundle)
    assert x271_to_fhir(x12(name), created=CREATED) == bundle  # deterministic full URLs


def item(resp: dict[str, Any], service: str | None, **match: str) -> dict[str, Any]:
    """The item for an X12 service type whose network/unit/term codes match."""
    for it in resp["insurance"][0]["item"]:
        codes = [
            c["code"]
            for c in it["category"].get("coding", [])
            if c["system"] == X12_SERVICE_TYPE_SYSTEM
        ]
        if (codes[0] if codes else None) != service:
            continue
        got = {k: it[k]["coding"][-1]["code"] for k in ("network", "unit", "term") if k in it}
        if all(got.get(k) == v for k, v in match.items()) and set(got) == set(match):
            return it  # type: ignore[no-any-return]
    raise AssertionError(f"no item {service} {match}")


def test_subscriber_benefits_are_faithful() -> None:
    bundle = convert(
        "271_subscriber_benefits.x12",
        request="CoverageEligibilityRequest/cer-1001",
        patient="Patient/pat-1",
        insurer="Organization/payer-1",
        trace="TRC-20250314-0001",
    )
    (resp,) = responses(bundle)
    assert (resp["status"], resp["purpose"], resp["outcome"]) == (
        "active",
        ["benefits"],
        "complete",
    )
    assert resp["request"] == {"reference": "CoverageEligibilityRequest/cer-1001"}
    assert resp["patient"] == {"reference": "Patient/pat-1"}
    assert resp["insurer"] == {"reference": "Organization/payer-1"}
    assert resp["created"] == "2025-03-14T09:31:00+00:00"
    assert resp["disposition"] == "Coverage active (CEDAR VALLEY PPO GOLD)"
    assert resp["requestor"]["identifier"] == {
        "system": "http://hl7.org/fhir/sid/us-npi",
        "value": "1234567893",
    }
    assert resp["identifier"] == [
        {"type": {"text": "payer trace number (TRN02)"}, "value": "CV-778812"}
    ]
    insurance = resp["insurance"][0]
    assert insurance["inforce"] is True
    assert insurance["benefitPeriod"] == {"start": "2025-01-01", "end": "2025-12-31"}
    coverage = _resource(bundle, "Coverage")
    assert coverage["subscriberId"] == "W123456789" and coverage["beneficiary"] == {
        "reference": "Patient/pat-1"
    }
    assert coverage["relationship"]["coding"][0]["code"] == "self"
    assert [(c["type"]["coding"][0]["code"], c["value"]) for c in coverage["class"]] == [
        ("plan", "CEDAR VALLEY PPO GOLD"),
        ("group", "G7700123"),
    ]

    plan = item(resp, "30", unit="IND")
    assert plan["name"] == "CEDAR VALLEY PPO GOLD" and "benefit" not in plan
    assert plan["category"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/ex-benefitcategory",
        "code": "30",
        "display": "Health Benefit Plan Coverage",
    }
    assert "Insurance type: PR Preferred Provider Organization (PPO)" in plan["description"]

    # deductible and out of pocket, calendar year, in network, individual: one item
    year = item(resp, "30", network="Y", unit="IND", term="23")
    assert year["network"]["coding"][0]["code"] == "in"
    assert year["unit"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/benefit-unit",
        "code": "individual",
    }
    assert year["term"]["coding"][0]["code"] == "annual"
    assert [(b["type"]["text"], b["allowedMoney"]) for b in year["benefit"]] == [
        ("Deductible", {"value": 1500, "currency": "USD"}),
        ("Out of Pocket (Stop Loss)", {"value": 5000, "currency": "USD"}),
    ]
    assert year["benefit"][0]["type"]["coding"][0]["code"] == "deductible"

    # remaining stays remaining: allowedMoney under term "29 Remaining", never usedMoney
    left = item(resp, "30", network="Y", unit="IND", term="29")
    assert left["term"] == {
        "coding": [
            {
                "system": "https://x12.org/codes/time-period-qualifiers",
                "code": "29",
                "display": "Remaining",
            }
        ],
        "text": "Remaining",
    }
    assert [(b["type"]["text"], b["allowedMoney"]["value"]) for b in left["benefit"]] == [
        ("Deductible (remaining)", 650.5),
        ("Out of Pocket (Stop Loss) (remaining)", 4200),
    ]
    assert not any(k.startswith("used") for b in left["benefit"] for k in b)

    family = item(resp, "30", network="Y", unit="FAM", term="23")
    assert family["unit"]["coding"][0]["code"] == "family"
    assert family["benefit"][0]["allowedMoney"]["value"] == 3000
    out = item(resp, "30", network="N", unit="IND", term="23")
    assert out["network"]["coding"][0]["code"] == "out"

    # copay per visit, for each EB03 repetition; MSG in the description
    for service in ("98", "UC"):
        office = item(resp, service, network="Y", unit="IND", term="27")
        (copay,) = office["benefit"]
        assert (
            copay["type"]["coding"][0]["code"] == "copay" and copay["allowedMoney"]["value"] == 25
        )
        assert office["description"] == "COPAY WAIVED FOR PREVENTIVE VISITS"
    assert (
        item(resp, "86", network="Y", unit="IND", term="27")["benefit"][0]["allowedMoney"]["value"]
        == 150
    )

    # co-insurance: EB08 .2 → 20 (whole percent), .125 → "12.5%"
    coins = item(resp, "30", network="Y", unit="IND")
    assert coins["benefit"] == [
        {
            "type": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/benefit-type",
                        "code": "copay-percent",
                        "display": "Copayment Percent per service",
                    },
                    {
                        "system": "https://x12.org/codes/eligibility-or-benefit-information-codes",
                        "code": "A",
                        "display": "Co-Insurance",
                    },
                ],
                "text": "Co-Insurance, percent",
            },
            "allowedUnsignedInt": 20,
        }
    ]
    assert item(resp, "30", network="N", unit="IND")["benefit"][0]["allowedUnsignedInt"] == 40
    assert item(resp, "AL", network="Y", unit="IND")["benefit"][0]["allowedString"] == "12.5%"

    # limitations: 20 visits allowed (auth required), 6 used
    therapy = [
        it
        for it in resp["insurance"][0]["item"]
        if it["category"].get("text") == "Occupational Therapy"
    ]
    allowed = next(it for it in therapy if it.get("authorizationRequired") is True)
    assert allowed["benefit"][0]["allowedUnsignedInt"] == 20
    assert allowed["benefit"][0]["type"]["text"] == "Limitations, Visits"
    used = next(it for it in therapy if "authorizationRequired" not in it)
    assert used["benefit"][0]["usedUnsignedInt"] == 6

    massage = item(resp, "BE", unit="IND")
    assert massage["excluded"] is True and massage["benefit"][0]["type"]["text"] == "Non-Covered"
    pcp = item(resp, None)
    assert pcp["provider"] == {
        "display": "HALVORSEN, INGRID",
        "identifier": {"system": "http://hl7.org/fhir/sid/us-npi", "value": "1245319599"},
    }
    assert pcp["description"] == "Primary Care Provider: HALVORSEN, INGRID"


def test_without_caller_references_the_bundle_holds_patient_payer_and_coverage() -> None:
    bundle = convert("271_subscriber_benefits.x12")
    (resp,) = responses(bundle)
    urls = {e["resource"]["resourceType"]: e["fullUrl"] for e in bundle["entry"]}
    assert resp["patient"] == {"reference": urls["Patient"]}
    assert resp["insurer"] == {"reference": urls["Organization"]}
    assert resp["insurance"][0]["coverage"] == {"reference": urls["Coverage"]}
    assert resp["request"]["identifier"]["value"] == "TRC-20250314-0001"
    patient = _resource(bundle, "Patient")
    assert patient["name"] == [{"family": "OCONNOR-NUNEZ", "given": ["ZOE", "M"]}]
    assert (patient["birthDate"], patient["gender"]) == ("1980-02-29", "female")
    payer = _resource(bundle, "Organization")
    assert payer["identifier"][0]["value"] == "CVHP1"
    assert payer["identifier"][0]["type"]["coding"][0]["code"] == "NIIP"


def test_dependents_errors_at_benefit_and_dependent_level() -> None:
    bundle = convert(
        "271_dependents.x12",
        request="CoverageEligibilityRequest/cer-2002",
        patient="Patient/child",
        trace="TRC-DEP-0002",
    )
    astrid, nils = responses(bundle)
    assert astrid["request"] == {"reference": "CoverageEligibilityRequest/cer-2002"}
    assert astrid["patient"] == {"reference": "Patient/child"}
    assert astrid["outcome"] == "partial"
    assert astrid["error"] == [
        {
            "code": {
                "coding": [
                    {
                        "system": X12_REJECT_REASON_SYSTEM,
                        "code": "70",
                        "display": "Inconsistent with Patient's Gender",
                    }
                ],
                "text": "2110D: Inconsistent with Patient's Gender (request invalid); "
                "follow-up C Please Correct and Resubmit",
            }
        }
    ]
    coverage = next(
        e["resource"]
        for e in bundle["entry"]
        if e["fullUrl"] == astrid["insurance"][0]["coverage"]["reference"]
    )
    assert coverage["relationship"]["coding"][0]["code"] == "child"
    assert coverage["subscriberId"] == "W987654321"
    # the second dependent answers another trace: it keeps its own Patient and request identifier
    assert nils["patient"]["reference"].startswith("urn:uuid:")
    assert nils["request"]["identifier"]["value"] == "TRC-DEP-0003"
    assert nils["outcome"] == "error" and "insurance" not in nils
    assert nils["error"][0]["code"]["coding"][0]["code"] == "77"
    assert nils["disposition"].startswith("The payer could not answer: 2100D: 77 Subscriber Found")


def test_rejections_and_inactive_coverage() -> None:
    (rejected,) = responses(convert("271_rejected_subscriber.x12"))
    assert rejected["outcome"] == "error"
    assert [e["code"]["coding"][0]["code"] for e in rejected["error"]] == ["72", "73"]
    (source,) = responses(convert("271_rejected_source.x12", patient="Patient/p9"))
    assert source["outcome"] == "error" and source["patient"] == {"reference": "Patient/p9"}
    assert source["error"][0]["code"]["text"] == (
        "2000A: Unable to Respond at Current Time; follow-up X Please Wait 10 Days and Resubmit"
    )
    assert source["request"] == {"display": "the 270 this 271 answers (no trace number echoed)"}
    (inactive,) = responses(convert("271_inactive.x12"))
    assert inactive["insurance"][0]["inforce"] is False
    assert inactive["disposition"] == "Coverage inactive (CEDAR VALLEY PPO GOLD)"
    assert inactive["insurance"][0]["benefitPeriod"] == {"end": "2024-12-31"}


def test_created_defaults_to_the_bht_date() -> None:
    bundle = x271_to_fhir(x12("271_inactive.x12"))
    validate_bundle(bundle)
    assert responses(bundle)[0]["created"] == "2025-03-14" and "timestamp" not in bundle
