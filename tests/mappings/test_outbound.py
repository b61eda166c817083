"""FHIR R4 → HL7v2 with the mapping files run in reverse (engine/mappings/outbound/).

Every message written here must pass hl7apy's structural validation for 2.5.1 (no error issue),
and the round trips HL7v2 → FHIR → HL7v2 → FHIR are compared on meaning
(:func:`engine.mappings.golden.differences`) after replacing fullUrls by ``Type#n``: a
RelatedPerson, Location or Claim has no business identifier, so its fullUrl comes from MSH-3/4 and
the control ID, which differ between the original and the message written here.

What a round trip cannot keep, and why: the trigger. The ADT written is A28/A31 or A04/A08, so an
Encounter status that came from another trigger (A01 in-progress) reads back as that trigger's.
Everything else round-trips exactly (mobile phones are written ``PRN^CP``, since table 0201 has no
PRS before v2.6, and read back as mobile).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from engine.errors import ConfigError, ConversionError
from engine.hl7v2.codec import Message, parse_message
from engine.hl7v2.validate import validate
from engine.mappings import Mappings, load_mappings
from engine.mappings.golden import differences
from engine.mappings.outbound import OutboundMapper
from engine.mappings.outbound_spec import load_outbound

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
TS = "20250402101500-0400"


@pytest.fixture(scope="module")
def mappings() -> Mappings:
    return load_mappings()


@pytest.fixture(scope="module")
def outbound(mappings: Mappings) -> OutboundMapper:
    return OutboundMapper(mappings.files)


def _hl7(name: str) -> Message:
    return parse_message((FIXTURES / "hl7" / name).read_bytes())


def _fhir(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / "fhir" / name).read_text(encoding="utf-8"))
    return data


def _errors(msg: Message) -> list[str]:
    return [str(i) for i in validate(msg.to_er7()) if i.severity == "E"]


def _canonical(bundle: dict[str, Any]) -> dict[str, Any]:
    """The Bundle with fullUrls, references and ids replaced by ``Type#n`` and no requests."""
    urls: dict[str, str] = {}
    counts: dict[str, int] = {}
    for entry in bundle["entry"]:
        rtype = entry["resource"]["resourceType"]
        counts[rtype] = counts.get(rtype, 0) + 1
        urls[entry["fullUrl"]] = f"{rtype}#{counts[rtype]}"

    def walk(x: Any) -> Any:
        if isinstance(x, dict):
            out = {}
            for k, v in x.items():
                if k == "request" or (k == "id" and "resourceType" in x):
                    continue
                if k in ("reference", "fullUrl") and v in urls:
                    v = urls[v]
                out[k] = walk(v)
            return out
        if isinstance(x, list):
            return [walk(i) for i in x]
        return x

    return dict(walk(bundle))


def _round_trip(
    mappings: Mappings, outbound: OutboundMapper, name: str, event: str | None = None
) -> tuple[Message, list[str]]:
    first = mappings.to_fhir(_hl7(name))
    msg = outbound.to_hl7(first, event=event, control_id="OUT0001", timestamp=TS)
    second = mappings.to_fhir(parse_message(msg.to_er7()))
    return msg, differences(_canonical(first), _canonical(second))


def _resources(bundle: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]


# -- ADT -----------------------------------------------------------------------------------------


def test_adt_a04_round_trip(mappings: Mappings, outbound: OutboundMapper) -> None:
    msg, diff = _round_trip(mappings, outbound, "adt_a04.hl7", event="A04")
    assert msg.type == ("ADT", "A04", "ADT_A01")
    assert [s.name for s in msg.segments] == [
        "MSH", "EVN", "PID", "PD1", "NK1", "PV1", "PV2", "IN1", "IN2", "IN1",
    ]  # fmt: skip
    assert _errors(msg) == []
    assert diff == []


def test_adt_round_trip_keeps_identifiers_and_coverage(
    mappings: Mappings, outbound: OutboundMapper
) -> None:
    msg, _ = _round_trip(mappings, outbound, "adt_a04.hl7", event="A04")
    pid = msg.segment("PID")
    assert pid is not None
    assert pid.get(3, 1, 1) == "M13909960" and pid.get(3, 2, 1) == "0824628194"
    assert pid.get(18) == "A543231948"  # the AN identifier goes back to PID-18
    in1 = msg.all("IN1")
    assert [s.get(1) for s in in1] == ["1", "2"]
    assert [s.get(22) for s in in1] == ["1", "2"]
    assert [s.get(36) for s in in1] == ["90A792440268", "94M472803852"]
    assert [s.get(3) for s in in1] == ["90417", "94851"]
    assert [s.get(8) for s in in1] == ["G426846", "G624595"]
    assert in1[1].get(16, 1, 1) == "Okafor" and in1[1].get(17) == "SPO"
    in2 = msg.segment("IN2")
    assert in2 is not None and in2.get(61) == "M07866661701"  # not repeated in IN1-36


