"""``BodyLimits``: the request body of every ``/console`` and ``/api`` request is capped before any
handler, dependency or form parser reads it.

FastAPI reads a route's ``Form()`` or JSON body *before* the route's dependencies run (the login
check included), so without a cap an anonymous request could make the server read and keep an
unlimited body. Here, under ``/console`` and ``/api``, whatever the method:

- a declared ``Content-Length`` over the path's cap is answered 413 unread (the app never runs);
- a body without one (chunked) is counted as the app reads it, and reading stops with 413 at the
  first chunk past the cap;
- ``multipart/form-data`` is refused (415) on every console path but the document upload (the
  only console form that posts a file): the CSRF check never parses a multipart body.

The caps: :data:`DEFAULT_CAP` (64 KiB, the console's forms and the API's JSON bodies); the
workbench's POST its own 8 MiB (``pages_workbench.MAX_BODY``) and :data:`SLACK`; the console's
document upload none here, as ``POST /documents`` (not under ``/api``), ``/hl7v2`` and ``/fhir``:
those read their bodies through their own streaming caps (``ENGINE_MAX_DOCUMENT_BYTES`` and the
form's slack, ``ENGINE_MAX_MESSAGE_BYTES``).
"""

from __future__ import annotations

import orjson
from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.console.pages_workbench import MAX_BODY as WORKBENCH_BODY

__all__ = ["DEFAULT_CAP", "SLACK", "UPLOAD_PATH", "BodyLimits", "BodyTooLarge", "cap_for"]

#: the cap of a body under /console and /api, unless the path has its own
DEFAULT_CAP = 64 * 1024
#: past a page's own limit, room for the form's other fields (the page names its limit itself)
SLACK = 64 * 1024
#: the console's document upload: multipart, capped by the document intake as it streams
UPLOAD_PATH = "/console/documents/upload"
_OWN_CAPS = {"/console/workbench": WORKBENCH_BODY + SLACK}
_PREFIXES = ("/console", "/api")


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def cap_for(path: str) -> int | None:
    """The body cap of ``path`` in bytes; None when the path is not capped here."""
    if path == UPLOAD_PATH or not any(_under(path, p) for p in _PREFIXES):
        return None
    return _OWN_CAPS.get(path, DEFAULT_CAP)


class BodyTooLarge(HTTPException):
    """A streamed body went past its cap (raised from ``receive``, answered 413)."""

    def __init__(self, cap: int) -> None:
        super().__init__(413, detail=_too_large(cap))


def _too_large(cap: int) -> str:
    return f"request body larger than the {cap}-byte limit of this path"


async def _answer(send: Send, status: int, detail: str) -> None:
    body = orjson.dumps({"detail": detail})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def _refusal(scope: Scope, path: str, cap: int) -> tuple[int, str] | None:
    """The answer to give before reading anything, or None to go on."""
    ctype = (_header(scope, b"content-type") or "").split(";", 1)[0].strip().lower()
    if ctype == "multipart/form-data" and _under(path, "/console"):
        return 415, "multipart/form-data is taken only by the document upload"
    declared = _header(scope, b"content-length")
    if declared is not None:
        declared = declared.strip()
        if not (declared.isascii() and declared.isdigit()):
            return 400, "invalid Content-Length"
        # more digits than the cap has is over it (int() never reads thousands of digits)
        if len(declared.lstrip("0")) > len(str(cap)) or int(declared) > cap:
            return 413, _too_large(cap)
    return None


class BodyLimits:
    """Wraps the app: caps the request bodies of ``/console`` and ``/api`` (module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        cap = cap_for(path) if scope["type"] == "http" else None
        if cap is None:
            await self.app(scope, receive, send)
            return
        refused = _refusal(scope, path, cap)
        if refused is not None:
            await _answer(send, *refused)
            return
        received = 0
        over = False
        started = False

        async def counted() -> Message:
            nonlocal received, over
            if over:
                raise BodyTooLarge(cap)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap:
                    over = True
                    raise BodyTooLarge(cap)
            return message

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, watch)
        except BodyTooLarge as exc:
            # the app let the refusal through (no handler answered it): answer it here, unless
            # an answer has begun (then the connection ends with it)
            if not started:
                await _answer(send, 413, str(exc.detail))
