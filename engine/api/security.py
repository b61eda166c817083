"""``SecurityHeaders``: the headers every answer carries (API and console alike).

- ``Content-Security-Policy``: only this engine's own scripts, styles and images (no inline
  script or style, no CDN), no framing, forms posting only here (``CSP``). An answer that sets
  its own policy keeps it.
- ``X-Frame-Options: DENY`` (older browsers' frame denial), ``X-Content-Type-Options: nosniff``,
  ``Referrer-Policy: no-referrer`` (a console URL carries an MRN in its query).
- ``Cache-Control: no-store`` on the console's pages (not its static files): a shared computer's
  back button or disk cache must not show patient data after logging out. An answer that sets its
  own Cache-Control keeps it.
- ``Strict-Transport-Security`` under TLS only (RFC 6797 §7.2: never over plain HTTP), a year.

A middleware is an app wrapping an app (Starlette's model): it only adds headers to the
``http.response.start`` message.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CSP", "HSTS", "SecurityHeaders"]

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
)
HSTS = "max-age=31536000"

_ALWAYS = (
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
)


class SecurityHeaders:
    """Wraps the app: adds the security headers to every HTTP answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        console_page = path.startswith("/console") and not path.startswith("/console/static/")
        tls = scope.get("scheme") == "https"

        async def add_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("Content-Security-Policy", CSP)
                for name, value in _ALWAYS:
                    headers[name] = value
                if console_page:
                    headers.setdefault("Cache-Control", "no-store")
                if tls:
                    headers["Strict-Transport-Security"] = HSTS
            await send(message)

        await self.app(scope, receive, add_headers)
