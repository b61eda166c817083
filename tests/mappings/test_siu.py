"""SIU (S12-S17, S26) → Appointment, with its patient, visit and scheduled resources.

The fixtures follow one synthetic appointment through booking (S12), rescheduling (S13), a change
of provider (S14) and cancellation (S15), plus a deleted duplicate (S17) and a no-show (S26). Each
is checked on meaning, validated against the R4B models and compared with its golden file.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from engine.hl7v2 import parse_message
from engine.hl7v2.codec import Message
from engine.mappings import Mappings, load_mappings
from engine.mappings.fhir_validate import validate_bundle
from engine.mappings.golden import differences
from engine.mappings.transforms import TransformContext, get_transform

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
NPI = "http://hl7.org/fhir/sid/us-npi"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
FILLER_SYSTEM = "urn:oid:2.25.184592301472019384756.7"
EDT = timezone(timedelta(hours=-4))


@pytest.fixture(scope="module")
def mappings() -> Mappings:
    return load_mappings()


def _message(name: str, *, drop: tuple[str, ...] = ()) -> Message:
    lines = (FIXTURES / "hl7" / f"{name}.hl7").read_text(encoding="ascii").splitlines()
    return parse_message("\r".join(line for line in lines if line[:3] not in drop))


def _set(message: Message, segment: str, field: int, raw: str) -> Message:
    seg = message.segment(segment)
    assert seg is not None, segment
    seg.set_raw(field, raw, rep=0)
    return message


def _resources(bundle: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]


def _appointment(bundle: dict[str, Any]) -> dict[str, Any]:
    (appt,) = _resources(bundle, "Appointment")
    return appt


def _by_url(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["fullUrl"]: e["resource"] for e in bundle["entry"]}


def _instant(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    assert value.tzinfo is not None, f"{text} has no offset"
    return value


def _identifier(resource: dict[str, Any], code: str) -> dict[str, Any] | None:
    for ident in resource.get("identifier", []):
        if any(c["code"] == code for c in ident.get("type", {}).get("coding", [])):
            return dict(ident)
    return None


def _actors(bundle: dict[str, Any], rtype: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(participant, actor resource) for the Appointment's participants of one resource type."""
    urls = _by_url(bundle)
    out = []
    for p in _appointment(bundle)["participant"]:
        actor = urls[p["actor"]["reference"]]
        if actor["resourceType"] == rtype:
            out.append((p, actor))
    return out


# -- every fixture: meaning, validity, golden file -------------------------------------------

