"""MLLP over TLS and mutual TLS, with certificates made for the test."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from engine.adapters.mllp.framing import frame
from engine.adapters.mllp.server import MLLPServer
from engine.adapters.mllp.tls import server_context
from engine.errors import ConfigError


def _cert(
    path: Path, name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


class _Echo:
    async def on_message(self, payload: bytes, peer: str) -> bytes | None:
        return b"ACK:" + payload

    async def on_oversize(self, head: bytes, limit: int, peer: str) -> bytes | None:
        return None


def _client(pki: Path, cert: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if cert:
        ctx.load_cert_chain(str(pki / f"{cert}.crt"), str(pki / f"{cert}.key"))
    return ctx


async def _exchange(port: int, ctx: ssl.SSLContext) -> bytes:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
    )
    writer.write(frame(b"MSH|hello"))
    await writer.drain()
    data = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 5)
    writer.close()
    return data


def _run(pki: Path, client_ca: bool, cert: str | None) -> bytes:
    async def main() -> bytes:
        ctx = server_context(
            pki / "server.crt", pki / "server.key", pki / "ca.crt" if client_ca else None
        )
        server = MLLPServer(_Echo(), host="127.0.0.1", port=0, ssl_context=ctx)
        await server.start()
        try:
            return await _exchange(server.bound_port, _client(pki, cert))
        finally:
            await server.stop()

    return asyncio.run(main())


def test_tls(pki: Path) -> None:
    assert _run(pki, client_ca=False, cert=None) == b"\x0bACK:MSH|hello\x1c\r"


def test_mutual_tls_accepts_a_client_signed_by_the_ca(pki: Path) -> None:
    assert _run(pki, client_ca=True, cert="client") == b"\x0bACK:MSH|hello\x1c\r"


@pytest.mark.parametrize("cert", [None, "stranger"])
def test_mutual_tls_refuses_other_clients(pki: Path, cert: str | None) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
        _run(pki, client_ca=True, cert=cert)


def test_bad_key_file_is_a_config_error(pki: Path) -> None:
    with pytest.raises(ConfigError, match="MLLP TLS"):
        server_context(pki / "server.crt", pki / "missing.key")
