"""How a FHIR server's HTTP answer becomes a :class:`~engine.adapters.destination.DeliveryResult`.

Shared by the FHIR REST destination (Bundles) and the document writer (DocumentReference,
Binary): 2xx is delivered; 408, 429 and 5xx are retryable, with the server's Retry-After; any
other status is permanent. The detail names the status and the OperationOutcome's first
``issue.code`` (a FHIR code, https://hl7.org/fhir/R4/valueset-issue-type.html), never its
``diagnostics`` or ``details.text``, which may quote the data (PHI).
"""

from __future__ import annotations

import httpx
import orjson

from engine.adapters.destination import DeliveryResult
from engine.adapters.oauth2 import retry_after

__all__ = ["classify", "issue_code"]


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
