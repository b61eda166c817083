"""An HTTP answer cut off halfway through its body: the stub servers' "connection dropped
mid-response" failure (the fault campaign's ``dest-drop``, chaos/scenarios.py)."""

from __future__ import annotations

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

__all__ = ["CutResponse"]


class CutResponse(Response):
    """The head announces the whole body; half of it is sent and the app returns without
    finishing, so the server closes the connection and the client sees the answer cut short
    (httpx: ``RemoteProtocolError``), after the server did what was asked."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": self.status_code,
                "headers": [
                    (b"content-type", (self.media_type or "application/json").encode()),
                    (b"content-length", str(len(self.body)).encode()),
                ],
            }
        )
        half = bytes(self.body[: len(self.body) // 2])
        await send({"type": "http.response.body", "body": half, "more_body": True})