def test_adt_a28_round_trip(mappings: Mappings, outbound: OutboundMapper) -> None:
    msg, diff = _round_trip(mappings, outbound, "adt_a28.hl7")
    assert msg.type.trigger == "A28"
    assert _errors(msg) == []
    in1 = msg.segment("IN1")
    assert in1 is not None and in1.get(17) == "MTH"  # the subscriber's, not OTH
    assert diff == []


def test_adt_a01_round_trip_keeps_ssn_in_pid3(mappings: Mappings, outbound: OutboundMapper) -> None:
    msg, diff = _round_trip(mappings, outbound, "adt_a01.hl7", event="A04")
    assert _errors(msg) == []
    pid = msg.segment("PID")
    assert pid is not None and pid.get(3, 2, 1) == "444-55-6666" and pid.get(19) == ""
    # the one thing a round trip through A04 cannot keep: A01's in-progress status
    assert diff == ["entry[2].resource.status: 'arrived', expected 'in-progress'"]


def test_patient_alone_is_a28_with_an_empty_visit(
    mappings: Mappings, outbound: OutboundMapper
) -> None:
    patient = _fhir("outbound_patient.json")
    msg = outbound.to_hl7(patient, control_id="C1", timestamp=TS)
    assert msg.type == ("ADT", "A28", "ADT_A05")
    assert msg.msh.get(3) == "ENGINE" and msg.msh.get(10) == "C1" and msg.msh.get(7) == TS
    lines = msg.to_er7().split("\r")
    assert [line[:3] for line in lines if line] == ["MSH", "EVN", "PID", "PV1"]
    assert lines[1] == f"EVN|A28|{TS}" and lines[3] == "PV1|1|N"
    assert _errors(msg) == []
    back = mappings.to_fhir(parse_message(msg.to_er7()))
    assert [r["resourceType"] for r in (e["resource"] for e in back["entry"])] == ["Patient"]
    (p,) = _resources(back, "Patient")
    assert p["name"][0]["family"] == "O'Brien & Sons|Test^x"
    assert p["address"][0]["line"] == ["18 Tern Way", "Unit 2~B"]
    assert [t["value"] for t in p["telecom"]] == ["(555)555-0101", "f.obrien@example.org"]
    assert p["birthDate"] == "1990-07-14" and p["gender"] == "female"


def test_escapes_are_written_per_hl7_2_10_4(outbound: OutboundMapper) -> None:
    msg = outbound.to_hl7(_fhir("outbound_patient.json"), control_id="C1", timestamp=TS)
    pid = msg.segment("PID")
    assert pid is not None
    assert pid.raw_field(5).startswith("O'Brien \\T\\ Sons\\F\\Test\\S\\x^Fiona")
    assert pid.get(5, 1, 1) == "O'Brien & Sons|Test^x"
    assert "Unit 2\\R\\B" in pid.raw_field(11)


def test_update_is_a31_and_a_trigger_may_be_named(outbound: OutboundMapper) -> None:
    patient = _fhir("outbound_patient.json")
    assert outbound.to_hl7(patient, event="update", control_id="C", timestamp=TS).type == (
        "ADT",
        "A31",
        "ADT_A05",
    )
    assert outbound.to_hl7(patient, event="A08", control_id="C", timestamp=TS).type == (
        "ADT",
        "A08",
        "ADT_A01",
    )


def test_visit_sites_send_a04_and_a08(mappings: Mappings) -> None:
    files = dataclasses.replace(
        mappings.files, site=mappings.files.site.model_copy(update={"outbound_adt": "visit"})
    )
    visit = OutboundMapper(files)
    bundle = _fhir("outbound_adt_bundle.json")
    new = visit.to_hl7(bundle, control_id="C", timestamp=TS)
    upd = visit.to_hl7(bundle, event="update", control_id="C", timestamp=TS)
    assert (new.type.trigger, upd.type.trigger) == ("A04", "A08")
    assert _errors(new) == [] and _errors(upd) == []


def test_hand_written_adt_bundle(mappings: Mappings, outbound: OutboundMapper) -> None:
    bundle = _fhir("outbound_adt_bundle.json")
    msg = outbound.to_hl7(bundle, control_id="C2", timestamp=TS)
    assert _errors(msg) == []
    assert [s.name for s in msg.segments] == [
        "MSH", "EVN", "PID", "PD1", "NK1", "PV1", "PV2", "IN1", "IN1",
    ]  # fmt: skip
    pid = msg.segment("PID")
    assert pid is not None
    assert pid.get(3) == "M77700012" and pid.get(3, 2) == ""  # one PID-3 identifier
    assert pid.get(18) == "A9000777" and pid.get(19) == "999-01-2345"
    nk1 = msg.all("NK1")  # the spouse is only a subscriber: no NK1 for her
    assert len(nk1) == 1 and nk1[0].get(2) == "Quillfeather" and nk1[0].get(3) == "CHD"
    pv1 = msg.segment("PV1")
    assert pv1 is not None and pv1.get(2) == "O" and pv1.get(7, 1, 2) == "Ashgrove"
    first, second = msg.all("IN1")  # in Coverage.order, not in Bundle order
    assert (first.get(1), first.get(36), first.get(22)) == ("1", "PRI11223344", "1")
    assert (second.get(1), second.get(36), second.get(22)) == ("2", "SEC44556677", "2")
    # the plan to IN1-2 and the group to IN1-8, whatever their order in Coverage.class
    assert (first.get(2), first.get(2, 1, 2), first.get(8)) == (
        "NMH-PPO",
        "Northmeadow PPO",
        "GRP-7001",
    )
    assert first.get(17) == "SEL" and first.get(16) == "Quillfeather"  # the patient insured
    assert (second.get(16, 1, 2), second.get(17), second.get(18)) == ("Oren", "SPO", "19700219")
    back = mappings.to_fhir(parse_message(msg.to_er7()))
    (patient,) = _resources(back, "Patient")
    ids = {(i.get("system"), i["value"]) for i in patient["identifier"]}
    assert ids == {
        ("urn:oid:2.25.184592301472019384756", "M77700012"),
        ("urn:oid:2.25.184592301472019384756", "A9000777"),
        ("http://hl7.org/fhir/sid/us-ssn", "999-01-2345"),
    }
    coverages = _resources(back, "Coverage")
    assert [(c["order"], c["subscriberId"]) for c in coverages] == [
        (1, "PRI11223344"),
        (2, "SEC44556677"),
    ]
    payers = {o["identifier"][0]["value"] for o in _resources(back, "Organization")}
    assert payers == {"70123", "80456"}


