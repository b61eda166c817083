"""An asyncio MLLP sender: the HL7v2 destination (HL7 v2.5.1 appendix C; chapter 2, section 2.9).

One connection per destination, kept open between messages and opened again after any error.
Each message is framed (:mod:`engine.adapters.mllp.framing`), sent, and answered by one ACK before
the next goes out (MLLP is a request/response exchange: appendix C.4.3). The ACK is parsed with our
codec and judged by :func:`judge_ack`.

How an ACK is judged (MSA-1 from table 0008, the error code from table 0357)::

    MSA-2 is not the MSH-10 sent     permanent  "ACK for another message"; the connection is out
                                                of step, so it is closed too
    AA, CA                           delivered  accepted
    any code with error 206 or 207   retryable  record locked, internal error: the receiver's
                                                trouble, not the message's
    AR, CR with another error code   permanent  the receiver refuses the message itself: its type,
                                                event, processing id or version (2.9.2, 2.9.3:
                                                200-203), or it cannot read it (1xx)
    AR, CR without an error code     retryable  table 0008: rejected "for a reason unrelated to
                                                content or format" (receiver down, its store
                                                failed); the sender decides whether to resend
    AE without a retryable code      permanent  the receiver processed the message and found an
                                                error in its content: the same bytes would get the
                                                same answer; a person must fix the message
    CE without an error code         retryable  commit error: the receiver did not take custody
                                                of the message (2.9.3.1)

The error code is read from ERR-3.1 (v2.5 and later), else ERR-1.4.1 (the ELD of earlier
versions), else MSA-6.1 (before v2.5). Connection refused or reset, a connect or ACK timeout and
an unreadable ACK are retryable. A reused connection that turns out closed by the peer (an idle
timeout on its side) is reopened and the message sent again at once, not counted as an attempt.

``detail`` holds the ACK code and the 0357 code, never MSA-3 or ERR text (they may quote data).

TLS (``tls:`` in the route file): ``tls: true`` trusts the system's CAs; a mapping takes
``ca_file`` (a PEM CA bundle to trust instead), ``cert_file`` and ``key_file`` (a client
certificate, for a receiver that wants mutual TLS), ``server_name`` (the name the receiver's
certificate must carry, and the SNI sent; default ``host``) and ``verify`` (false skips checking
the receiver's certificate: tests only). A relative file is the engine home's; the files are
loaded when the route file is, so a missing or unreadable file, or a certificate without its
key, stops start-up naming the route file, the line and the destination. A handshake that
fails (a receiver whose certificate the CA bundle does not trust, one that refuses our
certificate) is retryable:
``detail`` says what TLS reported (``certificate verify failed (self-signed certificate)``).

A document (payload kind ``document``) goes as the MDM^T02 its route made (``mapping: hl7v2``),
its bytes read from the store when it is sent and base64-encoded once into OBX-5.

Incomplete: no enhanced-mode application ACK wait after a CA (the commit ACK ends the exchange);
no batch (BHS/BTS) sending.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.adapters.destination import DeliveryResult, Payload
from engine.adapters.mllp.framing import FrameReader, FrameTooLarge, frame
from engine.adapters.mllp.tls import client_context
from engine.documents.model import DocumentEnvelope
from engine.errors import ConfigError, ConversionError, HL7Error
from engine.hl7v2.codec import Message, parse_message
from engine.mappings.mdm import fill_mdm

__all__ = ["MLLPDestination", "MllpDestination", "MllpTls", "ack_error_code", "judge_ack"]

log = logging.getLogger(__name__)

_READ_SIZE = 64 * 1024
#: table 0357 codes that say the receiver is in trouble, not the message: retry
_TRANSIENT_CODES = frozenset({"206", "207"})


class MllpTls(BaseModel):
    """An MLLP destination's ``tls:`` settings (see the module docstring); checked, and the
    files loaded, when the route file is read."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: PEM CA bundle the receiver's certificate must chain to (default: the system's CAs)
    ca_file: Path | None = None
    #: PEM client certificate (chain) and its private key, for mutual TLS
    cert_file: Path | None = None
    key_file: Path | None = None
    #: the name the receiver's certificate must carry, sent as SNI (default: the host)
    server_name: str | None = Field(default=None, min_length=1, max_length=253)
    #: check the receiver's certificate and name (false: tests only)
    verify: bool = True

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _a_file(cls, path: Path | None) -> Path | None:
        if path is None:
            return None
        from engine.settings import engine_home

        path = path.expanduser()
        if not path.is_absolute():  # the engine home's, like every path (never the cwd)
            path = engine_home() / path
        if not path.is_file():
            raise ValueError(f"{path}: no such file")
        return path

    @model_validator(mode="after")
    def _loads(self) -> MllpTls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs both cert_file and key_file")
        try:
            self.context()
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return self

    def context(self) -> ssl.SSLContext:
        """A client SSL context from these settings; raises ConfigError naming a bad file."""
        return client_context(self.ca_file, self.cert_file, self.key_file, verify=self.verify)


