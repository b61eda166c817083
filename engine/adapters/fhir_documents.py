"""Writing a document to a FHIR R4 server as a DocumentReference (the ``fhir`` and ``epic``
destinations' kind ``document``).

The payload is a :class:`~engine.documents.model.DocumentEnvelope` of format ``fhir``: the
mapped DocumentReference (attachment with media type and size, no data); the bytes come from
:attr:`Payload.content`. One delivery:

1. **the patient**, by MRN: ``GET Patient?identifier=<system>|<mrn>``
   (https://hl7.org/fhir/R4/search.html#token). One match gives ``subject = Patient/<id>``;
   none or several make the result *unknown patient* (the delivery waits in ``needs-patient``,
   never retried blind, never dead). Matches are cached per destination (a TTL, a bounded LRU);
   misses are not, so a patient registered later is found on the resend.
2. **how the bytes go**, from the server's CapabilityStatement (``GET metadata`` once per
   destination; http.html#capabilities): Binary ``create`` listed → ``binary``: the raw bytes
   POSTed as a Binary with the document's media type as Content-Type (http.html#binary), then
   ``attachment.url = Binary/<id>``; else ``inline``: ``attachment.data``, base64. A route's
   ``document_mode: inline|binary`` overrides. A server answering 415 to raw bytes gets a FHIR
   JSON Binary (``data`` in base64) instead, then and from then on. Either way the bytes are
   streamed from the store with a Content-Length (base64-encoded chunk by chunk when JSON): no
   copy of the whole document, plain or encoded, is held. The bytes are checked against the
   stored size and SHA-256 as they go, the last chunk held back: other bytes (a disk fault)
   cut the request short, so nothing is created, and the delivery is retried.
3. **the DocumentReference**, created with ``If-None-Exist`` (http.html#ccreate) on its
   identifier ``urn:ietf:rfc:3986`` | ``urn:sha256:<content hash>`` and the subject: a
   redelivery (an answer lost, a crash after sending) finds the first and creates nothing. The
   same search runs first, so a redelivery uploads nothing (no second Binary), even to a server
   that ignores If-None-Exist.

Answers are classified as for Bundles (:func:`engine.adapters.fhir_http.classify`): 429 and 503
retry after the server's Retry-After, a 401 gets one new token (the sender does that), another
4xx is permanent naming the OperationOutcome's code. Details never hold the MRN, a name or a
byte of the document.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import quote

import httpx
import orjson

from engine.adapters.destination import DeliveryResult, Payload
from engine.adapters.fhir_http import classify
from engine.documents.model import DocumentContent, DocumentEnvelope

__all__ = [
    "Body",
    "DocumentMode",
    "DocumentWriter",
    "PatientCache",
    "Sender",
    "base64_body",
    "verified",
]

DocumentMode = Literal["auto", "inline", "binary"]
#: a request body: bytes, or a factory of a fresh stream of them (called again on a retry)
Body = bytes | Callable[[], AsyncIterator[bytes]]

_FHIR_JSON = "application/fhir+json"
_URI = "urn:ietf:rfc:3986"
_PLACEHOLDER = "@@engine-attachment-data@@"


class Sender(Protocol):
    """One authenticated request to the server (a new token and one more try after a 401)."""

    async def __call__(
        self,
        method: str,
        url: str,
        payload: Payload,
        body: Body | None,
        headers: Mapping[str, str] | None = None,
        *,
        part: str = "",
    ) -> httpx.Response: ...


class _Corrupt(Exception):
    """Private: the bytes read are not the stored ones (size or SHA-256)."""


async def verified(content: DocumentContent) -> AsyncIterator[bytes]:
    """``content``'s chunks, the last one held back until the size and SHA-256 of all of them
    are the stored ones: a store giving other bytes (a disk fault) raises :class:`_Corrupt`
    before the request's body is complete, so the server, short of its Content-Length, creates
    nothing."""
    digest = hashlib.sha256()
    size = 0
    held: bytes | None = None
    async for chunk in content.stream(digest):  # hashed in the reading thread
        size += len(chunk)
        if size > content.size:
            raise _Corrupt
        if held is not None:
            yield held
        held = chunk
    if size != content.size or digest.hexdigest() != content.sha256:
        raise _Corrupt
    if held is not None:
        yield held


class _Stop(Exception):
    def __init__(self, result: DeliveryResult) -> None:
        super().__init__(result.detail)
        self.result = result


class PatientCache:
    """``system|mrn`` → the server's Patient id, for ``ttl_s``, at most ``size`` entries."""

    def __init__(
        self, ttl_s: float = 300.0, size: int = 1024, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s, self.size, self.clock = ttl_s, size, clock
        self._items: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def get(self, key: str) -> str | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[1] <= self.clock():
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: str, patient_id: str) -> None:
        self._items[key] = (patient_id, self.clock() + self.ttl_s)
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


