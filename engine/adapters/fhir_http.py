"""What the FHIR adapters share over HTTP: how a FHIR server's HTTP answer becomes a
:class:`~engine.adapters.destination.DeliveryResult`.

Shared by the FHIR REST destination (Bundles) and the document writer (DocumentReference,
Binary): 2xx is delivered; 408, 429 and 5xx are retryable, with the server's Retry-After; any
other status is permanent. The detail names the status and the OperationOutcome's first
``issue.code`` (a FHIR code, https://hl7.org/fhir/R4/valueset-issue-type.html), never its
``diagnostics`` or ``details.text``, which may quote the data (PHI). Also the one way the
FHIR destination, the FHIR pull source and Epic read a ``base_url`` and open their client.
"""

from __future__ import annotations

import ssl
import urllib.request
from typing import Annotated

import httpx
import orjson
import truststore
from pydantic import AfterValidator

from engine.adapters.destination import DeliveryResult
from engine.adapters.http_pool import LeanTransport
from engine.adapters.oauth2 import retry_after

__all__ = ["FHIR_JSON", "BaseUrl", "classify", "fhir_client", "issue_code", "lean_transport"]

FHIR_JSON = "application/fhir+json"


def _base_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"base_url {value!r} must start with http:// or https://")
    return value.rstrip("/")


#: a FHIR server's base URL in a route file: http(s) only, kept without its trailing slash
BaseUrl = Annotated[str, AfterValidator(_base_url)]


def tls_verify(verify: ssl.SSLContext | bool) -> ssl.SSLContext | bool:
    """What an outside server's certificate is checked against: ``True`` (a route's
    ``verify_tls``, the default) means the operating system's trust store (truststore: the CAs
    the practice's IT manages, a private one included), not the CA bundle shipped with httpx;
    a context of the route's own (a private CA file, a client certificate) stays as it is;
    ``False`` checks nothing (a route that says so, for a test server)."""
    if verify is True:
        return truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    return verify


def _context(checked: ssl.SSLContext | bool) -> ssl.SSLContext:
    """What :func:`tls_verify` chose, as a context (``False``: one that checks nothing)."""
    if isinstance(checked, ssl.SSLContext):
        return checked
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _environment_proxy() -> bool:
    """Whether the environment names an HTTP proxy (httpx honours it only with its own
    transport, so a client behind one keeps httpcore)."""
    found = urllib.request.getproxies()
    return any(found.get(scheme) for scheme in ("http", "https", "all"))


def lean_transport(verify: ssl.SSLContext | bool) -> LeanTransport | None:
    """The engine's connection pool (engine/adapters/http_pool.py) checking certificates as
    :func:`tls_verify` says; None when the environment names a proxy (httpcore's then)."""
    if _environment_proxy():
        return None
    return LeanTransport(ssl_context=_context(tls_verify(verify)))


def fhir_client(
    *,
    timeout_s: float,
    verify: ssl.SSLContext | bool,
    transport: httpx.AsyncBaseTransport | None,
    base_url: str = "",
) -> httpx.AsyncClient:
    """The HTTP client of one FHIR adapter: FHIR JSON accepted, the engine named, TLS checked
    against the system trust store (:func:`tls_verify`). ``transport`` None: httpcore's; the
    FHIR destination passes :func:`lean_transport`'s pool."""
    verify = tls_verify(verify)
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=timeout_s,
        verify=verify,
        transport=transport,
        headers={"Accept": FHIR_JSON, "User-Agent": "hl7-engine"},
    )


def issue_code(resp: httpx.Response) -> str:
    """The first OperationOutcome ``issue.code`` (a FHIR code, PHI-free), or ``""``."""
    if "json" not in resp.headers.get("content-type", ""):
        return ""
    try:
        body = orjson.loads(resp.content)
        code = body["issue"][0]["code"] if body.get("resourceType") == "OperationOutcome" else ""
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
        return ""
    return code if isinstance(code, str) and code.isascii() and len(code) < 40 else ""


def classify(resp: httpx.Response, what: str) -> DeliveryResult:
    """The result of one answer to ``what`` (``transaction``, ``DocumentReference create``)."""
    status = resp.status_code
    detail = f"fhir: {what} -> {status}"
    if 200 <= status < 300:
        return DeliveryResult.success(detail)
    issue = issue_code(resp)
    if issue:
        detail += f" (OperationOutcome: {issue})"
    if status in (408, 429) or status >= 500:
        return DeliveryResult.retry(detail, after_s=retry_after(resp))
    return DeliveryResult.fail(detail)
