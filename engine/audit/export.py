"""The audit trail as FHIR R4 AuditEvent resources, one JSON object a line (NDJSON), shaped as
IHE Basic Audit Log Patterns (BALP, https://profiles.ihe.net/ITI/BALP/, profiles read from
the IG's FSH sources, github.com/IHE/ITI.BasicAudit, input/fsh/*.fsh) describe:

==============================  ============================================================
what the engine recorded        AuditEvent (type / subtype / action; BALP profile when ok)
==============================  ============================================================
a view of one message or        ``audit-event-type#rest`` / ``restful-interaction#read`` / R;
document (view-payload,         client ``DCM#110152`` Destination Role ID, server ``#110153``
view-message, view-document)    Source Role ID (data flows server → client); PatientRead or Read
a list or search (search-       ``rest`` / ``search`` / E; client ``#110153`` Source, server
messages, list-documents,       ``#110152`` Destination; an entity of role ``object-role#24``
view-worklist, view-report)     Query; PatientQuery or Query
replay, resend, reprocess,      ``rest`` / ``create`` / C; client Source, server Destination;
upload-document                 user agent ``v3-ParticipationType#AUT``; PatientCreate or Create
match-document, mark-handled    ``rest`` / ``update`` / U; PatientUpdate or Update
recheck-eligibility, workbench  ``rest`` / ``operation`` / E
login, login-failed             ``DCM#110114`` User Authentication / ``DCM#110122`` Login / E
logout, session-expired         ``DCM#110114`` / ``DCM#110123`` Logout / E
user-add, -change, -disable     ``DCM#110113`` Security Alert / ``DCM#110137`` User Security
                                Attributes Changed / C or U
reload                          ``DCM#110113`` / ``DCM#110131`` Software Configuration / E
audit-key                       ``DCM#110113`` / ``DCM#110129`` Security Configuration / E
view-audit, export-audit,       ``DCM#110101`` Audit Log Used / R, E, D
prune-audit
alert                           ``DCM#110100`` Application Activity / E
==============================  ============================================================

Every event: ``recorded`` (the record's time), ``outcome`` ``0`` success, ``4`` minor failure
(refused), ``8`` serious failure (error) with ``outcomeDesc``; agents: the user (type ``IRCP``
information recipient for reads and searches, ``requestor`` true, no network: users are not
network devices), the client (its address: the caller's IP, or this machine for the CLI) and
the server (this engine); ``source.observer`` the engine, source type
``security-source-type#4`` Application Server; entities: the patient (``audit-entity-type#1``
Person, ``object-role#1`` Patient, the patient key as an identifier), the message
(``#2`` System Object, ``object-role#4`` Domain Resource) and the chain record itself (its seq
and hashes, the hash's algorithm, ``HMAC-SHA256`` or, for a record of before the audit key,
``SHA-256``, and the key id of a keyed one; ``object-role#13`` Security Resource), so an export
can be checked against the store (by whoever holds the key, for keyed records). The BALP
profiles fix ``outcome`` to success: a refused or failed event claims no profile.

Incomplete: the BALP ``X-Request-Id`` transaction entity (the engine keeps no request id), and
agents as Device/Practitioner resources (identifiers only).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TextIO

from engine.audit.chain import ChainRecord, algorithm

__all__ = ["BALP", "audit_event", "write_ndjson"]

BALP = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit."
DCM = "http://dicom.nema.org/resources/ontology/DCM"
EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
REST = "http://hl7.org/fhir/restful-interaction"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
#: identifier systems of the engine's own things
USER_SYSTEM = "urn:engine:user"
MESSAGE_SYSTEM = "urn:engine:message"
AUDIT_SYSTEM = "urn:engine:audit"
PATIENT_SYSTEM_BASE = "urn:engine:identifier:"

OUTCOME = {"ok": "0", "refused": "4", "error": "8"}


def _coding(system: str, code: str, display: str) -> dict[str, str]:
    return {"system": system, "code": code, "display": display}


_REST_TYPE = _coding(EVENT_TYPE, "rest", "Restful Operation")
_AUTH_TYPE = _coding(DCM, "110114", "User Authentication")
_ALERT_TYPE = _coding(DCM, "110113", "Security Alert")
_AUDIT_USED = _coding(DCM, "110101", "Audit Log Used")
_APP_ACTIVITY = _coding(DCM, "110100", "Application Activity")


@dataclass(frozen=True)
class _Shape:
    """How one action is told as an AuditEvent."""

    type: dict[str, str]
    subtype: dict[str, str] | None
    action: str  # C R U D E
    #: the BALP pattern: read, query, create, update (client/server roles, profile), or None
    pattern: str | None = None


def _rest(code: str, action: str, pattern: str | None) -> _Shape:
    return _Shape(_REST_TYPE, _coding(REST, code, code), action, pattern)


_LOGIN = _coding(DCM, "110122", "Login")
_LOGOUT = _coding(DCM, "110123", "Logout")
_USER_ATTRS = _coding(DCM, "110137", "User Security Attributes Changed")

SHAPES: dict[str, _Shape] = {
    "view-payload": _rest("read", "R", "read"),
    "view-message": _rest("read", "R", "read"),
    "view-document": _rest("read", "R", "read"),
    "search-messages": _rest("search", "E", "query"),
    "list-documents": _rest("search", "E", "query"),
    "view-worklist": _rest("search", "E", "query"),
    "view-report": _rest("search", "E", "query"),
    "replay": _rest("create", "C", "create"),
    "reprocess": _rest("create", "C", "create"),
    "resend": _rest("create", "C", "create"),
    "upload-document": _rest("create", "C", "create"),
    "match-document": _rest("update", "U", "update"),
    "mark-handled": _rest("update", "U", "update"),
    "recheck-eligibility": _rest("operation", "E", None),
    "workbench": _rest("operation", "E", None),
    "login": _Shape(_AUTH_TYPE, _LOGIN, "E"),
    "login-failed": _Shape(_AUTH_TYPE, _LOGIN, "E"),
    "logout": _Shape(_AUTH_TYPE, _LOGOUT, "E"),
    "session-expired": _Shape(_AUTH_TYPE, _LOGOUT, "E"),
    "user-add": _Shape(_ALERT_TYPE, _USER_ATTRS, "C"),
    "user-change": _Shape(_ALERT_TYPE, _USER_ATTRS, "U"),
    "user-disable": _Shape(_ALERT_TYPE, _USER_ATTRS, "U"),
    "reload": _Shape(_ALERT_TYPE, _coding(DCM, "110131", "Software Configuration"), "E"),
    "audit-key": _Shape(_ALERT_TYPE, _coding(DCM, "110129", "Security Configuration"), "E"),
    "view-audit": _Shape(_AUDIT_USED, None, "R"),
    "export-audit": _Shape(_AUDIT_USED, None, "E"),
    "prune-audit": _Shape(_AUDIT_USED, None, "D"),
    "alert": _Shape(_APP_ACTIVITY, None, "E"),
}
_FALLBACK = _Shape(_APP_ACTIVITY, None, "E")

#: the client's and the server's agent types per pattern (BALP: for a read the data flows from
#: the server, the Source Role, to the client; for a query, create or update the other way)
_DESTINATION = _coding(DCM, "110152", "Destination Role ID")
_SOURCE_ROLE = _coding(DCM, "110153", "Source Role ID")
_APPLICATION = _coding(DCM, "110150", "Application")
_PROFILES = {"read": "Read", "query": "Query", "create": "Create", "update": "Update"}


def _concept(coding: dict[str, str]) -> dict[str, Any]:
    return {"coding": [coding]}


def _host(peer: str | None) -> str | None:
    """The address part of ``host:port`` (``[::1]:80`` → ``::1``)."""
    if not peer:
        return None
    if peer.startswith("["):
        return peer[1:].partition("]")[0] or None
    host, sep, port = peer.rpartition(":")
    if sep and port.isdigit() and host.count(":") == 0:
        return host or None
    return peer


def _agents(r: ChainRecord, shape: _Shape, server: str) -> list[dict[str, Any]]:
    client_type, server_type = _APPLICATION, _APPLICATION
    if shape.pattern == "read":
        client_type, server_type = _DESTINATION, _SOURCE_ROLE
    elif shape.pattern is not None:
        client_type, server_type = _SOURCE_ROLE, _DESTINATION
    address = _host(r.peer)
    client_network = (
        {"address": address, "type": "2"} if address else {"address": server, "type": "1"}
    )
    client_name = {"cli": "engine CLI", "api": "API client", "console": "console browser"}.get(
        r.source, "engine"
    )
    by_engine = r.source == "engine"
    agents: list[dict[str, Any]] = []
    if not by_engine:
        user_type = (
            _coding(PARTICIPATION, "AUT", "author (originator)")
            if shape.pattern in ("create", "update")
            else _coding(PARTICIPATION, "IRCP", "information recipient")
        )
        agents.append(
            {
                "type": _concept(user_type),
                "who": {"identifier": {"system": USER_SYSTEM, "value": r.actor}},
                "name": r.actor,
                "requestor": True,
            }
        )
        agents.append(
            {
                "type": _concept(client_type),
                "who": {"display": client_name},
                "requestor": False,
                "network": client_network,
            }
        )
    agents.append(
        {
            "type": _concept(server_type),
            "who": {"identifier": {"system": "urn:ietf:rfc:1035", "value": server}},
            "name": f"engine ({r.actor})" if by_engine else "engine",
            "requestor": by_engine,
            "network": {"address": server, "type": "1"},
        }
    )
    return agents


def _patient(key: str) -> dict[str, Any]:
    """The patient key (``AUTHORITY|MRN``) as the identifier the engine's mappings write."""
    authority, sep, mrn = key.rpartition("|")
    identifier = (
        {"system": f"{PATIENT_SYSTEM_BASE}{authority}", "value": mrn}
        if sep and authority and mrn
        else {"value": key}
    )
    return {
        "what": {"identifier": identifier, "type": "Patient"},
        "type": _coding(ENTITY_TYPE, "1", "Person"),
        "role": _coding(OBJECT_ROLE, "1", "Patient"),
    }


