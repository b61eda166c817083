"""``POST /fhir``: store a FHIR R4 Bundle or resource (JSON) for the worker to route.

Only the outer shape is checked here, so a caller learns at once that the body is not FHIR: a
body that is not a JSON object with a ``resourceType`` naming a FHIR resource type (``Patient``,
``Bundle``; not ``HumanName``, not ``patient``), or a Bundle one of whose ``entry[].resource`` is
not (checked the same way, in Bundles inside it too), is a 400. Every error of this endpoint is an
OperationOutcome (FHIR R4 §3.1.0.5) with one issue of severity ``error``: code ``structure`` for
JSON that does not parse (the diagnostics naming the line and column, never the body's text),
``invalid`` or ``not-supported`` for a resourceType (the diagnostics naming the value, cut to 64
characters, and for an entry its place: ``Bundle.entry[3].resource.resourceType``, also the
issue's ``expression``), ``not-supported`` for a media type (415), ``too-long`` past the size
limit (413), ``transient`` when the store refuses it (503, send again), ``processing`` when it is
stored but not accepted (422, the diagnostics naming the message id). None of the 4xx but the 422
is stored; the JSON and resourceType errors are counted as receive errors, as is an oversize
body. The resource itself is validated later by the worker, after it is stored. 202 with the
message id on success.

The resource types are those of fhir.resources' R4B models (:mod:`engine.mappings.fhir_model`),
the ones the worker validates with. The check visits each JSON value of the body at most once;
the body is at most ``max_message_bytes``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from typing import Any

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
#: the OperationOutcome issue code (FHIR R4 issue-type) of the body checks' HTTP errors
_HTTP_CODES = {408: "timeout", 413: "too-long", 415: "not-supported"}

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
    try:
        media_type(request, _ACCEPTED)
        body = await read_capped(request, limit=settings.max_message_bytes, metrics=metrics)
    except HTTPException as exc:  # counted (or not) by read_capped, as for any endpoint
        code = _HTTP_CODES.get(exc.status_code, "invalid")
        return _outcome(exc.status_code, code, str(exc.detail), headers=exc.headers)
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:  # position and kind only: never the body's text
        metrics.record_error("receive")
        where = f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        return _outcome(400, "structure", where)
    problem = _problem(document)
    if problem is not None:
        metrics.record_error("receive")
        return _outcome(400, *problem)
    receipt = await ingest.receive_fhir(body, peer=peer_of(request))
    log.info("fhir over http", extra={"message_id": receipt.message_id, "state": receipt.state})
    if receipt.state == "refused" or receipt.message_id is None:
        diagnostics = "resource could not be stored; send again"
        return _outcome(503, "transient", diagnostics, headers={"Retry-After": "30"})
    if receipt.state == "error":
        diagnostics = f"resource stored as message {receipt.message_id} but not accepted"
        return _outcome(422, "processing", diagnostics)
    return Accepted(message_id=receipt.message_id)


def _problem(document: object) -> tuple[str, str, str | None] | None:
    """(issue code, diagnostics, expression) for the first resource of the document, itself or
    an entry of a Bundle in it, that is not a FHIR resource; None when all are."""
    known: set[str] = set()  # the types seen valid: at most the ~150 of R4
    problem = _not_a_resource(document, known)
    if problem is not None:
        return problem[0], problem[1], None
    bundles: deque[tuple[Any, str]] = deque([(document, "Bundle")])
    while bundles:
        bundle, at = bundles.popleft()
        if bundle.get("resourceType") != "Bundle" or not isinstance(bundle.get("entry"), list):
            continue  # the shape of a Bundle is the worker's validation to check
        for i, entry in enumerate(bundle["entry"]):
            if not isinstance(entry, dict) or "resource" not in entry:
                continue  # an entry without a resource (a DELETE request) is valid
            here = f"{at}.entry[{i}].resource"
            problem = _not_a_resource(entry["resource"], known)
            if problem is not None:
                code, diagnostics, of_type = problem
                expression = f"{here}.resourceType" if of_type else here
                return code, f"{expression}: {diagnostics}", expression
            bundles.append((entry["resource"], here))
    return None


def _not_a_resource(document: object, known: set[str]) -> tuple[str, str, bool] | None:
    """(OperationOutcome issue code, diagnostics, whether it is the resourceType's value) when
    the document is not a FHIR resource; ``known`` holds the types found valid so far."""
    if not isinstance(document, dict) or "resourceType" not in document:
        return "invalid", "expected a FHIR resource: a JSON object with no resourceType", False
    rtype = document["resourceType"]
    if not isinstance(rtype, str):
        shown = _cut(orjson.dumps(rtype).decode())
        return "invalid", f"expected a FHIR resource: resourceType {shown} is not a string", True
    if rtype not in known:
        if not is_resource_type(rtype):
            shown = _cut(rtype)
            return "not-supported", f"resourceType {shown!r} is not a FHIR R4 resource type", True
        known.add(rtype)
    return None


def _cut(text: str) -> str:
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


def _outcome(
    status_code: int,
    code: str,
    diagnostics: str,
    expression: str | None = None,
    *,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """An OperationOutcome with one error issue (FHIR R4 OperationOutcome, issue-type codes)."""
    issue: dict[str, Any] = {"severity": "error", "code": code, "diagnostics": diagnostics}
    if expression is not None:
        issue["expression"] = [expression]
    body = {"resourceType": "OperationOutcome", "issue": [issue]}
    return JSONResponse(
        body, status_code=status_code, headers=headers, media_type="application/fhir+json"
    )