EXPECTED: dict[str, dict[str, Any]] = {
    "siu_s12": {
        "status": "booked",
        "start": datetime(2025, 3, 17, 9, 30, tzinfo=EDT),
        "end": datetime(2025, 3, 17, 9, 50, tzinfo=EDT),
        "minutes": 20,
        "filler": "SA20250317-0042",
        "placer": "P77120",
        "mrn": "M20481736",
        "npis": ["1482736505"],
        "practitioners": 2,
        "participant_status": "accepted",
        "locations": ["CLINIC EXAM3"],
        "devices": ["Automated BP monitor 2"],
        "encounter": "planned",
        "comment": "Blood pressure recheck 4 weeks after lisinopril start; bring home BP log.",
    },
    "siu_s13": {
        "status": "booked",
        "start": datetime(2025, 3, 19, 14, 0, tzinfo=EDT),
        "end": datetime(2025, 3, 19, 14, 20, tzinfo=EDT),
        "minutes": 20,
        "filler": "SA20250317-0042",
        "placer": "P77120",
        "mrn": "M20481736",
        "npis": ["1482736505"],
        "practitioners": 2,
        "participant_status": "accepted",
        "locations": ["CLINIC EXAM3"],
        "devices": ["Automated BP monitor 2"],
        "encounter": "planned",
        "comment": "Moved from 3/17 09:30 at patient request (work conflict).",
    },
    "siu_s14": {  # no TQ1 (times from SCH-11), no SCH-25 (status from the trigger), 1800 s
        "status": "booked",
        "start": datetime(2025, 3, 19, 14, 0, tzinfo=EDT),
        "end": datetime(2025, 3, 19, 14, 30, tzinfo=EDT),
        "minutes": 30,
        "filler": "SA20250317-0042",
        "placer": "P77120",
        "mrn": "M20481736",
        "npis": ["1293847566"],
        "practitioners": 1,
        "participant_status": "accepted",
        "locations": ["CLINIC EXAM5"],
        "devices": [],
        "encounter": "planned",
        "comment": "Dr. Vasquez-Lind out; seen by Dr. Oyelaran. Visit lengthened for med review.",
    },
    "siu_s15": {
        "status": "cancelled",
        "start": datetime(2025, 3, 19, 14, 0, tzinfo=EDT),
        "end": datetime(2025, 3, 19, 14, 30, tzinfo=EDT),
        "minutes": 30,
        "filler": "SA20250317-0042",
        "placer": "P77120",
        "mrn": "M20481736",
        "npis": ["1293847566"],
        "practitioners": 1,
        "participant_status": "declined",
        "locations": ["CLINIC EXAM5"],
        "devices": [],
        "encounter": "cancelled",
        "comment": "Patient called to cancel; will rebook after travel.",
    },
    "siu_s17": {  # no SCH-25: entered-in-error from the trigger; no placer ID, no PV1
        "status": "entered-in-error",
        "start": datetime(2025, 3, 21, 10, 0, tzinfo=EDT),
        "end": datetime(2025, 3, 21, 10, 15, tzinfo=EDT),
        "minutes": 15,
        "filler": "SA20250321-0007",
        "placer": None,
        "mrn": "M20481736",
        "npis": ["1482736505"],
        "practitioners": 1,
        "participant_status": "declined",
        "locations": ["CLINIC EXAM3"],
        "devices": [],
        "encounter": None,
        "comment": "Booked twice by mistake; the 3/19 appointment stands.",
    },
    "siu_s26": {  # times without an offset: the site's zone (America/New_York, EDT)
        "status": "noshow",
        "start": datetime(2025, 3, 24, 15, 40, tzinfo=EDT),
        "end": datetime(2025, 3, 24, 16, 0, tzinfo=EDT),
        "minutes": 20,
        "filler": "SA20250324-0019",
        "placer": "P77388",
        "mrn": "M20519984",
        "npis": ["1293847566"],
        "practitioners": 1,
        "participant_status": "accepted",
        "locations": ["CLINIC EXAM5"],
        "devices": [],
        "encounter": "cancelled",
        "comment": "No-show; voicemail left with guardian to rebook the well-child visit.",
    },
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_meaning(mappings: Mappings, name: str) -> None:
    want = EXPECTED[name]
    bundle = mappings.to_fhir(_message(name))
    appt = _appointment(bundle)

    assert appt["status"] == want["status"]
    assert _instant(appt["start"]) == want["start"]
    assert _instant(appt["end"]) == want["end"]
    assert appt["minutesDuration"] == want["minutes"]
    assert appt["comment"] == want["comment"]

    filler = _identifier(appt, "FILL")
    assert filler == {
        "value": want["filler"],
        "system": FILLER_SYSTEM,
        "type": {"coding": [{"system": V2_0203, "code": "FILL", "display": "Filler Identifier"}]},
    }
    assert appt["identifier"][0] == filler  # the business identity
    placer = _identifier(appt, "PLAC")
    assert (placer or {}).get("value") == want["placer"]
    if placer is not None:
        assert placer["system"] == "urn:engine:identifier:MAPLEEHR"
    entry = next(e for e in bundle["entry"] if e["resource"] is appt)
    assert entry["request"] == {
        "method": "PUT",
        "url": f"Appointment?identifier={FILLER_SYSTEM}|{want['filler']}",
    }

    # the patient, by MRN, and its participant
    (patient,) = _resources(bundle, "Patient")
    mrn = _identifier(patient, "MR")
    assert mrn is not None and mrn["value"] == want["mrn"]
    (pat_part, _) = _actors(bundle, "Patient")[0]
    assert pat_part == {
        "actor": {"reference": pat_part["actor"]["reference"]},
        "status": "accepted",
    }

    # practitioners (AIP-3): NPIs with the us-npi system, and their participant status
    practitioners = _actors(bundle, "Practitioner")
    assert len(practitioners) == want["practitioners"]
    npis = [
        i["value"] for _, pr in practitioners for i in pr["identifier"] if i.get("system") == NPI
    ]
    assert npis == want["npis"]
    assert {p["status"] for p, _ in practitioners} == {want["participant_status"]}
    assert all(p["type"] for p, _ in practitioners)

    # locations (AIL-3) and devices (AIG-3)
    locations = _actors(bundle, "Location")
    assert [loc["name"] for _, loc in locations] == want["locations"]
    assert {p["status"] for p, _ in locations} == {want["participant_status"]}
    devices = _actors(bundle, "Device")
    assert [d["deviceName"][0]["name"] for _, d in devices] == want["devices"]

    # every participant has the status R4 requires, and an actor
    assert all(p["status"] and p["actor"] for p in appt["participant"])

    # the visit
    encounters = _resources(bundle, "Encounter")
    if want["encounter"] is None:
        assert encounters == []
    else:
        (enc,) = encounters
        assert enc["status"] == want["encounter"]
        appt_url = entry["fullUrl"]
        assert enc["appointment"] == [{"reference": appt_url}]
        assert _by_url(bundle)[enc["subject"]["reference"]] is patient


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_is_valid_fhir(mappings: Mappings, name: str) -> None:
    validate_bundle(mappings.to_fhir(_message(name)))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_matches_golden_file(mappings: Mappings, name: str) -> None:
    expected = json.loads((FIXTURES / "fhir" / f"{name}.json").read_text(encoding="utf-8"))
    assert differences(expected, mappings.to_fhir(_message(name))) == []


def test_one_appointment_through_its_life(mappings: Mappings) -> None:
    """S12, S13, S14 and S15 of one filler ID update the same Appointment."""
    urls = set()
    for name in ("siu_s12", "siu_s13", "siu_s14", "siu_s15"):
        bundle = mappings.to_fhir(_message(name))
        urls |= {
            e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Appointment"
        }
    assert len(urls) == 1


def test_codes(mappings: Mappings) -> None:
    appt = _appointment(mappings.to_fhir(_message("siu_s15")))
    assert appt["reasonCode"] == [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v2-0276",
                    "code": "FOLLOWUP",
                    "display": "A follow up visit from a previous appointment",
                },
                {
                    "system": "http://snomed.info/sct",
                    "code": "185389009",
                    "display": "Follow-up visit (procedure)",
                },
            ],
            "text": "Follow-up visit",
        }
    ]
    assert appt["appointmentType"]["coding"][0]["system"] == (
        "http://terminology.hl7.org/CodeSystem/v2-0277"
    )
    assert appt["appointmentType"]["coding"][0]["code"] == "Normal"
    assert appt["serviceType"][0]["coding"][0] == {
        "system": "http://www.ama-assn.org/go/cpt",
        "code": "99214",
        "display": "Office or other outpatient visit, established patient, moderate MDM",
    }
    assert appt["cancelationReason"] == {
        "coding": [{"code": "PTCANC", "display": "Cancelled by patient"}]
    }