def test_patient_without_identifier_names_the_element(outbound: OutboundMapper) -> None:
    patient = _fhir("outbound_patient.json")
    del patient["identifier"]
    patient.pop("id", None)  # nothing at all to put in PID-3
    with pytest.raises(ConversionError, match=r"Patient.identifier is required for ADT PID-3"):
        outbound.to_hl7(patient, control_id="C", timestamp=TS)


def test_patient_without_identifier_is_sent_with_its_id(outbound: OutboundMapper) -> None:
    # issue 9: FHIR R4 Patient.identifier is 0..* (the spec's patient-example-mom has none)
    patient = _fhir("outbound_patient.json")
    del patient["identifier"]
    patient["id"] = "mom"
    warnings: list[str] = []
    msg = outbound.to_hl7(patient, control_id="C", timestamp=TS, warnings=warnings)
    pid = msg.segment("PID")
    assert pid is not None and pid.get(3) == "mom"
    assert _errors(msg) == []
    assert "Patient.identifier: none; PID-3 is the Patient's id (mom)" in "\n".join(warnings)


# -- SIU -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "event", "trigger"),
    [
        ("siu_s12.hl7", None, "S12"),
        ("siu_s13.hl7", "reschedule", "S13"),
        ("siu_s14.hl7", "modify", "S14"),
        ("siu_s15.hl7", None, "S15"),
        ("siu_s17.hl7", None, "S17"),
        ("siu_s26.hl7", None, "S26"),
    ],
)
def test_siu_round_trip(
    mappings: Mappings, outbound: OutboundMapper, name: str, event: str | None, trigger: str
) -> None:
    msg, diff = _round_trip(mappings, outbound, name, event=event)
    assert msg.type == ("SIU", trigger, "SIU_S12")
    assert _errors(msg) == []
    assert diff == []


def test_siu_s12_segments(mappings: Mappings, outbound: OutboundMapper) -> None:
    msg, _ = _round_trip(mappings, outbound, "siu_s12.hl7")
    assert [s.name for s in msg.segments] == [
        "MSH", "SCH", "TQ1", "NTE", "PID", "PD1", "PV1", "RGS", "AIS", "AIG", "AIL", "AIP", "AIP",
    ]  # fmt: skip
    sch, tq1 = msg.segment("SCH"), msg.segment("TQ1")
    assert sch is not None and tq1 is not None
    assert (sch.get(9), sch.get(10)) == ("20", "min")  # SCH-10 written so SCH-9 reads back
    assert sch.get(11, 1, 4) == "20250317093000-0400" and tq1.get(7) == "20250317093000-0400"
    assert sch.get(25) == "Booked"
    assert [s.get(1) for s in msg.all("AIP")] == ["1", "2"]


def test_hand_written_appointment(mappings: Mappings, outbound: OutboundMapper) -> None:
    bundle = _fhir("outbound_siu_bundle.json")
    msg = outbound.to_hl7(bundle, control_id="C3", timestamp=TS)
    assert msg.type.trigger == "S12"
    assert _errors(msg) == []
    assert [s.name for s in msg.segments] == [
        "MSH", "SCH", "TQ1", "NTE", "PID", "RGS", "AIS", "AIL", "AIP",
    ]  # fmt: skip
    ail, aip = msg.segment("AIL"), msg.segment("AIP")
    # issue 9: a Location's name is one place, never split on its spaces (was CLINIC^EXAM4)
    assert ail is not None and ail.raw_field(3).startswith("CLINIC EXAM4^")
    assert ail.get(3, 1, 2) == "" and ail.get(12) == "Pending"
    assert aip is not None and aip.get(3) == "1888888881"
    back = mappings.to_fhir(parse_message(msg.to_er7()))
    (appt,) = _resources(back, "Appointment")
    original = bundle["entry"][0]["resource"]
    for key in ("status", "start", "end", "minutesDuration", "comment", "serviceType"):
        assert differences(original[key], appt[key]) == [], key
    assert [p["status"] for p in appt["participant"]] == ["needs-action", "accepted", "accepted"]


