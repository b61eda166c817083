"""Property tests: text in the fields a front office edits survives HL7v2 → FHIR → HL7v2 → FHIR."""

from __future__ import annotations

import datetime as dt

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.hl7v2.codec import Message
from engine.mappings import Mappings, load_mappings

MAPPINGS: Mappings = load_mappings()

# printable text, delimiters and escape characters included, no leading/trailing spaces (FHIR
# strings may not have them) and no control characters
text = (
    st.text(
        alphabet=st.characters(
            blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="\x0b\x1c"
        ),
        min_size=1,
        max_size=20,
    )
    .map(str.strip)
    .filter(bool)
)
ident = st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZ0123456789-", min_size=1, max_size=12)
date = st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2100, 12, 31)).map(
    lambda d: d.strftime("%Y%m%d")
)


def adt(family: str, given: str, mrn: str, dob: str, member: str, city: str) -> Message:
    msg = Message.new(
        "ADT^A28^ADT_A05",
        control_id="P1",
        timestamp="20260101120000-0500",
        sending=("FRONTDESK", "OAKCLINIC"),
    )
    msg.add("EVN").set(2, "20260101120000-0500")
    pid = msg.add("PID")
    pid.set(1, "1")
    pid.set(3, mrn, comp=1)
    pid.set(3, "OAKCLINIC", comp=4)
    pid.set(3, "MR", comp=5)
    pid.set(5, family, comp=1)
    pid.set(5, given, comp=2)
    pid.set(7, dob)
    pid.set(8, "F")
    pid.set(11, city, comp=3)
    msg.add("PV1").set(2, "N")
    in1 = msg.add("IN1")
    in1.set(1, "1")
    in1.set(2, "PLAN-A", comp=1)  # IN1-2 is required in v2.5.1
    in1.set(3, "PAYER1", comp=1)
    in1.set(36, member)
    return msg


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(family=text, given_=text, mrn=ident, dob=date, member=ident, city=text)
def test_demographics_and_coverage_survive_a_round_trip(
    family: str, given_: str, mrn: str, dob: str, member: str, city: str
) -> None:
    first = MAPPINGS.to_fhir(adt(family, given_, mrn, dob, member, city))
    patient = first["entry"][0]["resource"]
    assert patient["name"][0]["family"] == family
    assert patient["name"][0]["given"] == [given_]
    assert patient["identifier"][0]["value"] == mrn
    assert patient["birthDate"] == f"{dob[:4]}-{dob[4:6]}-{dob[6:]}"
    assert patient["address"][0]["city"] == city
    written = MAPPINGS.to_hl7(first, control_id="P2", timestamp="20260101120000-0500")
    again = MAPPINGS.to_fhir(written)
    p2 = again["entry"][0]["resource"]
    assert p2["name"] == patient["name"]
    assert p2["identifier"] == patient["identifier"]
    assert p2["birthDate"] == patient["birthDate"]
    assert p2["address"] == patient["address"]
    cov1 = next(
        e["resource"] for e in first["entry"] if e["resource"]["resourceType"] == "Coverage"
    )
    cov2 = next(
        e["resource"] for e in again["entry"] if e["resource"]["resourceType"] == "Coverage"
    )
    assert cov2["subscriberId"] == cov1["subscriberId"] == member