def test_cancelation_reason_only_for_cancel_events(mappings: Mappings) -> None:
    assert "cancelationReason" not in _appointment(mappings.to_fhir(_message("siu_s14")))


# -- choices between sources -----------------------------------------------------------------


def test_tq1_wins_over_sch_11(mappings: Mappings) -> None:
    msg = _set(_message("siu_s12"), "SCH", 11, "^^M20^20250401080000-0400^20250401082000-0400")
    appt = _appointment(mappings.to_fhir(msg))
    assert _instant(appt["start"]) == datetime(2025, 3, 17, 13, 30, tzinfo=UTC)
    assert _instant(appt["end"]) == datetime(2025, 3, 17, 13, 50, tzinfo=UTC)


@pytest.mark.parametrize(
    ("keep", "start"),
    [
        ("AIS", datetime(2025, 3, 17, 9, 5, tzinfo=EDT)),
        ("AIL", datetime(2025, 3, 17, 9, 10, tzinfo=EDT)),
        ("AIP", datetime(2025, 3, 17, 9, 15, tzinfo=EDT)),
        ("AIG", datetime(2025, 3, 17, 9, 20, tzinfo=EDT)),
    ],
)
def test_start_from_the_resources_in_order(mappings: Mappings, keep: str, start: datetime) -> None:
    """Without TQ1 and SCH-11: AIS-4, then AIL-6, then AIP-6, then AIG-8."""
    msg = _set(_message("siu_s12", drop=("TQ1",)), "SCH", 11, "")
    sources = [("AIS", 4, 5), ("AIL", 6, 10), ("AIP", 6, 15), ("AIG", 8, 20)]
    first = [s[0] for s in sources].index(keep)
    for i, (seg, field, minute) in enumerate(sources):
        for s in msg.all(seg):
            s.set_raw(field, f"2025031709{minute:02d}00-0400" if i >= first else "", rep=0)
    appt = _appointment(mappings.to_fhir(msg))
    assert _instant(appt["start"]) == start
    assert "end" not in appt