class MllpDestination(BaseModel):
    """A route file's ``type: mllp`` destination: an HL7v2 receiver over MLLP (HL7 v2.5.1
    appendix C); each message waits for its ACK."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str
    port: int = Field(..., ge=1, le=65535)
    #: connect, and wait for the ACK, at most this long
    timeout_s: float = Field(default=30.0, gt=0)
    #: the TLS settings (:class:`MllpTls`); ``true`` is TLS trusting the system's CAs, ``false``
    #: (the default) plain MLLP
    tls: MllpTls | None = None
    #: the largest ACK accepted (an ACK is small; a runaway peer is not)
    max_ack_bytes: int = Field(default=1024 * 1024, ge=1024)

    @field_validator("tls", mode="before")
    @classmethod
    def _tls_flag(cls, value: object) -> object:
        """``tls: true`` / ``false`` as before settings existed: the defaults, or none."""
        if value is True:
            return MllpTls()
        if value is False:
            return None
        return value


class _PeerClosed(Exception):
    """Private: the peer closed the connection before the whole ACK arrived."""

    def __init__(self, partial: bool) -> None:
        super().__init__("connection closed inside the ACK" if partial else "connection closed")
        self.partial = partial


def ack_error_code(ack: Message) -> str:
    """The table 0357 error code of an ACK: ERR-3.1, ERR-1.4.1 (before v2.5), or MSA-6.1."""
    return (ack.get("ERR-3.1") or ack.get("ERR-1.4.1") or ack.get("MSA-6.1")).strip()


def judge_ack(ack: Message, control_id: str) -> DeliveryResult:
    """The delivery result an ACK means for the message with MSH-10 ``control_id`` (see the module
    docstring's table)."""
    if ack.segment("MSA") is None:
        return DeliveryResult.retry("mllp: ACK without MSA")
    code = ack.get("MSA-1").strip().upper()
    if ack.get("MSA-2") != control_id:
        return DeliveryResult.fail(f"mllp: ACK for another message ({code})")
    if code in ("AA", "CA"):
        return DeliveryResult.success(f"mllp: {code}")
    error = ack_error_code(ack)
    detail = f"mllp: {code}" + (f" (0357 {error})" if error else "")
    if code not in ("AE", "AR", "CE", "CR"):
        return DeliveryResult.fail(f"mllp: unknown ACK code {code[:4]!r}")
    if error in _TRANSIENT_CODES:
        return DeliveryResult.retry(detail)
    if error:
        return DeliveryResult.fail(detail)
    if code in ("AR", "CR", "CE"):
        return DeliveryResult.retry(detail)
    return DeliveryResult.fail(detail)


class MLLPDestination:
    """Sends HL7v2 payloads to one MLLP receiver and waits for each ACK."""

    #: one connection per destination: of an ``engine serve``'s worker processes only the first
    #: delivers here (engine/flow/deliver.py), so a receiver that takes one connection gets one
    one_connection = True

    def __init__(
        self, name: str, config: MllpDestination, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.name = name
        self.config = config
        if ssl_context is None and config.tls is not None:
            ssl_context = config.tls.context()
        self._ssl = ssl_context
        self._server_name = (config.tls.server_name if config.tls else None) or config.host
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._frames = FrameReader(config.max_ack_bytes)
        self._lock = asyncio.Lock()
        #: connections opened so far (for tests and metrics)
        self.connects = 0

    async def deliver(self, payload: Payload) -> DeliveryResult:
        if payload.kind == "document":
            return await self._deliver_document(payload)
        if payload.kind != "hl7v2":
            return DeliveryResult.fail(f"mllp: cannot deliver a {payload.kind} payload")
        try:
            control_id = parse_message(payload.body).control_id
        except HL7Error as exc:
            return DeliveryResult.fail(f"mllp: payload is not HL7v2 ({type(exc).__name__})")
        if not control_id:
            return DeliveryResult.fail("mllp: payload has no MSH-10 to match the ACK")
        async with self._lock:
            result = await self._exchange(payload.body, control_id)
        return result  # the dispatcher logs the outcome, for every kind of destination

    async def _deliver_document(self, payload: Payload) -> DeliveryResult:
        """A document as the MDM^T02 its route mapped it to (``mapping: hl7v2``), its bytes read
        from the store now and base64-encoded once into OBX-5 (:func:`fill_mdm`); the ACK is
        judged as for any message. The bytes read must be the ones stored (SHA-256)."""
        try:
            envelope = DocumentEnvelope.from_bytes(payload.body)
        except (ValueError, KeyError, TypeError):
            return DeliveryResult.fail("mllp: the payload is not a document envelope")
        if envelope.format != "hl7v2" or not isinstance(envelope.body, str):
            return DeliveryResult.fail(
                f"mllp: a document mapped to {envelope.format!r} cannot go over MLLP: give its "
                "route mapping: hl7v2 (MDM^T02)"
            )
        if payload.content is None:
            return DeliveryResult.retry("mllp: the document's bytes were not given")
        try:
            control_id = parse_message(envelope.body).control_id
        except HL7Error as exc:
            return DeliveryResult.fail(f"mllp: the MDM is not HL7v2 ({type(exc).__name__})")
        data = await payload.content.read()
        if hashlib.sha256(data).hexdigest() != envelope.document.sha256:
            return DeliveryResult.retry("mllp: the document's bytes read are not the ones stored")
        try:
            body = fill_mdm(envelope.body, data)
        except ConversionError as exc:
            return DeliveryResult.fail(f"mllp: {exc}")
        del data
        async with self._lock:
            return await self._exchange(body, control_id)

    async def close(self) -> None:
        async with self._lock:
            await self._drop()

    async def _exchange(self, body: bytes, control_id: str) -> DeliveryResult:
        timeout = self.config.timeout_s
        for fresh_retry in (False, True):
            reused = self._writer is not None
            if reused and self._reader is not None and self._reader.at_eof():
                await self._drop()
                reused = False
            try:
                if self._writer is None:
                    await asyncio.wait_for(self._connect(), timeout)
                raw = await asyncio.wait_for(self._round_trip(body), timeout)
            except _PeerClosed as exc:
                await self._drop()
                if reused and not fresh_retry and not exc.partial:
                    log.info("mllp connection was closed by the peer: reconnecting")
                    continue
                return DeliveryResult.retry(f"mllp: {exc} before the ACK")
            except TimeoutError:
                await self._drop()
                return DeliveryResult.retry(f"mllp: no connection or ACK within {timeout:g} s")
            except FrameTooLarge as exc:
                await self._drop()
                return DeliveryResult.retry(f"mllp: ACK larger than {exc.limit} bytes")
            except (OSError, ssl.SSLError) as exc:
                await self._drop()
                if reused and not fresh_retry and isinstance(exc, ConnectionError):
                    log.info("mllp connection was reset: reconnecting")
                    continue
                return DeliveryResult.retry(_failure(exc))
            try:
                ack = parse_message(raw)
            except HL7Error as exc:
                await self._drop()
                return DeliveryResult.retry(f"mllp: unreadable ACK ({type(exc).__name__})")
            if ack.get("MSA-2") != control_id:
                await self._drop()  # out of step: whatever comes next on it is suspect
            return judge_ack(ack, control_id)
        raise AssertionError("unreachable")

    async def _connect(self) -> None:
        cfg = self.config
        self._reader, self._writer = await asyncio.open_connection(
            cfg.host,
            cfg.port,
            ssl=self._ssl,
            server_hostname=self._server_name if self._ssl is not None else None,
        )
        self._frames = FrameReader(cfg.max_ack_bytes)
        self.connects += 1

    async def _round_trip(self, body: bytes) -> bytes:
        """Send one frame, return the payload of the first frame that comes back."""
        assert self._reader is not None and self._writer is not None
        self._writer.write(frame(body))
        await self._writer.drain()
        got_any = False
        while True:
            data = await self._reader.read(_READ_SIZE)
            if not data:
                raise _PeerClosed(got_any)
            got_any = True
            try:
                frames = self._frames.feed(data)
            except FrameTooLarge as exc:
                if not exc.frames:
                    raise
                # the ACK came whole; what follows it is not to be trusted on this connection
                log.warning("mllp: a frame over %d bytes after the ACK: reconnecting", exc.limit)
                await self._drop()
                return exc.frames[0]
            if frames:
                if len(frames) > 1:
                    log.warning("mllp: %d extra frames after the ACK dropped", len(frames) - 1)
                return frames[0]

    async def _drop(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)


def _failure(exc: OSError) -> str:
    """A connection failure as a delivery detail: the exception's type, and for TLS what it
    reported (``certificate verify failed (unable to get local issuer certificate)``,
    ``SSLError (TLSV13_ALERT_CERTIFICATE_REQUIRED)``): names and codes, never data."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"mllp: TLS: certificate verify failed ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"mllp: TLS: {type(exc).__name__} ({exc.reason or 'handshake failed'})"
    return f"mllp: {type(exc).__name__}"
