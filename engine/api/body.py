"""Request bodies with a size cap and a media-type check, read before anything is stored.

The cap is ``Settings.max_message_bytes``, the same limit the MLLP listener enforces. A declared
``Content-Length`` over the cap is refused without reading; a chunked body is read only up to it.
The body must keep coming: all of it, or another :data:`PROGRESS_BYTES`, within
``Settings.http_body_timeout_s`` of the first read and of each such step (408 past it, and the
connection is closed). A client sending a byte now and then would otherwise hold its connection,
and up to the cap in memory, for as long as it liked; a deadline for the whole body refused a
16 MiB message over a slow link every time, however steadily it came (review of 7 December).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection

from fastapi import HTTPException, Request

from engine.api.deps import ApiContext
from engine.metrics import EngineMetrics

__all__ = ["BODY_TIMEOUT_S", "media_type", "read_capped"]

#: the body's deadline in an app built without the engine's settings (the setting's default)
BODY_TIMEOUT_S = 60.0
#: how much more of a body must arrive within each ``timeout_s``
PROGRESS_BYTES = 64 * 1024


def media_type(request: Request, allowed: Collection[str]) -> str:
    """The request's media type (parameters dropped) if it is one of ``allowed``; 415 otherwise."""
    value = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if value not in allowed:
        raise HTTPException(415, detail=f"content-type must be one of: {', '.join(allowed)}")
    return value


async def read_capped(
    request: Request, *, limit: int, metrics: EngineMetrics, timeout_s: float | None = None
) -> bytes:
    """The whole body, at most ``limit`` bytes (413 beyond, 400 when empty), coming at
    :data:`PROGRESS_BYTES` or more each ``timeout_s`` (by default the app's
    ``http_body_timeout_s``; 408 past it)."""
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
    timeout_s = _body_timeout(request) if timeout_s is None else timeout_s
    body = bytearray()
    loop = asyncio.get_running_loop()
    stepped = 0  # the body's length at the last step
    try:
        async with asyncio.timeout(timeout_s) as deadline:
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    metrics.record_error("receive")
                    raise HTTPException(413, detail=f"body larger than the {limit}-byte limit")
                if len(body) - stepped >= PROGRESS_BYTES:
                    stepped = len(body)
                    deadline.reschedule(loop.time() + timeout_s)
    except TimeoutError:
        metrics.record_error("receive")
        # closed after the answer: the rest of the body may still be on its way
        raise HTTPException(
            408,
            detail=(
                f"body stopped coming: not {PROGRESS_BYTES // 1024} KiB more within "
                f"{timeout_s:g} s ({len(body)} bytes came)"
            ),
            headers={"Connection": "close"},
        ) from None
    if not body:
        raise HTTPException(400, detail="empty body")
    return bytes(body)


def _body_timeout(request: Request) -> float:
    context = getattr(request.app.state, "context", None)
    if isinstance(context, ApiContext):
        return context.settings.http_body_timeout_s
    return BODY_TIMEOUT_S
