"""The MLLP destination against real peers: our MLLPServer with a scripted handler, and python-hl7's
asyncio MLLP server (another library's framing and ACKs)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import warnings
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import hl7
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hl7.mllp import start_hl7_server

from engine.adapters.destination import DeliveryResult, Payload
from engine.adapters.mllp.client import MLLPDestination, MllpDestination, judge_ack
from engine.adapters.mllp.server import MLLPServer
from engine.adapters.registry import build_destination
from engine.hl7v2.ack import AckError, build_ack
from engine.hl7v2.codec import parse_message
from engine.routes.spec import DestinationSpec

MSG = (
    "MSH|^~\\&|ENGINE|HUB|LAB|CLINIC|20260102030405||ADT^A04^ADT_A01|{cid}|P|2.5.1\r"
    "PID|1||MRN1^^^CLINIC^MR||Testpatient^Alice\r"
)


def payload(cid: str = "C1", *, body: bytes | None = None, kind: str = "hl7v2") -> Payload:
    return Payload(
        message_id=7,
        destination="lab",
        kind=kind,  # type: ignore[arg-type]
        body=body if body is not None else MSG.format(cid=cid).encode(),
        content_type="x-application/hl7-v2+er7",
        idempotency_key="7:lab",
        control_id=cid,
    )


def ack(code: str, cid: str, err: str = "", version: str = "2.5.1") -> bytes:
    text = (
        f"MSH|^~\\&|LAB|CLINIC|ENGINE|HUB|20260102030406||ACK^A04^ACK|A-{cid}|P|{version}\r"
        f"MSA|{code}|{cid}\r"
    )
    if err and version >= "2.5":
        text += f"ERR|||{err}^Some error^HL70357|E\r"
    elif err:
        text += f"ERR|PID^1^3^{err}&Some error&HL70357\r"
    return text.encode()


Reply = Callable[[bytes], bytes | None]


class ScriptedHandler:
    """An MLLPServer handler answering each message with the next scripted reply."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.received: list[str] = []

    async def on_message(self, data: bytes, peer: str) -> bytes | None:
        msg = parse_message(data)
        self.received.append(msg.control_id)
        reply = self.replies.pop(0) if self.replies else answer("AA")
        return reply(data)

    async def on_oversize(self, head: bytes, limit: int, peer: str) -> bytes | None:
        return None


def answer(code: str, err: str = "", version: str = "2.5.1") -> Reply:
    return lambda data: ack(code, parse_message(data).control_id, err, version)


