"""``POST /fhir``: store a FHIR R4 Bundle or resource (JSON) for the worker to route.

Only the outer shape is checked here — a JSON object with a ``resourceType`` — so a caller learns
at once that the body is not FHIR JSON (400, naming the line and column); the resource itself is
validated later by the worker, after it is stored. 202 with the message id on success.
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

__all__ = ["router"]

log = logging.getLogger(__name__)

_ACCEPTED = ("application/fhir+json", "application/json")

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
    if not isinstance(document, dict) or not isinstance(document.get("resourceType"), str):
        metrics.record_error("receive")
        raise HTTPException(400, detail="expected a FHIR resource: a JSON object with resourceType")
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
