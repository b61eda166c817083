"""``POST /fhir``: store a FHIR R4 Bundle or resource (JSON) for the worker to route.

Only the outer shape is checked here, so a caller learns at once that the body is not FHIR: JSON
that does not parse is a 400 naming the line and column; a body that is not a JSON object with a
``resourceType`` naming a FHIR resource type (``Patient``, ``Bundle``; not ``HumanName``, not
``patient``) is a 400 with an OperationOutcome (FHIR R4 §3.1.0.5: issue severity ``error``, code
``invalid`` or ``not-supported``, the diagnostics naming the value, cut to 64 characters). None of
these is stored: they are refused before the store, counted as receive errors. The resource itself
is validated later by the worker, after it is stored. 202 with the message id on success.

The resource types are those of fhir.resources' R4B models (:mod:`engine.mappings.fhir_model`),
the ones the worker validates with.
"""

from __future__ import annotations

import logging

import orjson
from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import JSONResponse

from engine.api.auth import IntegrationDep
from engine.api.body import media_type, read_capped
from engine.api.deps import IngestDep, MetricsDep, SettingsDep, peer_of
from engine.api.schemas import Accepted
from engine.mappings.fhir_model import is_resource_type

__all__ = ["router"]

log = logging.getLogger(__name__)

_ACCEPTED = ("application/fhir+json", "application/json")
#: the most of a refused resourceType shown back in the OperationOutcome
_SHOWN = 64

router = APIRouter()


@router.post("/fhir", status_code=status.HTTP_202_ACCEPTED, response_model=Accepted)
async def post_fhir(
    request: Request,
    principal: IntegrationDep,
    settings: SettingsDep,
    ingest: IngestDep,
    metrics: MetricsDep,
) -> Accepted | JSONResponse:
    """Store one FHIR Bundle or resource."""
    media_type(request, _ACCEPTED)
    body = await read_capped(request, limit=settings.max_message_bytes, metrics=metrics)
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:  # position and kind only: never the body's text
        metrics.record_error("receive")
        raise HTTPException(
            400, detail=f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    problem = _not_a_resource(document)
    if problem is not None:
        metrics.record_error("receive")
        return _outcome(400, *problem)
    receipt = await ingest.receive_fhir(body, peer=peer_of(request))
    log.info("fhir over http", extra={"message_id": receipt.message_id, "state": receipt.state})
    if receipt.state == "refused" or receipt.message_id is None:
        return JSONResponse(
            {"detail": "resource could not be stored; send again"},
            status_code=503,
            headers={"Retry-After": "30"},
        )
    if receipt.state == "error":
        return JSONResponse(
            {"detail": "resource stored but not accepted", "message_id": receipt.message_id},
            status_code=422,
        )
    return Accepted(message_id=receipt.message_id)


def _not_a_resource(document: object) -> tuple[str, str] | None:
    """(OperationOutcome issue code, diagnostics) when the document is not a FHIR resource."""
    if not isinstance(document, dict) or "resourceType" not in document:
        return "invalid", "expected a FHIR resource: a JSON object with no resourceType"
    rtype = document["resourceType"]
    if not isinstance(rtype, str):
        shown = _cut(orjson.dumps(rtype).decode())
        return "invalid", f"expected a FHIR resource: resourceType {shown} is not a string"
    if not is_resource_type(rtype):
        return "not-supported", f"resourceType {_cut(rtype)!r} is not a FHIR R4 resource type"
    return None


def _cut(text: str) -> str:
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


def _outcome(status_code: int, code: str, diagnostics: str) -> JSONResponse:
    """An OperationOutcome with one error issue (FHIR R4 OperationOutcome, issue-type codes)."""
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
    }
    return JSONResponse(body, status_code=status_code, media_type="application/fhir+json")
