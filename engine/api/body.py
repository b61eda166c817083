"""Request bodies with a size cap and a media-type check, read before anything is stored.

The cap is ``Settings.max_message_bytes``, the same limit the MLLP listener enforces. A declared
``Content-Length`` over the cap is refused without reading; a chunked body is read only up to it.
"""

from __future__ import annotations

from collections.abc import Collection

from fastapi import HTTPException, Request

from engine.metrics import EngineMetrics

__all__ = ["media_type", "read_capped"]


def media_type(request: Request, allowed: Collection[str]) -> str:
    """The request's media type (parameters dropped) if it is one of ``allowed``; 415 otherwise."""
    value = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if value not in allowed:
        raise HTTPException(415, detail=f"content-type must be one of: {', '.join(allowed)}")
    return value


async def read_capped(request: Request, *, limit: int, metrics: EngineMetrics) -> bytes:
    """The whole body, at most ``limit`` bytes (413 beyond, 400 when empty)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        # ASCII digits only: str.isdigit() also takes "²", which int() refuses
        if not (declared.isascii() and declared.isdigit()):
            raise HTTPException(400, detail="invalid Content-Length")
        # a length of more digits than the limit has is over it, and int() is never asked to
        # read thousands of digits (it refuses past 4300)
        if len(declared.lstrip("0")) > len(str(limit)) or int(declared) > limit:
            metrics.record_error("receive")
            raise HTTPException(413, detail=f"body larger than the {limit}-byte limit")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            metrics.record_error("receive")
            raise HTTPException(413, detail=f"body larger than the {limit}-byte limit")
    if not body:
        raise HTTPException(400, detail="empty body")
    return bytes(body)
