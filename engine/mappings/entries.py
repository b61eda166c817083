"""A mapped resource's identity and its transaction entry (FHIR R4 §3.1.0.11, http.html#trules).

* ``fullUrl``: ``urn:uuid:`` + a name-based UUID (RFC 4122 §4.3) of the resource type and its
  business identity (MRN, visit number, member ID ...), so the same patient has the same
  fullUrl in every message and the engine's resource index keeps one row for it;
* ``request``: a conditional update on the business identifier
  (``PUT Patient?identifier=system|value``) when there is one, else a PUT of the derived id
  (``PUT RelatedPerson/<uuid>``), idempotent too.

An identifier may be unique only within other resources: a member ID names a Coverage only at its
payer and for its beneficiary (a dependent is often sent with the subscriber's member ID). A plan's
``identity_within`` (docs/MAPPINGS.md) names those references: their fullUrls (those with a
business identity of their own) join the identity (:func:`scoped_key`), and each joins the
conditional URL as a search parameter
(``PUT Coverage?identifier=M123&beneficiary=urn:uuid:..&payor=urn:uuid:..``), the placeholder a
transaction's server resolves to the entry it names; the ``conditional`` FHIR destination
(engine/adapters/fhir_rest.py) rewrites it to the id the server gave that entry.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Sequence
from functools import lru_cache
from typing import Any
from urllib.parse import quote

__all__ = ["full_url", "scoped_key", "transaction_entry"]

_NS = uuid.UUID("6f1c0e52-2f43-4b8e-9a57-3c1e2a3f5b10")
_NS_BYTES = _NS.bytes

_SAFE_TOKEN = re.compile(r"^[A-Za-z0-9|:/._~-]*$")


@lru_cache(maxsize=4096)
def _uuid5(name: str) -> str:
    """``str(uuid.uuid5(_NS, name))`` (RFC 4122 §4.3); few cached: most names come once."""
    h = bytearray(hashlib.sha1(_NS_BYTES + name.encode("utf-8")).digest()[:16])
    h[6] = (h[6] & 0x0F) | 0x50
    h[8] = (h[8] & 0x3F) | 0x80
    x = h.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def full_url(resource_type: str, key: str) -> str:
    """The fullUrl of the ``resource_type`` whose identity is ``key``."""
    return "urn:uuid:" + _uuid5(f"{resource_type}|{key}")


def scoped_key(key: str, scope: Sequence[tuple[str, str]]) -> str:
    """An identifier's key within the resources it is unique in: (search parameter, fullUrl) in
    the plan's order; one without a reference (no payer made) counts as empty."""
    return key + "".join(f"|{param}={url}" for param, url in scope)


def transaction_entry(
    url: str,
    res: dict[str, Any],
    ident: dict[str, Any] | None,
    scope: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """A transaction entry: conditional update on the business identifier (and the references
    it is unique within, those that are there), else PUT by the id of the fullUrl."""
    rtype = res["resourceType"]
    if ident is not None:
        token = (f"{ident['system']}|" if ident.get("system") else "") + ident["value"]
        if not _SAFE_TOKEN.match(token):
            token = quote(token, safe="|:/")
        query = f"identifier={token}" + "".join(
            f"&{param}={quote(ref, safe=':/')}" for param, ref in scope if ref
        )
        request = {"method": "PUT", "url": f"{rtype}?{query}"}
    else:
        rid = url[9:]  # after "urn:uuid:"
        res = {
            "resourceType": rtype,
            "id": rid,
            **{k: v for k, v in res.items() if k != "resourceType"},
        }
        request = {"method": "PUT", "url": f"{rtype}/{rid}"}
    return {"fullUrl": url, "resource": res, "request": request}
