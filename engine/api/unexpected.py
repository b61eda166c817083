"""``UnexpectedErrors``: the last word on an error no handler expected — a 500, one log line.

Starlette's own last resort answers ``Internal Server Error`` and re-raises, and uvicorn then logs
the traceback through its own handler (plain text, outside ``engine.logs``), where an exception's
text can quote a message's data. This ASGI middleware sits inside that one and catches first: the
caller gets ``{"detail": "internal error"}`` with status 500, and the log gets one ERROR line
naming the exception's class, the method and the path — never its text or its traceback.
"""

from __future__ import annotations

import logging

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["UnexpectedErrors"]

log = logging.getLogger(__name__)

_PATH_CHARS = 200  # enough to name any route of the API; a longer path is cut, not logged whole


def _printable(path: str) -> str:
    """The path as one log-safe line: control characters (a decoded ``%0A``) become ``?``."""
    return "".join(c if c.isprintable() else "?" for c in path[:_PATH_CHARS])


class UnexpectedErrors:
    """Wraps the app: an exception that escapes a handler becomes a generic 500 and a log line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:  # the point of this class: nothing escapes as a traceback
            log.error(
                "unexpected error in a request",
                extra={
                    "error": type(exc).__name__,
                    "method": scope.get("method", ""),
                    "path": _printable(scope.get("path", "")),
                },
            )
            if started:  # the status line is out; the server closes the cut response
                return
            response = JSONResponse({"detail": "internal error"}, status_code=500)
            await response(scope, receive, send)