def base64_body(
    resource: dict[str, Any], attachment: dict[str, Any], content: DocumentContent
) -> tuple[Callable[[], AsyncIterator[bytes]], int]:
    """A streaming JSON body of ``resource`` with ``attachment.data`` the content in base64,
    and its length. ``attachment`` is a dict inside ``resource``; it is left without data."""
    attachment["data"] = _PLACEHOLDER
    raw = orjson.dumps(resource)
    del attachment["data"]
    cut = raw.index(_PLACEHOLDER.encode())
    prefix, suffix = raw[:cut], raw[cut + len(_PLACEHOLDER) :]

    async def stream() -> AsyncIterator[bytes]:
        yield prefix
        rest = b""
        async for chunk in verified(content):
            chunk = rest + chunk
            whole = len(chunk) - len(chunk) % 3
            yield base64.b64encode(chunk[:whole])
            rest = chunk[whole:]
        if rest:
            yield base64.b64encode(rest)
        yield suffix

    return stream, len(prefix) + 4 * ((content.size + 2) // 3) + len(suffix)


def _raw_body(content: DocumentContent) -> Callable[[], AsyncIterator[bytes]]:
    return lambda: verified(content)


def _created_id(resp: httpx.Response, rtype: str) -> str | None:
    """The id of a created resource: its Location (``.../Type/id[/_history/n]``), else body."""
    parts = (resp.headers.get("location") or "").split("/")
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == rtype and parts[i + 1]:
            return parts[i + 1]
    try:
        body = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        return None
    rid = body.get("id") if isinstance(body, dict) else None
    return rid if isinstance(rid, str) and rid else None


def _binary_create(capability: Any) -> bool:
    """Whether a CapabilityStatement lists ``create`` for Binary."""
    try:
        for rest in capability.get("rest") or []:
            for res in rest.get("resource") or []:
                if res.get("type") == "Binary":
                    return any(i.get("code") == "create" for i in res.get("interaction") or [])
    except AttributeError:
        return False
    return False


@dataclass
class DocumentWriter:
    """Writes document payloads to one FHIR server through ``send``."""

    send: Sender
    mrn_system: str | None = None
    mode: DocumentMode = "auto"
    patients: PatientCache | None = None
    #: the mode the server's CapabilityStatement gave (read once)
    server_mode: Literal["inline", "binary"] | None = None
    #: the server refused a raw Binary (415): Binaries go as FHIR JSON from then on
    binary_as_json: bool = False

    def __post_init__(self) -> None:
        if self.patients is None:
            self.patients = PatientCache()

    async def write(self, payload: Payload) -> DeliveryResult:
        try:
            return await self._write(payload)
        except _Stop as exc:
            return exc.result
        except _Corrupt:
            sha = payload.content.sha256[:12] if payload.content else "?"
            return DeliveryResult.retry(
                f"fhir: the document's bytes read are not the stored ones (sha256 {sha}...): "
                "sent incomplete, nothing created"
            )

    async def _write(self, payload: Payload) -> DeliveryResult:
        try:
            envelope = DocumentEnvelope.from_bytes(payload.body)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return DeliveryResult.fail("fhir: the payload is not a document envelope")
        if envelope.format != "fhir":
            return DeliveryResult.fail(
                f"fhir: a document mapped to {envelope.format!r} cannot go to a FHIR server "
                "(route it with mapping fhir)"
            )
        body = envelope.body if isinstance(envelope.body, dict) else {}
        docref = body.get("DocumentReference")
        if not isinstance(docref, dict) or docref.get("resourceType") != "DocumentReference":
            return DeliveryResult.fail("fhir: the envelope holds no DocumentReference")
        content = payload.content
        if content is None:
            return DeliveryResult.fail("fhir: the document's content is missing")
        doc = envelope.document
        patient = await self._patient(payload, docref, doc.patient_mrn)
        resource, attachment = _prepared(docref, patient, content.sha256)
        attachment.setdefault("contentType", doc.media_type)
        attachment["size"] = content.size
        condition = (
            f"identifier={quote(_URI)}|{quote('urn:sha256:' + content.sha256)}"
            f"&subject=Patient/{quote(patient)}"
        )
        # the search first: a redelivery finds the first (also on a server ignoring
        # If-None-Exist) and uploads nothing, no second Binary either
        if await self._exists(payload, condition):
            return DeliveryResult.success("fhir: DocumentReference already there")
        if await self._mode(payload) == "binary":
            binary_id = await self._binary(payload, content, str(attachment["contentType"]))
            attachment["url"] = f"Binary/{binary_id}"
            raw = orjson.dumps(resource)
            send_body: Body = raw
            length = len(raw)
        else:
            send_body, length = base64_body(resource, attachment, content)
        headers = {
            "Content-Type": _FHIR_JSON,
            "Content-Length": str(length),
            "If-None-Exist": condition,
        }
        resp = await self.send(
            "POST", "DocumentReference", payload, send_body, headers, part="document"
        )
        result = classify(resp, "DocumentReference create")
        if result.ok and resp.status_code == 200:
            return DeliveryResult.success("fhir: DocumentReference already there (200)")
        return result

    async def _patient(self, payload: Payload, docref: dict[str, Any], mrn: str) -> str:
        """The server's id of the document's patient, or :class:`_Stop` (unknown, or failed)."""
        if not mrn:
            raise _Stop(DeliveryResult.fail("fhir: the document names no patient MRN"))
        system = self.mrn_system
        if system is None:
            ident = (docref.get("subject") or {}).get("identifier") or {}
            system = ident.get("system") if isinstance(ident, dict) else None
        token = f"{system}|{mrn}" if system else mrn
        assert self.patients is not None
        cached = self.patients.get(token)
        if cached is not None:
            return cached
        resp = await self.send(
            "GET", f"Patient?identifier={quote(token, safe='|:')}", payload, None, part="patient"
        )
        result = classify(resp, "Patient search")
        if not result.ok:
            raise _Stop(result)
        try:
            bundle = orjson.loads(resp.content)
            ids = [
                str(e["resource"]["id"])
                for e in bundle.get("entry") or []
                if (e.get("resource") or {}).get("resourceType") == "Patient"
                and (e.get("search") or {}).get("mode", "match") == "match"
            ]
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise _Stop(DeliveryResult.fail("fhir: Patient search answered no searchset")) from None
        if len(ids) != 1:
            raise _Stop(DeliveryResult.unknown_patient(f"patient not found ({len(ids)} matches)"))
        self.patients.put(token, ids[0])
        return ids[0]

    async def _mode(self, payload: Payload) -> Literal["inline", "binary"]:
        if self.mode != "auto":
            return self.mode
        if self.server_mode is None:
            resp = await self.send("GET", "metadata", payload, None, part="metadata")
            if resp.status_code in (408, 429) or resp.status_code >= 500:
                raise _Stop(classify(resp, "metadata"))
            try:
                capability = orjson.loads(resp.content) if resp.status_code == 200 else {}
            except orjson.JSONDecodeError:
                capability = {}
            self.server_mode = "binary" if _binary_create(capability) else "inline"
        return self.server_mode

    async def _exists(self, payload: Payload, condition: str) -> bool:
        resp = await self.send(
            "GET", f"DocumentReference?{condition}", payload, None, part="document-search"
        )
        if resp.status_code != 200:
            result = classify(resp, "DocumentReference search")
            if result.retryable:
                raise _Stop(result)
            return False  # a server that cannot search this way: If-None-Exist still guards
        try:
            return bool(orjson.loads(resp.content).get("entry"))
        except (orjson.JSONDecodeError, AttributeError):
            return False

    async def _binary(self, payload: Payload, content: DocumentContent, media: str) -> str:
        """Create the Binary: the raw bytes with their media type (http.html#binary), or, for
        a server refusing that with 415, a FHIR JSON Binary with the data in base64."""
        resp = None
        if not self.binary_as_json:
            headers = {"Content-Type": media, "Content-Length": str(content.size)}
            resp = await self.send(
                "POST", "Binary", payload, _raw_body(content), headers, part="binary"
            )
            if resp.status_code == 415:
                self.binary_as_json = True
        if self.binary_as_json:
            binary: dict[str, Any] = {"resourceType": "Binary", "contentType": media}
            body, length = base64_body(binary, binary, content)
            headers = {"Content-Type": _FHIR_JSON, "Content-Length": str(length)}
            resp = await self.send("POST", "Binary", payload, body, headers, part="binary-json")
        assert resp is not None
        result = classify(resp, "Binary create")
        if not result.ok:
            raise _Stop(result)
        binary_id = _created_id(resp, "Binary")
        if binary_id is None:
            raise _Stop(DeliveryResult.fail("fhir: Binary create answered no id"))
        return binary_id


def _prepared(
    docref: dict[str, Any], patient: str, sha256: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A copy of the DocumentReference to create: no id, meta or data; the server's subject;
    the content-hash identifier; one attachment (the first content's)."""
    resource = orjson.loads(orjson.dumps(docref))
    for key in ("id", "meta"):
        resource.pop(key, None)
    resource["subject"] = {"reference": f"Patient/{patient}"}
    identifiers = [i for i in resource.get("identifier") or [] if i.get("system") != _URI]
    resource["identifier"] = [{"system": _URI, "value": f"urn:sha256:{sha256}"}, *identifiers]
    resource.setdefault("status", "current")
    contents = resource.get("content") or [{}]
    attachment = dict(contents[0].get("attachment") or {})
    for key in ("data", "url"):
        attachment.pop(key, None)
    resource["content"] = [{**contents[0], "attachment": attachment}]
    return resource, attachment