@pytest.mark.parametrize(
    ("trigger", "sch25", "status"),
    [
        ("S12", "", "booked"),
        ("S13", "", "booked"),
        ("S15", "", "cancelled"),
        ("S16", "", "cancelled"),
        ("S16", "Discontinued", "cancelled"),  # no FHIR code: the trigger's
        ("S17", "", "entered-in-error"),
        ("S26", "", "noshow"),
        ("S15", "Booked", "booked"),  # SCH-25 wins over the trigger
        ("S12", "Pending^Pending^HL70278", "pending"),
        ("S14", "Started", "checked-in"),
        ("S14", "Complete", "fulfilled"),
    ],
)
def test_status(mappings: Mappings, trigger: str, sch25: str, status: str) -> None:
    msg = _set(_message("siu_s12"), "SCH", 25, sch25)
    msg.msh.set_raw(9, f"SIU^{trigger}^SIU_S12", rep=0)
    assert _appointment(mappings.to_fhir(msg))["status"] == status


@pytest.mark.parametrize(
    ("filler_status", "participant"),
    [
        ("", "accepted"),
        ("Booked", "accepted"),
        ("Pending", "needs-action"),
        ("Waitlist", "needs-action"),
        ("Cancelled", "declined"),
        ("Noshow", "accepted"),
        ("Local-code", "accepted"),
    ],
)
def test_participant_status(mappings: Mappings, filler_status: str, participant: str) -> None:
    msg = _message("siu_s12")
    for seg in msg.all("AIP"):
        seg.set_raw(12, filler_status, rep=0)
    bundle = mappings.to_fhir(msg)
    assert {p["status"] for p, _ in _actors(bundle, "Practitioner")} == {participant}


def test_a_resource_segment_without_its_resource_is_no_participant(mappings: Mappings) -> None:
    msg = _message("siu_s12")
    for seg, field in (("AIL", 3), ("AIG", 3), ("AIP", 3)):
        for s in msg.all(seg):
            s.set_raw(field, "", rep=0)
    appt = _appointment(mappings.to_fhir(msg))
    assert len(appt["participant"]) == 1  # the patient