def settings(port: int, **extra: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": port, "timeout_s": 2, **extra}


def config(port: int, **extra: Any) -> MllpDestination:
    return MllpDestination.model_validate(settings(port, **extra))


def with_server(
    handler: ScriptedHandler,
    body: Callable[[int], Awaitable[list[DeliveryResult]]],
    **limits: float,
) -> list[DeliveryResult]:
    async def run() -> list[DeliveryResult]:
        server = MLLPServer(handler, host="127.0.0.1", port=0, **limits)  # type: ignore[arg-type]
        await server.start()
        try:
            return await body(server.bound_port)
        finally:
            await server.stop()

    return asyncio.run(run())


def send(*payloads: Payload, **extra: Any) -> Callable[[int], Awaitable[list[DeliveryResult]]]:
    async def body(port: int) -> list[DeliveryResult]:
        dest = MLLPDestination("lab", config(port, **extra))
        try:
            return [await dest.deliver(p) for p in payloads]
        finally:
            await dest.close()

    return body


def test_aa_delivers_on_one_kept_connection() -> None:
    handler = ScriptedHandler()
    seen: list[int] = []

    async def body(port: int) -> list[DeliveryResult]:
        spec = DestinationSpec.model_validate({"type": "mllp", **settings(port)})
        dest = build_destination("lab", spec)
        assert isinstance(dest, MLLPDestination)
        out = [await dest.deliver(payload(f"C{i}")) for i in range(3)]
        seen.append(dest.connects)
        await dest.close()
        return out

    results = with_server(handler, body)
    assert results == [DeliveryResult(True, False, "mllp: AA")] * 3
    assert handler.received == ["C0", "C1", "C2"] and seen == [1]


def test_real_ack_from_our_ack_builder() -> None:
    def reply(data: bytes) -> bytes:
        built = build_ack(parse_message(data), "AA", control_id="X1", timestamp="20260102")
        return built.to_bytes()

    assert with_server(ScriptedHandler(reply), send(payload())) == [
        DeliveryResult(True, False, "mllp: AA")
    ]


@pytest.mark.parametrize(
    ("code", "err", "version", "ok", "retryable", "detail"),
    [
        ("CA", "", "2.5.1", True, False, "mllp: CA"),
        ("AE", "", "2.5.1", False, False, "mllp: AE"),
        ("AE", "103", "2.5.1", False, False, "mllp: AE (0357 103)"),
        ("AE", "206", "2.5.1", False, True, "mllp: AE (0357 206)"),
        ("AE", "207", "2.3", False, True, "mllp: AE (0357 207)"),
        ("AR", "", "2.5.1", False, True, "mllp: AR"),
        ("AR", "200", "2.5.1", False, False, "mllp: AR (0357 200)"),
        ("AR", "207", "2.5.1", False, True, "mllp: AR (0357 207)"),
        ("CR", "203", "2.5.1", False, False, "mllp: CR (0357 203)"),
        ("CE", "", "2.5.1", False, True, "mllp: CE"),
        ("XX", "", "2.5.1", False, False, "mllp: unknown ACK code 'XX'"),
    ],
)
def test_ack_codes(
    code: str, err: str, version: str, ok: bool, retryable: bool, detail: str
) -> None:
    (result,) = with_server(ScriptedHandler(answer(code, err, version)), send(payload()))
    assert result == DeliveryResult(ok, retryable, detail)


def test_our_engine_store_failure_nak_is_retryable() -> None:
    """Our own listener answers AR with 0357 207 when its store fails: the sender must resend."""

    def reply(data: bytes) -> bytes:
        built = build_ack(
            parse_message(data), "AR", control_id="X", timestamp="2026", errors=[AckError("207")]
        )
        return built.to_bytes()

    (result,) = with_server(ScriptedHandler(reply), send(payload()))
    assert result == DeliveryResult(False, True, "mllp: AR (0357 207)")


def test_ack_for_another_message_is_permanent_and_reconnects() -> None:
    handler = ScriptedHandler(lambda data: ack("AA", "SOMEONE-ELSE"))
    connects: list[int] = []

    async def body(port: int) -> list[DeliveryResult]:
        dest = MLLPDestination("lab", config(port))
        out = [await dest.deliver(payload("C1")), await dest.deliver(payload("C2"))]
        connects.append(dest.connects)
        await dest.close()
        return out

    wrong, ok = with_server(handler, body)
    assert wrong == DeliveryResult(False, False, "mllp: ACK for another message (AA)")
    assert ok.ok and connects == [2]


def test_no_ack_times_out_retryable_and_garbage_is_retryable() -> None:
    handler = ScriptedHandler(lambda data: None, lambda data: b"this is not HL7")
    results = with_server(handler, send(payload("C1"), payload("C2"), payload("C3"), timeout_s=0.3))
    assert results[0] == DeliveryResult(False, True, "mllp: no connection or ACK within 0.3 s")
    assert results[1] == DeliveryResult(False, True, "mllp: unreadable ACK (HL7ParseError)")
    assert results[2].ok


def test_an_ack_followed_by_an_oversize_frame_in_the_same_read_is_judged_not_lost() -> None:
    # issue 14: the ACK was dropped with the overflow after it, and the delivered message retried
    def ack_then_runaway(data: bytes) -> bytes:
        # framed by the listener as <VT>ACK<FS><CR><VT>xxx…<FS><CR>: one write, one read
        return ack("AA", parse_message(data).control_id) + b"\x1c\r\x0b" + b"x" * 4000

    handler = ScriptedHandler(ack_then_runaway)
    connects: list[int] = []

    async def body(port: int) -> list[DeliveryResult]:
        dest = MLLPDestination("lab", config(port, max_ack_bytes=1024))
        out = [await dest.deliver(payload("C1")), await dest.deliver(payload("C2"))]
        connects.append(dest.connects)
        await dest.close()
        return out

    first, second = with_server(handler, body)
    assert first.ok and second.ok
    assert connects == [2]  # the stream after the runaway frame is not trusted: a new connection
    assert handler.received == ["C1", "C2"]


def test_connection_refused_is_retryable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def run() -> DeliveryResult:
        dest = MLLPDestination("lab", config(port))
        try:
            return await dest.deliver(payload())
        finally:
            await dest.close()

    assert asyncio.run(run()) == DeliveryResult(False, True, "mllp: ConnectionRefusedError")


def test_a_connection_the_peer_closed_when_idle_is_reopened_at_once() -> None:
    handler = ScriptedHandler()
    connects: list[int] = []

    async def body(port: int) -> list[DeliveryResult]:
        dest = MLLPDestination("lab", config(port))
        first = await dest.deliver(payload("C1"))
        await asyncio.sleep(0.35)  # the server's idle timeout closes the connection
        second = await dest.deliver(payload("C2"))
        connects.append(dest.connects)
        await dest.close()
        return [first, second]

    results = with_server(handler, body, idle_timeout_s=0.2)
    assert [r.ok for r in results] == [True, True] and connects == [2]


def test_payloads_that_cannot_be_sent_are_permanent() -> None:
    dest = MLLPDestination("lab", config(1))

    async def run() -> list[DeliveryResult]:
        return [
            await dest.deliver(payload(kind="fhir-bundle")),
            await dest.deliver(payload(body=b"not hl7")),
            await dest.deliver(payload(body=MSG.format(cid="").encode())),
        ]

    assert [r.detail for r in asyncio.run(run())] == [
        "mllp: cannot deliver a fhir-bundle payload",
        "mllp: payload is not HL7v2 (HL7ParseError)",
        "mllp: payload has no MSH-10 to match the ACK",
    ]


def test_judge_ack_reads_msa6_of_old_versions() -> None:
    old = parse_message(b"MSH|^~\\&|A|B|C|D|2026||ACK|1|P|2.3\rMSA|AE|C9|bad|||207^Internal\r")
    assert judge_ack(old, "C9") == DeliveryResult(False, True, "mllp: AE (0357 207)")
    no_msa = parse_message(b"MSH|^~\\&|A|B|C|D|2026||ACK|1|P|2.3\r")
    assert judge_ack(no_msa, "C9") == DeliveryResult(False, True, "mllp: ACK without MSA")


# -- python-hl7's asyncio MLLP server as the peer ------------------------------------------------


def hl7_server_results(codes: list[str], *payloads: Payload, **extra: Any) -> list[DeliveryResult]:
    """Deliver to a python-hl7 server that answers with ``create_ack`` and the given codes."""
    script = list(codes)

    async def on_client(reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter) -> None:
        try:
            while True:
                message = await reader.readmessage()
                code = script.pop(0) if script else "hang up"
                if code == "hang up":
                    break
                if code == "none":
                    continue
                with warnings.catch_warnings():  # python-hl7 stamps MSH-7 with utcnow()
                    warnings.simplefilter("ignore", DeprecationWarning)
                    writer.writemessage(message.create_ack(code))
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    async def run() -> list[DeliveryResult]:
        server = await start_hl7_server(on_client, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        dest = MLLPDestination("lab", config(port, **extra))
        try:
            return [await dest.deliver(p) for p in payloads]
        finally:
            await dest.close()
            server.close()
            await server.wait_closed()

    return asyncio.run(run())


def test_python_hl7_peer_aa_ae_ar() -> None:
    results = hl7_server_results(["AA", "AE", "AR"], payload("P1"), payload("P2"), payload("P3"))
    assert results == [
        DeliveryResult(True, False, "mllp: AA"),
        DeliveryResult(False, False, "mllp: AE"),
        DeliveryResult(False, True, "mllp: AR"),
    ]


def test_python_hl7_peer_silent_then_closed() -> None:
    results = hl7_server_results(["none"], payload("P1"), payload("P2"), timeout_s=0.3)
    assert results[0] == DeliveryResult(False, True, "mllp: no connection or ACK within 0.3 s")
    # the script is spent, so the peer hangs up without an ACK: retryable too
    assert results[1] == DeliveryResult(False, True, "mllp: connection closed before the ACK")


# -- TLS -----------------------------------------------------------------------------------------


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """A throwaway certificate and key for 127.0.0.1 (test only)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_to_our_listener(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    handler = ScriptedHandler()

    async def run() -> list[DeliveryResult]:
        server = MLLPServer(handler, host="127.0.0.1", port=0, ssl_context=server_ctx)  # type: ignore[arg-type]
        await server.start()
        cfg = config(server.bound_port, tls=True)
        trusted = MLLPDestination("lab", cfg, ssl_context=client_ctx)
        untrusted = MLLPDestination("lab", cfg)  # the system CAs do not know this certificate
        try:
            return [await trusted.deliver(payload("T1")), await untrusted.deliver(payload("T2"))]
        finally:
            await trusted.close()
            await untrusted.close()
            await server.stop()

    ok, refused = asyncio.run(run())
    assert ok == DeliveryResult(True, False, "mllp: AA") and handler.received == ["T1"]
    detail = "mllp: TLS: certificate verify failed (self-signed certificate)"
    assert refused == DeliveryResult(False, True, detail)
