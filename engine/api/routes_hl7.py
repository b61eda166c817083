"""``POST /hl7v2``: HL7v2 over HTTP — the same ingest as MLLP, the ACK as the response body.

The body is one ER7 message (segments ended by CR). The answer is 200 with the ACK for any
acknowledgment code (AA/AE/AR, CA/CE/CR): the HTTP status says the exchange worked, MSA-1 says what
the engine made of the message, as over MLLP. 503 with a NAK when the store refused the message
(the sender must send again); 400 when the bytes were stored but no ACK could be built (not even
an MSH); 204 when an enhanced-mode sender asked for no commit ACK (MSH-15).
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response

from engine.api.auth import IntegrationDep
from engine.api.body import media_type, read_capped
from engine.api.deps import IngestDep, MetricsDep, SettingsDep, peer_of

__all__ = ["ER7_MEDIA_TYPE", "router"]

log = logging.getLogger(__name__)

ER7_MEDIA_TYPE = "x-application/hl7-v2+er7"
_ACCEPTED = (ER7_MEDIA_TYPE, "application/hl7-v2", "text/plain")

router = APIRouter()


@router.post("/hl7v2", response_class=Response, responses={200: {"content": {ER7_MEDIA_TYPE: {}}}})
async def post_hl7v2(
    request: Request,
    principal: IntegrationDep,
    settings: SettingsDep,
    ingest: IngestDep,
    metrics: MetricsDep,
) -> Response:
    """Receive one HL7v2 message; answer with its ACK."""
    media_type(request, _ACCEPTED)
    raw = await read_capped(request, limit=settings.max_message_bytes, metrics=metrics)
    receipt = await ingest.receive(raw, channel="http", peer=peer_of(request))
    log.info(
        "hl7v2 over http",
        extra={"message_id": receipt.message_id, "state": receipt.state, "code": receipt.ack_code},
    )
    if receipt.state == "refused":
        body = receipt.ack or b"message could not be stored; send again"
        media = ER7_MEDIA_TYPE if receipt.ack else "text/plain"
        return Response(body, status_code=503, media_type=media, headers={"Retry-After": "30"})
    if receipt.ack is None:
        if receipt.state == "error":
            return Response(
                f"not readable as HL7v2; stored as message {receipt.message_id}",
                status_code=400,
                media_type="text/plain",
            )
        return Response(status_code=204)
    return Response(receipt.ack, status_code=200, media_type=ER7_MEDIA_TYPE)