@pytest.mark.parametrize(
    ("amount", "unit", "minutes"),
    [
        ("45", "min^minute^ANS+", 45),
        ("45", "MIN", 45),
        ("2700", "s", 45),
        ("0.75", "h^hour^ANS+", 45),
        ("90", "s", None),  # 1.5 minutes: left out, not rounded
        ("45", "", None),  # no unit: the IG maps only a known unit
        ("45", "d", None),
    ],
)
def test_minutes_duration_from_sch_9_and_10(
    mappings: Mappings, amount: str, unit: str, minutes: int | None
) -> None:
    msg = _set(_set(_message("siu_s12"), "SCH", 9, amount), "SCH", 10, unit)
    for seg in msg.all("AIS"):
        seg.set_raw(7, "", rep=0)
    assert _appointment(mappings.to_fhir(msg)).get("minutesDuration") == minutes


def test_minutes_duration_from_ais_when_sch_has_none(mappings: Mappings) -> None:
    msg = _set(_set(_message("siu_s12"), "SCH", 9, ""), "SCH", 10, "")
    assert _appointment(mappings.to_fhir(msg))["minutesDuration"] == 20


def test_comment_is_the_first_note(mappings: Mappings) -> None:
    """Without a note after SCH, the service's note (AIS group) is the comment."""
    lines = (FIXTURES / "hl7" / "siu_s12.hl7").read_text(encoding="ascii").splitlines()
    first_nte = next(i for i, line in enumerate(lines) if line.startswith("NTE"))
    msg = parse_message("\r".join(lines[:first_nte] + lines[first_nte + 1 :]))
    appt = _appointment(mappings.to_fhir(msg))
    assert appt["comment"] == "Vitals and BP check by the MA before the provider."


def test_placer_and_order_numbers(mappings: Mappings) -> None:
    msg = _set(_message("siu_s17"), "SCH", 1, "P90001^MAPLEEHR")
    _set(msg, "SCH", 26, "ORD5521^MAPLEEHR")
    appt = _appointment(mappings.to_fhir(msg))
    assert [i["type"]["coding"][0]["code"] for i in appt["identifier"]] == ["FILL", "PLAC"]
    assert appt["basedOn"] == [
        {
            "type": "ServiceRequest",
            "identifier": {
                "value": "ORD5521",
                "system": "urn:engine:identifier:MAPLEEHR",
                "type": {
                    "coding": [{"system": V2_0203, "code": "PLAC", "display": "Placer Identifier"}]
                },
            },
        }
    ]


def test_device_from_aig(mappings: Mappings) -> None:
    bundle = mappings.to_fhir(_message("siu_s12"))
    ((part, device),) = _actors(bundle, "Device")
    assert device["identifier"] == [{"value": "BPM-02", "system": "urn:engine:identifier:L"}]
    assert device["deviceName"] == [
        {"name": "Automated BP monitor 2", "type": "user-friendly-name"}
    ]
    assert part["type"] == [{"coding": [{"code": "EQ", "display": "Equipment"}]}]


# -- the duration transforms -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "minutes", "back"),
    [
        ("minutes", "30", 30, "30"),
        ("minutes", "30.0", 30, "30"),
        ("minutes", "0", None, None),
        ("minutes", "-5", None, None),
        ("minutes", "12.5", None, None),
        ("minutes", "soon", None, None),
        ("minutes", "NaN", None, None),
        ("seconds_as_minutes", "60", 1, "60"),
        ("seconds_as_minutes", "61", None, None),
        ("hours_as_minutes", "1.5", 90, "1.5"),
        ("hours_as_minutes", "2", 120, "2"),
    ],
)
def test_duration_transforms(name: str, text: str, minutes: int | None, back: str | None) -> None:
    ctx = TransformContext()
    transform = get_transform(name)
    assert transform.inbound([text], ctx) == minutes
    if minutes is not None:
        assert transform.outbound(minutes, ctx) == [back]
