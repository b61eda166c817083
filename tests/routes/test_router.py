"""The router: HL7v2 messages by MSH-9/MSH-3/MSH-4 and conditions, FHIR input by resource type."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.hl7v2.codec import Message, parse_message
from engine.routes.loader import RouteSet, read_routes
from engine.routes.router import Router
from engine.routes.spec import Route, RouteFile

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hl7"


def msg(
    mtype: str = "ADT^A04", app: str = "FRONTDESK", facility: str = "OAKCLINIC", pv1_2: str = "O"
) -> Message:
    return parse_message(
        f"MSH|^~\\&|{app}^1.2.3^ISO|{facility}|ENGINE|HUB|20260102030405||{mtype}|C1|P|2.5.1\r"
        "PID|1||MRN1^^^OAKCLINIC^MR||Testpatient^Alice\r"
        f"PV1|1|{pv1_2}\r"
    )


def router(*routes: dict[str, object]) -> Router:
    spec = RouteFile.model_validate(
        {"destinations": {"d": {"type": "file", "directory": "out"}}, "routes": list(routes)}
    )
    return Router(RouteSet(routes=list(spec.routes), destinations=dict(spec.destinations)))


def names(routes: list[Route]) -> list[str]:
    return [r.name for r in routes]


def r(name: str, mapping: str = "none", **match: object) -> dict[str, object]:
    return {"name": name, "match": match, "mapping": mapping, "destinations": ["d"]}


def test_example_routes_on_fixture_messages() -> None:
    rt = Router(read_routes(None))
    for fixture, expected in [
        ("adt_a01.hl7", ["to-local-fhir", "adt-to-dropbox"]),
        ("siu_s12.hl7", ["to-local-fhir"]),
        ("dft_p03.hl7", ["to-local-fhir"]),
    ]:
        message = parse_message((FIXTURES / fixture).read_bytes())
        assert names(rt.match(message=message)) == expected, fixture
    assert rt.match(message=msg("ORM^O01")) == []
    assert rt.match(resource_type="Patient") == []


def test_message_trigger_application_and_facility() -> None:
    rt = router(
        r("adt", message=["ADT"]),
        r("a04-a08", message=["ADT"], trigger=["A04", "A08"]),
        r("frontdesk", sending_application=["FRONTDESK"]),
        r("other-clinic", sending_facility=["ELMCLINIC"]),
        r("siu", message=["SIU"]),
    )
    assert names(rt.match(message=msg())) == ["adt", "a04-a08", "frontdesk"]
    assert names(rt.match(message=msg("ADT^A03"))) == ["adt", "frontdesk"]
    assert names(rt.match(message=msg("SIU^S12", app="SCHED"))) == ["siu"]
    assert names(rt.match(message=msg(facility="ELMCLINIC", app="X"))) == [
        "adt",
        "a04-a08",
        "other-clinic",
    ]


@pytest.mark.parametrize(
    ("condition", "outpatient", "inpatient", "absent"),
    [
        ({"path": "PV1-2", "in": ["O"]}, True, False, False),
        ({"path": "PV1-2", "not_in": ["O"]}, False, True, True),
        ({"path": "PV1-2", "not_in": ["", "N"]}, True, True, False),
        ({"path": "PV1-2", "present": True}, True, True, False),
        ({"path": "PV1-2", "present": False}, False, False, True),
        ({"path": "PID-3.4", "in": ["OAKCLINIC"]}, True, True, True),
        ({"path": "PID-3[2].4", "present": True}, False, False, False),
    ],
)
def test_conditions(
    condition: dict[str, object], outpatient: bool, inpatient: bool, absent: bool
) -> None:
    rt = router(r("c", message=["ADT"], conditions=[condition]))
    assert bool(rt.match(message=msg(pv1_2="O"))) is outpatient
    assert bool(rt.match(message=msg(pv1_2="I"))) is inpatient
    assert bool(rt.match(message=msg(pv1_2=""))) is absent


def test_every_condition_must_hold() -> None:
    rt = router(
        r(
            "both",
            conditions=[
                {"path": "PV1-2", "in": ["O", "I"]},
                {"path": "MSH-4", "in": ["OAKCLINIC"]},
            ],
        )
    )
    assert rt.match(message=msg(pv1_2="I"))
    assert not rt.match(message=msg(pv1_2="I", facility="ELM"))


def test_fhir_input_by_resource_type_and_input_kinds() -> None:
    rt = router(
        r("patients", "hl7v2", resource_type=["Patient", "Bundle"]),
        r("any-fhir", "hl7v2"),
        r("all-hl7", "fhir"),
        r("everything"),
    )
    assert names(rt.match(resource_type="Patient")) == ["patients", "any-fhir", "everything"]
    assert names(rt.match(resource_type="Appointment")) == ["any-fhir", "everything"]
    assert names(rt.match(message=msg())) == ["all-hl7", "everything"]


def test_exactly_one_input() -> None:
    rt = router(r("x"))
    with pytest.raises(TypeError):
        rt.match()
    with pytest.raises(TypeError):
        rt.match(message=msg(), resource_type="Patient")
