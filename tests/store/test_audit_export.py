"""Every action the trail records becomes a valid FHIR R4 AuditEvent (fhir.resources' R4B model)
shaped as IHE BALP describes: the pattern's type, subtype and action, the agents' roles, the
patient entity, outcome codes; a refused or failed event claims no BALP profile."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import pytest
from fhir.resources.R4B.auditevent import AuditEvent

from engine.audit.chain import ChainRecord
from engine.audit.export import BALP, SHAPES, audit_event, write_ndjson
from engine.store.audit import ACTIONS


def _record(action: str, outcome: str = "ok", **kw: object) -> ChainRecord:
    fields: dict[str, object] = {
        "id": 7,
        "seq": 5,
        "at": datetime(2026, 12, 3, 12, 0, 1, 5, tzinfo=UTC),
        "actor": "ada",
        "source": "console",
        "action": action,
        "message_id": 42,
        "patient_key": "OAKCLINIC|MRN20001",
        "detail": "3 shown; one patient",
        "outcome": outcome,
        "peer": "192.0.2.10:51234",
        "prev_hash": "a" * 64,
        "hash": "b" * 64,
    }
    fields.update(kw)
    return ChainRecord(**fields)  # type: ignore[arg-type]


def test_every_action_has_a_shape() -> None:
    assert set(SHAPES) == set(ACTIONS)


@pytest.mark.parametrize("action", sorted(ACTIONS))
@pytest.mark.parametrize("outcome", ["ok", "refused", "error"])
def test_every_action_and_outcome_is_a_valid_audit_event(action: str, outcome: str) -> None:
    event = AuditEvent.model_validate(audit_event(_record(action, outcome), server="hub.local"))
    assert event.outcome == {"ok": "0", "refused": "4", "error": "8"}[outcome]
    assert event.recorded.isoformat().startswith("2026-12-03T12:00:01.000005")
    assert event.source.observer.identifier.value == "hub.local"
    assert event.source.type[0].code == "4"
    patient = [e for e in event.entity if e.role and e.role.code == "1"]
    assert patient[0].what.identifier.system == "urn:engine:identifier:OAKCLINIC"
    assert patient[0].what.identifier.value == "MRN20001"
    [user] = [a for a in event.agent if a.requestor]
    assert user.who.identifier.value == "ada" and user.network is None
    if outcome != "ok":
        assert event.meta is None and event.outcomeDesc == "3 shown; one patient"


def test_a_read_is_balp_patient_read() -> None:
    event = AuditEvent.model_validate(audit_event(_record("view-payload"), server="hub"))
    assert event.meta.profile == [f"{BALP}PatientRead"]
    assert (event.type.system, event.type.code) == (
        "http://terminology.hl7.org/CodeSystem/audit-event-type",
        "rest",
    )
    assert (event.subtype[0].system, event.subtype[0].code) == (
        "http://hl7.org/fhir/restful-interaction",
        "read",
    )
    assert event.action == "R"
    types = {a.type.coding[0].code: a for a in event.agent}
    assert types["IRCP"].requestor is True
    assert types["110152"].network.address == "192.0.2.10"  # the client: Destination Role ID
    assert types["110153"].network.address == "hub"  # the server: Source Role ID


def test_a_search_is_balp_query_with_the_query_entity() -> None:
    event = AuditEvent.model_validate(
        audit_event(_record("search-messages", patient_key=None, message_id=None), server="hub")
    )
    assert event.meta.profile == [f"{BALP}Query"] and event.action == "E"
    [query] = [e for e in event.entity if e.role and e.role.code == "24"]
    assert query.description == "3 shown; one patient" and query.query
    types = {a.type.coding[0].code for a in event.agent}
    assert {"110153", "110152", "IRCP"} <= types  # client Source, server Destination


def test_logins_retention_and_the_cli() -> None:
    login = audit_event(_record("login", patient_key=None, message_id=None), server="hub")
    assert (login["type"]["code"], login["subtype"][0]["code"]) == ("110114", "110122")
    logout = audit_event(_record("session-expired"), server="hub")
    assert logout["subtype"][0]["code"] == "110123"
    prune = audit_event(_record("prune-audit", source="engine", actor="retention"), server="hub")
    AuditEvent.model_validate(prune)
    [engine_agent] = prune["agent"]
    assert engine_agent["requestor"] is True and prune["action"] == "D"
    cli = audit_event(_record("view-message", source="cli", peer=None), server="hub")
    client = next(a for a in cli["agent"] if a["who"].get("display") == "engine CLI")
    assert client["network"] == {"address": "hub", "type": "1"}
    v6 = audit_event(_record("view-message", peer="[2001:db8::1]:443"), server="hub")
    assert any(a.get("network", {}).get("address") == "2001:db8::1" for a in v6["agent"])


def test_ndjson_is_one_event_a_line() -> None:
    out = io.StringIO()
    n = write_ndjson([_record("replay"), _record("resend", seq=6)], out, server="hub")
    lines = out.getvalue().splitlines()
    assert n == 2 and [json.loads(x)["id"] for x in lines] == ["engine-audit-5", "engine-audit-6"]
    assert json.loads(lines[0])["meta"]["profile"] == [f"{BALP}PatientCreate"]