@pytest.mark.parametrize(
    ("status", "event", "trigger"),
    [
        ("booked", "reschedule", "S13"),
        ("booked", "modify", "S14"),
        ("booked", "update", "S14"),
        ("cancelled", "modify", "S15"),
        ("noshow", None, "S26"),
        ("entered-in-error", None, "S17"),
    ],
)
def test_siu_trigger_from_status_and_event(
    outbound: OutboundMapper, status: str, event: str | None, trigger: str
) -> None:
    bundle = _fhir("outbound_siu_bundle.json")
    bundle["entry"][0]["resource"]["status"] = status
    msg = outbound.to_hl7(bundle, event=event, control_id="C", timestamp=TS)
    assert msg.type.trigger == trigger
    assert _errors(msg) == []


def test_appointment_alone_names_a_patient_reference_of_unknown_type(
    outbound: OutboundMapper,
) -> None:
    appt = copy.deepcopy(_fhir("outbound_siu_bundle.json")["entry"][0]["resource"])
    appt["participant"] = [
        {"actor": {"reference": "urn:uuid:5d0e7f9c-0a51-4c1e-9a57-000000000404"}},
        {"actor": {"reference": "Practitioner/d-404"}, "status": "accepted"},
    ]
    with pytest.raises(ConversionError) as err:
        outbound.to_hl7(appt, control_id="C", timestamp=TS)
    text = str(err.value)
    assert "SIU needs the Patient that Appointment.participant.actor refers to" in text
    assert "urn:uuid:5d0e7f9c-0a51-4c1e-9a57-000000000404" in text
    assert "Practitioner/d-404" not in text


def test_appointment_alone_is_written_from_its_references(outbound: OutboundMapper) -> None:
    # issue 9 (was a refusal): a lone Appointment is an SIU; the patient and the practitioner
    # outside the input are written from what their references carry
    appt = copy.deepcopy(_fhir("outbound_siu_bundle.json")["entry"][0]["resource"])
    appt["participant"] = [
        {"actor": {"reference": "Patient/p-404", "display": "Pell Vantongeren"}},
        {
            "actor": {
                "reference": "Practitioner/d-404",
                "identifier": {"system": "http://hl7.org/fhir/sid/us-npi", "value": "1999999992"},
            },
            "status": "accepted",
        },
    ]
    warnings: list[str] = []
    msg = outbound.to_hl7(appt, control_id="C", timestamp=TS, warnings=warnings)
    assert msg.type == ("SIU", "S12", "SIU_S12") and _errors(msg) == []
    pid, aip = msg.segment("PID"), msg.segment("AIP")
    assert pid is not None and (pid.get(3), pid.get(5)) == ("p-404", "Pell Vantongeren")
    assert aip is not None and aip.get(3) == "1999999992"
    text = "\n".join(warnings)
    assert "Appointment.participant.actor (Patient/p-404) is not in the input" in text
    assert (
        "Appointment.participant[1].actor (Practitioner/d-404) is not in the input: AIP-3" in text
    )


def test_appointment_without_participants(outbound: OutboundMapper) -> None:
    appt = copy.deepcopy(_fhir("outbound_siu_bundle.json")["entry"][0]["resource"])
    del appt["participant"]
    with pytest.raises(ConversionError, match=r"no Appointment.participant.actor refers to one"):
        outbound.to_hl7(appt, control_id="C", timestamp=TS)


def test_appointment_with_a_participant_not_in_the_bundle(outbound: OutboundMapper) -> None:
    # issue 9 (was a refusal): the reference becomes what it can, an AIP with its display
    bundle = _fhir("outbound_siu_bundle.json")
    bundle["entry"][0]["resource"]["participant"].append(
        {"actor": {"reference": "Practitioner/d-404", "display": "Dr Ilse Varga"}}
    )
    warnings: list[str] = []
    msg = outbound.to_hl7(bundle, control_id="C", timestamp=TS, warnings=warnings)
    assert _errors(msg) == []
    second = msg.all("AIP")[1]
    assert (second.get(3, 1, 1), second.get(3, 1, 2)) == ("d-404", "Dr Ilse Varga")
    assert warnings == [
        "Appointment.participant[3].actor (Practitioner/d-404) is not in the input: AIP-3 is "
        "written from what the reference carries (its id as the identifier and its display as "
        "the name)"
    ]


def test_appointment_without_start(outbound: OutboundMapper) -> None:
    bundle = _fhir("outbound_siu_bundle.json")
    del bundle["entry"][0]["resource"]["start"]
    with pytest.raises(ConversionError) as err:
        outbound.to_hl7(bundle, control_id="C", timestamp=TS)
    assert err.value.message == "Appointment.start is required for SIU SCH-11 / TQ1-7"


# -- DFT -----------------------------------------------------------------------------------------