def _entities(r: ChainRecord, shape: _Shape) -> list[dict[str, Any]]:
    entities: list[dict[str, Any]] = []
    if r.patient_key:
        entities.append(_patient(r.patient_key))
    if r.message_id is not None:
        entities.append(
            {
                "what": {"identifier": {"system": MESSAGE_SYSTEM, "value": str(r.message_id)}},
                "type": _coding(ENTITY_TYPE, "2", "System Object"),
                "role": _coding(OBJECT_ROLE, "4", "Domain Resource"),
            }
        )
    if shape.pattern == "query":
        what = r.detail or r.action
        entities.append(
            {
                "type": _coding(ENTITY_TYPE, "2", "System Object"),
                "role": _coding(OBJECT_ROLE, "24", "Query"),
                "description": what,
                "query": base64.b64encode(what.encode()).decode("ascii"),
            }
        )
    record: dict[str, Any] = {
        "what": {"identifier": {"system": AUDIT_SYSTEM, "value": str(r.seq)}},
        "type": _coding(ENTITY_TYPE, "2", "System Object"),
        "role": _coding(OBJECT_ROLE, "13", "Security Resource"),
        "name": r.action,
        "detail": [
            {"type": "seq", "valueString": str(r.seq)},
            {"type": "prev_hash", "valueString": r.prev_hash},
            {"type": "hash", "valueString": r.hash},
            {"type": "algorithm", "valueString": algorithm(r.key_id)},
            {"type": "source", "valueString": r.source},
        ],
    }
    if r.key_id:
        record["detail"].append({"type": "key_id", "valueString": r.key_id})
    if r.detail:
        record["detail"].append({"type": "detail", "valueString": r.detail})
    entities.append(record)
    return entities