def test_dft_round_trip(mappings: Mappings, outbound: OutboundMapper) -> None:
    msg, diff = _round_trip(mappings, outbound, "dft_p03.hl7")
    assert msg.type == ("DFT", "P03", "DFT_P03")
    assert _errors(msg) == []
    assert diff == []
    ft1 = msg.all("FT1")
    assert [s.get(1) for s in ft1] == ["1", "2"]
    assert [s.get(6) for s in ft1] == ["CG", "CG"]
    assert [s.get(7) for s in ft1] == ["99214", "PT110"]  # FT1-7 the charge code, else FT1-25
    assert [s.get(25) for s in ft1] == ["99214", "97110"]
    assert [s.get(20, 1, 2) for s in ft1] == ["Okonkwo", "Haldane"]  # each line's performer
    assert [s.get(11, 1, 1, 1) for s in ft1] == ["185.00", "90.00"]
    assert [s.get(3) for s in msg.all("DG1")] == ["E11.9", "M17.11"]
    assert [s.get(36) for s in msg.all("IN1")] == ["90A118204771", "94M550913268"]


def test_dft_minimal_round_trip(mappings: Mappings, outbound: OutboundMapper) -> None:
    msg, diff = _round_trip(mappings, outbound, "dft_p03_minimal.hl7")
    assert _errors(msg) == []
    assert diff == []


def test_hand_written_claim(mappings: Mappings, outbound: OutboundMapper) -> None:
    bundle = _fhir("outbound_dft_bundle.json")
    msg = outbound.to_hl7(bundle, control_id="C4", timestamp=TS)
    assert msg.type.trigger == "P03"
    assert _errors(msg) == []
    evn = msg.segment("EVN")
    assert evn is not None and evn.get(2) == "20250506164500-0400"  # Claim.created
    back = mappings.to_fhir(parse_message(msg.to_er7()))
    (claim,) = _resources(back, "Claim")
    original = bundle["entry"][0]["resource"]
    for a, b in zip(original["item"], claim["item"], strict=True):
        for key in ("sequence", "productOrService", "servicedDate", "quantity", "unitPrice", "net"):
            assert differences(a[key], b[key]) == [], key
    assert differences(original["diagnosis"], claim["diagnosis"]) == []
    (coverage,) = _resources(back, "Coverage")
    assert coverage["subscriberId"] == "WPH998877"


def test_claim_without_items(outbound: OutboundMapper) -> None:
    bundle = _fhir("outbound_dft_bundle.json")
    del bundle["entry"][0]["resource"]["item"]
    with pytest.raises(ConversionError, match=r"Claim.item is required for DFT FT1"):
        outbound.to_hl7(bundle, control_id="C", timestamp=TS)


# -- the proposed shared-YAML changes ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "event"),
    [("adt_a04.hl7", "A04"), ("adt_a28.hl7", None), ("dft_p03.hl7", None),
     ("dft_p03_minimal.hl7", None), ("siu_s12.hl7", None), ("siu_s15.hl7", None)],
)  # fmt: skip
def test_round_trips_are_exact(
    mappings: Mappings, outbound: OutboundMapper, name: str, event: str | None
) -> None:
    msg, diff = _round_trip(mappings, outbound, name, event=event)
    assert _errors(msg) == []
    assert diff == []


# -- input, choice of message, errors ------------------------------------------------------------


def test_the_anchor_decides_the_message(outbound: OutboundMapper) -> None:
    siu = _fhir("outbound_siu_bundle.json")  # holds a Patient too
    assert outbound.to_hl7(siu, control_id="C", timestamp=TS).type.code == "SIU"
    adt = outbound.to_hl7(siu, message="ADT", control_id="C", timestamp=TS)
    assert adt.type.code == "ADT" and _errors(adt) == []
    dft = _fhir("outbound_dft_bundle.json")
    assert outbound.to_hl7(dft, control_id="C", timestamp=TS).type.code == "DFT"


@pytest.mark.parametrize(
    ("data", "text"),
    [
        ({"name": "x"}, "not a FHIR resource or Bundle"),
        ({"resourceType": "Organization", "name": "x"}, "the input has no Appointment or Claim"),
        ({"resourceType": "Bundle", "type": "collection"}, "it has no resources"),
    ],
)
def test_what_cannot_be_written(outbound: OutboundMapper, data: Any, text: str) -> None:
    with pytest.raises(ConversionError, match=text):
        outbound.to_hl7(data, control_id="C", timestamp=TS)


def test_unknown_message_and_event(outbound: OutboundMapper) -> None:
    patient = _fhir("outbound_patient.json")
    with pytest.raises(ConversionError, match=r"no outbound file for ORU"):
        outbound.to_hl7(patient, message="ORU", control_id="C", timestamp=TS)
    with pytest.raises(ConversionError, match=r"no ADT trigger event for the event 'merge'"):
        outbound.to_hl7(patient, event="merge", control_id="C", timestamp=TS)


def test_timestamp_as_datetime(outbound: OutboundMapper) -> None:
    patient = _fhir("outbound_patient.json")
    when = datetime(2025, 7, 1, 9, 30, 5, tzinfo=ZoneInfo("America/Chicago"))
    msg = outbound.to_hl7(patient, control_id="C", timestamp=when)
    assert msg.msh.get(7) == "20250701093005-0500"
    naive = outbound.to_hl7(patient, control_id="C", timestamp=datetime(2025, 1, 2, 3, 4, 5))
    assert naive.msh.get(7) == "20250102030405-0500"  # site.yaml time zone, New York


def test_references_by_type_and_id(outbound: OutboundMapper) -> None:
    bundle = _fhir("outbound_adt_bundle.json")
    for entry in bundle["entry"]:
        entry.pop("fullUrl")  # resolved by Type/id alone
    msg = outbound.to_hl7(bundle, control_id="C", timestamp=TS)
    pd1 = msg.segment("PD1")
    assert pd1 is not None and pd1.get(4) == "1999999984"
    assert len(msg.all("IN1")) == 2


# -- the outbound files --------------------------------------------------------------------------


def test_built_in_outbound_files_load() -> None:
    specs = load_outbound()
    assert sorted(specs) == ["ADT", "DFT", "SIU"]