def audit_event(r: ChainRecord, *, server: str) -> dict[str, Any]:
    """One record as a FHIR R4 AuditEvent (JSON); ``server`` names this engine's host."""
    shape = SHAPES.get(r.action, _FALLBACK)
    event: dict[str, Any] = {"resourceType": "AuditEvent", "id": f"engine-audit-{r.seq}"}
    if shape.pattern is not None and r.outcome == "ok":
        name = ("Patient" if r.patient_key else "") + _PROFILES[shape.pattern]
        event["meta"] = {"profile": [f"{BALP}{name}"]}
    event["type"] = shape.type
    if shape.subtype is not None:
        event["subtype"] = [shape.subtype]
    event["action"] = shape.action
    event["recorded"] = r.at.isoformat()
    event["outcome"] = OUTCOME.get(r.outcome, "8")
    if r.outcome != "ok" and r.detail:
        event["outcomeDesc"] = r.detail
    event["agent"] = _agents(r, shape, server)
    event["source"] = {
        "site": server,
        "observer": {"identifier": {"system": "urn:ietf:rfc:1035", "value": server}},
        "type": [_coding(SOURCE_TYPE, "4", "Application Server")],
    }
    event["entity"] = _entities(r, shape)
    return event


def write_ndjson(records: Iterable[ChainRecord], out: TextIO, *, server: str) -> int:
    """Write each record as one AuditEvent line; how many were written."""
    n = 0
    for r in records:
        out.write(json.dumps(audit_event(r, server=server), ensure_ascii=False))
        out.write("\n")
        n += 1
    return n