def test_a_bad_outbound_file_names_file_line_and_key(tmp_path: Path) -> None:
    (tmp_path / "outbound").mkdir()
    (tmp_path / "outbound" / "ADT.yaml").write_text(
        "message: ADT\n"
        "anchor: patient\n"
        "select:\n"
        "  - {name: patient, resource: Patient}\n"
        "triggers:\n"
        "  - {trigger: A28}\n"
        "segments:\n"
        "  - {segment: PID, from: patient, mapz: [PID]}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as err:
        load_outbound(tmp_path)
    assert str(err.value).startswith(f"{tmp_path}/outbound/ADT.yaml, line 8, segments[0].mapz")


def test_a_site_file_must_be_named_after_its_message(tmp_path: Path) -> None:
    (tmp_path / "outbound").mkdir()
    text = (FIXTURES.parent / "engine/mappings/specs/outbound/ADT.yaml").read_text("utf-8")
    (tmp_path / "outbound" / "adt.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"must be named after its message \(ADT.yaml\)"):
        load_outbound(tmp_path)


def test_an_outbound_file_naming_an_unknown_map(mappings: Mappings, tmp_path: Path) -> None:
    (tmp_path / "outbound").mkdir()
    text = (FIXTURES.parent / "engine/mappings/specs/outbound/ADT.yaml").read_text("utf-8")
    (tmp_path / "outbound" / "ADT.yaml").write_text(
        text.replace("maps: [NK1]", "maps: [NK9]"), encoding="utf-8"
    )
    with pytest.raises(ConfigError, match=r"NK1 names segment map 'NK9'"):
        OutboundMapper(mappings.files, load_outbound(tmp_path))


def test_selection_names_must_be_defined_above(tmp_path: Path) -> None:
    (tmp_path / "outbound").mkdir()
    (tmp_path / "outbound" / "ADT.yaml").write_text(
        "message: ADT\n"
        "anchor: patient\n"
        "select:\n"
        "  - {name: payer, resource: Organization, via: coverage.payor}\n"
        "  - {name: patient, resource: Patient}\n"
        "triggers: [{trigger: A28}]\n"
        "segments: []\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=r"line 1, \(file\): selection 'payer' names 'coverage'"):
        load_outbound(tmp_path)


# -- issue 9: anything valid a FHIR server hands us converts --------------------------------------

_CLASS = "http://terminology.hl7.org/CodeSystem/coverage-class"


def _class(kind: str, value: str, name: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": {"coding": [{"system": _CLASS, "code": kind}]}, "value": value}
    if name:
        out["name"] = name
    return out


def _coverage(**extra: Any) -> dict[str, Any]:
    """A Coverage shaped like the FHIR R4 spec's coverage-example (synthetic values)."""
    cov: dict[str, Any] = {
        "resourceType": "Coverage",
        "id": "cov-1",
        "status": "active",
        "subscriberId": "SUB0001",
        "beneficiary": {"reference": "Patient/pat-4"},
        "relationship": {"coding": [{"code": "self"}]},
        "period": {"start": "2025-01-01"},
        "payor": [{"reference": "Organization/payer-2"}],
        "class": [
            _class("group", "GRP-77", "Quillon Tool Works"),
            _class("subgroup", "SG-1"),
            _class("plan", "PLN-9", "Quillon Gold"),
            _class("rxgroup", "RXG-5"),
        ],
    }
    cov.update(extra)
    return cov


def test_a_lone_coverage_is_an_adt_about_its_beneficiary(outbound: OutboundMapper) -> None:
    warnings: list[str] = []
    msg = outbound.to_hl7(_coverage(), control_id="C", timestamp=TS, warnings=warnings)
    assert msg.type == ("ADT", "A28", "ADT_A05") and _errors(msg) == []
    pid, in1 = msg.segment("PID"), msg.segment("IN1")
    assert pid is not None and in1 is not None
    # the beneficiary is known by its reference alone: its id, and HL7 null for the name
    assert (pid.get(3), pid.raw_field(5)) == ("pat-4", '""')
    assert in1.get(3) == "payer-2" and in1.get(36) == "SUB0001" and in1.get(17) == "SEL"
    assert warnings[:3] == [
        "Coverage.beneficiary (Patient/pat-4) is not in the input: the Patient is written from "
        "the reference (its id as the identifier)",
        "Coverage.payor (Organization/payer-2) is not in the input: the Organization is written "
        "from the reference (its id as the identifier)",
        'Patient.name: none, and HL7 requires PID-5: it is sent as the HL7 null ""',
    ]
    assert outbound.to_hl7(_coverage(), event="update", control_id="C", timestamp=TS).type == (
        "ADT",
        "A31",
        "ADT_A05",
    )


def test_coverage_class_by_type(mappings: Mappings, outbound: OutboundMapper) -> None:
    warnings: list[str] = []
    msg = outbound.to_hl7(_coverage(), control_id="C", timestamp=TS, warnings=warnings)
    in1 = msg.segment("IN1")
    assert in1 is not None
    # the plan to IN1-2, the group to IN1-8 with its name in IN1-9, whatever their order
    assert (in1.get(2), in1.get(2, 1, 2)) == ("PLN-9", "Quillon Gold")
    assert (in1.get(8), in1.get(9)) == ("GRP-77", "Quillon Tool Works")
    # one line for the list, naming each element left out
    assert "Coverage.class[1] (type subgroup), [3] (type rxgroup): no place for them in IN1" in (
        warnings
    )
    # and back: IN1-2 plan, IN1-8 and IN1-9 one group class
    back = mappings.to_fhir(parse_message(msg.to_er7()))
    (cov,) = _resources(back, "Coverage")
    assert sorted(cov["class"], key=lambda c: c["value"]) == [
        _class("group", "GRP-77", "Quillon Tool Works"),
        {**_class("plan", "PLN-9", "Quillon Gold")},
    ]


def test_group_name_without_group_number_reads_as_the_group(mappings: Mappings) -> None:
    text = _hl7("adt_a28.hl7").to_er7()
    in1 = next(line for line in text.split("\r") if line.startswith("IN1|"))
    fields = in1.split("|")
    fields[8], fields[9] = "", "Harbor Freight Union"
    bundle = mappings.to_fhir(parse_message(text.replace(in1, "|".join(fields))))
    (cov,) = _resources(bundle, "Coverage")
    groups = [c for c in cov["class"] if c["type"]["coding"][0]["code"] == "group"]
    assert groups == [_class("group", "Harbor Freight Union")]


def test_a_coverage_without_plan_still_makes_its_in1(outbound: OutboundMapper) -> None:
    cov = _coverage(**{"class": [_class("group", "GRP-77")]})
    warnings: list[str] = []
    msg = outbound.to_hl7(cov, control_id="C", timestamp=TS, warnings=warnings)
    in1 = msg.segment("IN1")
    assert in1 is not None and in1.raw_field(2) == '""' and in1.get(8) == "GRP-77"
    assert _errors(msg) == []
    assert (
        'Coverage.class (type plan): none, and HL7 requires IN1-2: it is sent as the HL7 null ""'
        in warnings
    )
    # a Claim with such a Coverage still makes its DFT, with the IN1
    bundle = _fhir("outbound_dft_bundle.json")
    for entry in bundle["entry"]:
        if entry["resource"]["resourceType"] == "Coverage":
            entry["resource"]["class"] = [_class("group", "GRP-77")]
    dft = outbound.to_hl7(bundle, control_id="C", timestamp=TS)
    assert dft.type.code == "DFT" and _errors(dft) == []
    assert [s.raw_field(2) for s in dft.all("IN1")] == ['""']


def test_a_lone_claim_is_a_dft(outbound: OutboundMapper) -> None:
    claim = copy.deepcopy(
        next(
            e["resource"]
            for e in _fhir("outbound_dft_bundle.json")["entry"]
            if e["resource"]["resourceType"] == "Claim"
        )
    )
    claim["patient"] = {"reference": "Patient/pt-1", "display": "Oren Quillfeather"}
    claim["insurance"] = [{"sequence": 1, "focal": True, "coverage": {"reference": "Coverage/c9"}}]
    for item in claim["item"]:
        item.pop("servicedDate", None)
        item.pop("servicedPeriod", None)
    claim["billablePeriod"] = {"start": "2025-05-01", "end": "2025-05-02"}
    warnings: list[str] = []
    msg = outbound.to_hl7(claim, control_id="C", timestamp=TS, warnings=warnings)
    assert msg.type == ("DFT", "P03", "DFT_P03") and _errors(msg) == []
    assert [s.name for s in msg.segments if s.name == "IN1"] == []
    assert {s.get(4) for s in msg.all("FT1")} == {"20250501"}
    text = "\n".join(warnings)
    assert "Claim.insurance.coverage (Coverage/c9) is not in the input: no Coverage" in text
    assert "Claim.item.serviced[x]: none; FT1-4 is Claim.billablePeriod.start" in text


def test_a_logical_payor_reference(outbound: OutboundMapper) -> None:
    ident = {"system": "urn:oid:2.16.840.1.113883.3.19.2.3", "value": "666666"}
    cov = _coverage(payor=[{"identifier": ident, "display": "Quillon Mutual"}])
    msg = outbound.to_hl7(cov, control_id="C", timestamp=TS)
    in1 = msg.segment("IN1")
    assert in1 is not None and (in1.get(3), in1.get(4)) == ("666666", "Quillon Mutual")
    # and resolved by identifier when the payer is in the Bundle
    payer = {
        "resourceType": "Organization",
        "identifier": [ident],
        "name": "Quillon Mutual Insurance",
    }
    bundle = {"resourceType": "Bundle", "entry": [{"resource": cov}, {"resource": payer}]}
    in1 = outbound.to_hl7(bundle, control_id="C", timestamp=TS).segment("IN1")
    assert in1 is not None and in1.get(4) == "Quillon Mutual Insurance"


@pytest.mark.parametrize(
    ("country", "xad6", "warned"),
    [("US", "USA", False), ("CAN", "CAN", False), ("Norway", "NOR", False), ("CAD", "", True)],
)
def test_country_codes_go_to_table_0399(
    outbound: OutboundMapper, country: str, xad6: str, warned: bool
) -> None:
    patient = _fhir("outbound_patient.json")
    patient["address"] = [{"line": ["4 Gannet Row"], "city": "Hull", "country": country}]
    warnings: list[str] = []
    msg = outbound.to_hl7(patient, control_id="C", timestamp=TS, warnings=warnings)
    pid = msg.segment("PID")
    assert pid is not None and pid.get(11, 1, 6) == xad6 and _errors(msg) == []
    expected = [
        f"Patient.address[0].country '{country}': no code for it in HL7 table 0399 "
        "(tables/country.yaml); left out"
    ]
    assert [w for w in warnings if "country" in w] == (expected if warned else [])


def test_name_uses_get_codes_of_table_0200_in_2_5_1(outbound: OutboundMapper) -> None:
    uses = ["official", "usual", "maiden", "nickname", "anonymous", "old", "temp"]
    patient = _fhir("outbound_patient.json")
    patient["name"] = [{"use": u, "family": f"Fam{i}"} for i, u in enumerate(uses)]
    warnings: list[str] = []
    msg = outbound.to_hl7(patient, control_id="C", timestamp=TS, warnings=warnings)
    pid = msg.segment("PID")
    assert pid is not None
    assert [pid.get(5, r, 7) for r in range(1, 8)] == ["L", "D", "M", "N", "S", "U", "U"]
    assert _errors(msg) == []
    assert [w for w in warnings if ".use" in w] == [
        "Patient.name[5].use 'old': HL7 table 0200 (v2.5.1) has no code that means it; "
        "PID-5[6].7 is U",
        "Patient.name[6].use 'temp': HL7 table 0200 (v2.5.1) has no code that means it; "
        "PID-5[7].7 is U",
    ]


def test_a_proposed_appointment_without_start(outbound: OutboundMapper) -> None:
    bundle = _fhir("outbound_siu_bundle.json")
    appt = bundle["entry"][0]["resource"]
    appt["status"] = "proposed"
    for key in ("start", "end", "minutesDuration"):
        del appt[key]
    warnings: list[str] = []
    msg = outbound.to_hl7(bundle, control_id="C", timestamp=TS, warnings=warnings)
    assert msg.type.trigger == "S12" and _errors(msg) == []
    assert "Appointment.start: none (status proposed), so SIU SCH-11 / TQ1-7 is empty" in warnings


def test_mappings_to_hl7_passes_the_warnings(mappings: Mappings) -> None:
    warnings: list[str] = []
    mappings.to_hl7(_coverage(), control_id="C", timestamp=TS, warnings=warnings)
    assert any(w.startswith("Coverage.beneficiary (Patient/pat-4)") for w in warnings)


def test_a_name_known_only_as_text_is_xpn_1(outbound: OutboundMapper) -> None:
    patient = _fhir("outbound_patient.json")
    patient["name"] = [
        {"use": "official", "text": "Ravi Kumar Varga"},
        {"use": "usual", "family": "Varga", "given": ["Ravi"], "text": "Ravi Varga"},
    ]
    msg = outbound.to_hl7(patient, control_id="C", timestamp=TS)
    pid = msg.segment("PID")
    assert pid is not None and _errors(msg) == []
    assert pid.raw_field(5) == "Ravi Kumar Varga^^^^^^L~Varga^Ravi^^^^^D"


def test_a_diagnosis_without_a_code_is_reported(outbound: OutboundMapper) -> None:
    bundle = _fhir("outbound_dft_bundle.json")
    claim = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Claim")
    claim["diagnosis"].append({"sequence": 9, "diagnosisReference": {"reference": "Condition/c1"}})
    warnings: list[str] = []
    msg = outbound.to_hl7(bundle, control_id="C", timestamp=TS, warnings=warnings)
    assert len(msg.all("DG1")) == len(claim["diagnosis"]) - 1  # DG1-3 is required
    n = len(claim["diagnosis"]) - 1
    assert warnings == [f"Claim.diagnosis[{n}]: no place for it in DG1"]
