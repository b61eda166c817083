"""TLS both ways: the MLLP destination's CA bundle and client certificate, checked when the route
file loads; and a plain-text client on the listener's TLS port, logged and closed.

Certificates are made for each test (tests/adapters/test_mllp_tls.py's helper): a test CA signs
the listener's ``localhost`` certificate and the ``ehr-client`` one; ``stranger`` is signed by
another CA.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from engine.adapters.destination import DeliveryResult, Payload
from engine.adapters.mllp.client import MLLPDestination, MllpDestination
from engine.adapters.mllp.framing import frame
from engine.adapters.mllp.server import MLLPServer
from engine.adapters.mllp.tls import server_context
from engine.adapters.registry import load_routes
from engine.errors import ConfigError

CONTROL_ID = "TLS1"
MESSAGE = (
    f"MSH|^~\\&|ENGINE|HUB|LAB|LAB|20260101120000||ADT^A08|{CONTROL_ID}|P|2.5.1\r"
    "PID|1||MRN1^^^HUB^MR||Testpatient^Jan\r"
).encode()


class _Ack:
    """A receiver that ACKs every message AA and keeps what it got."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    async def on_message(self, payload: bytes, peer: str) -> bytes | None:
        self.received.append(payload)
        return (
            "MSH|^~\\&|LAB|LAB|ENGINE|HUB|20260101120001||ACK^A08|A1|P|2.5.1\r"
            f"MSA|AA|{CONTROL_ID}\r"
        ).encode()

    async def on_oversize(self, head: bytes, limit: int, peer: str) -> bytes | None:
        return None


def _deliver(pki: Path, tls: dict[str, object], *, mutual: bool) -> tuple[DeliveryResult, _Ack]:
    """Deliver MESSAGE through a destination with ``tls`` to our TLS listener (which asks for a
    client certificate signed by the test CA when ``mutual``)."""
    handler = _Ack()

    async def main() -> DeliveryResult:
        ctx = server_context(
            pki / "server.crt", pki / "server.key", pki / "ca.crt" if mutual else None
        )
        server = MLLPServer(handler, host="127.0.0.1", port=0, ssl_context=ctx)
        await server.start()
        config = MllpDestination.model_validate(
            {"host": "127.0.0.1", "port": server.bound_port, "timeout_s": 5, "tls": tls}
        )
        destination = MLLPDestination("lab", config)
        try:
            return await destination.deliver(
                Payload(
                    message_id=1,
                    destination="lab",
                    kind="hl7v2",
                    body=MESSAGE,
                    content_type="x-application/hl7-v2+er7",
                    idempotency_key="1:lab",
                    control_id=CONTROL_ID,
                )
            )
        finally:
            await destination.close()
            await server.stop()

    return asyncio.run(main()), handler


def test_mutual_tls_with_a_ca_bundle_and_a_client_certificate(pki: Path) -> None:
    tls = {
        "ca_file": str(pki / "ca.crt"),
        "cert_file": str(pki / "client.crt"),
        "key_file": str(pki / "client.key"),
        "server_name": "localhost",  # the listener's certificate names localhost, not 127.0.0.1
    }
    result, handler = _deliver(pki, tls, mutual=True)
    assert result == DeliveryResult(True, False, "mllp: AA") and handler.received == [MESSAGE]


def test_without_a_client_certificate_a_mutual_tls_receiver_refuses_and_it_is_retried(
    pki: Path,
) -> None:
    tls = {"ca_file": str(pki / "ca.crt"), "server_name": "localhost"}
    result, handler = _deliver(pki, tls, mutual=True)
    assert not result.ok and result.retryable and handler.received == []
    assert result.detail.startswith("mllp: ")


def test_a_receiver_the_ca_bundle_does_not_trust_is_not_delivered_and_retried(pki: Path) -> None:
    tls = {"ca_file": str(pki / "other-ca.crt"), "server_name": "localhost"}
    result, handler = _deliver(pki, tls, mutual=False)
    assert result == DeliveryResult(
        False, True, "mllp: TLS: certificate verify failed (unable to get local issuer certificate)"
    )
    assert handler.received == []


def test_a_name_the_certificate_does_not_carry_is_refused(pki: Path) -> None:
    tls = {"ca_file": str(pki / "ca.crt"), "server_name": "lab.example.org"}
    result, handler = _deliver(pki, tls, mutual=False)
    assert not result.ok and result.retryable and handler.received == []
    assert "certificate verify failed (Hostname mismatch" in result.detail


def test_verify_false_skips_the_check(pki: Path) -> None:
    result, _ = _deliver(pki, {"verify": False}, mutual=False)
    assert result.ok


# -- checked when the route file loads ----------------------------------------------------------


def _route_file(site: Path, tls: str) -> Path:
    site.mkdir(exist_ok=True)
    path = site / "lab.yaml"
    path.write_text(
        "destinations:\n"
        "  lab:\n"
        "    type: mllp\n"
        "    host: 127.0.0.1\n"
        "    port: 2575\n"
        f"    tls: {tls}\n"
        "routes:\n"
        "  - {name: adt-to-lab, match: {message: [ADT]}, mapping: none, destinations: [lab]}\n"
    )
    return path


def _load_error(site: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_routes(site)
    text = str(info.value)
    assert "\n" not in text
    return text


def test_a_client_certificate_without_its_key_is_refused_naming_file_and_destination(
    pki: Path,
) -> None:
    site = pki / "routes"
    path = _route_file(site, f"{{ca_file: {pki}/ca.crt, cert_file: {pki}/client.crt}}")
    text = _load_error(site)
    assert text.startswith(f"{path}, line 6, destinations.lab.tls")
    assert "a client certificate needs both cert_file and key_file" in text


def test_a_missing_file_is_named(pki: Path) -> None:
    site = pki / "routes"
    path = _route_file(site, f"{{ca_file: {pki}/missing-ca.crt}}")
    text = _load_error(site)
    assert text.startswith(f"{path}, line 6, destinations.lab.tls.ca_file")
    assert f"{pki}/missing-ca.crt: no such file" in text


def test_a_relative_path_is_the_engine_homes(
    pki: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Like every path the engine reads, a relative one is the engine home's, never the folder
    the engine happened to start in."""
    site = pki / "routes"
    _route_file(site, "{ca_file: ca.crt}")
    monkeypatch.setenv("ENGINE_HOME", str(pki))
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    tls = load_routes(site).destinations["lab"].settings["tls"]
    config = MllpDestination.model_validate({"host": "127.0.0.1", "port": 2575, "tls": tls})
    assert config.tls is not None and not isinstance(config.tls, bool)
    assert config.tls.ca_file == pki / "ca.crt"
    monkeypatch.setenv("ENGINE_HOME", str(pki / "routes"))  # a home without it: named
    assert f"{pki}/routes/ca.crt: no such file" in _load_error(site)


def test_a_file_that_is_not_a_certificate_is_refused(pki: Path) -> None:
    site = pki / "routes"
    (pki / "notes.txt").write_text("not a certificate\n")
    path = _route_file(site, f"{{ca_file: {pki}/notes.txt}}")
    text = _load_error(site)
    assert text.startswith(f"{path}, line 6, destinations.lab.tls")
    assert f"cannot load the CA bundle {pki}/notes.txt" in text


def test_a_key_that_does_not_match_the_certificate_is_refused(pki: Path) -> None:
    site = pki / "routes"
    _route_file(site, f"{{cert_file: {pki}/client.crt, key_file: {pki}/stranger.key}}")
    text = _load_error(site)
    assert f"cannot load the client certificate {pki}/client.crt with key" in text


def test_tls_true_still_means_the_system_cas(pki: Path) -> None:
    site = pki / "routes"
    _route_file(site, "true")
    load_routes(site)
    config = MllpDestination.model_validate({"host": "lab", "port": 2575, "tls": True})
    assert config.tls is not None and config.tls.verify and config.tls.ca_file is None
    assert MllpDestination.model_validate({"host": "lab", "port": 2575, "tls": False}).tls is None


# -- the listener ---------------------------------------------------------------------------------


def test_a_plain_text_client_on_the_tls_port_is_logged_once_and_closed(
    pki: Path, caplog: pytest.LogCaptureFixture
) -> None:
    handler = _Ack()

    async def main() -> bytes:
        ctx = server_context(pki / "server.crt", pki / "server.key")
        server = MLLPServer(handler, host="127.0.0.1", port=0, ssl_context=ctx)
        await server.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.bound_port)
            writer.write(frame(MESSAGE))
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 5)  # until the listener closes
            writer.close()
            return answer
        finally:
            await server.stop()

    with caplog.at_level(logging.INFO, logger="engine.adapters.mllp"):
        answer = asyncio.run(main())
    assert handler.received == []
    assert b"MSA" not in answer  # closed, never answered in plain text
    failed = [r for r in caplog.records if "handshake failed" in r.getMessage()]
    assert len(failed) == 1 and failed[0].levelno == logging.WARNING
    assert "plain-text client on the TLS port" in failed[0].getMessage()
    assert str(getattr(failed[0], "peer", "")).startswith("127.0.0.1:")
    assert "Testpatient" not in caplog.text and "MRN1" not in caplog.text


@pytest.mark.parametrize("client", ["closes at once", "stays silent"])
def test_a_tls_listener_stops_promptly_with_a_client_mid_handshake(pki: Path, client: str) -> None:
    """The engine stopping while a client has connected to the TLS port and not finished (or not
    begun) its handshake: stop() returns at once instead of waiting for a connection whose close
    never completes (seen as an `engine serve` that ignored SIGTERM, in 4 runs out of 10)."""

    async def main() -> float:
        ctx = server_context(pki / "server.crt", pki / "server.key", pki / "ca.crt")
        server = MLLPServer(_Ack(), host="127.0.0.1", port=0, ssl_context=ctx)
        await server.start()
        loop = asyncio.get_running_loop()
        stalls = []
        for _ in range(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.bound_port)
            if client == "closes at once":
                writer.close()
            else:
                stalls.append(writer)
            await asyncio.sleep(0.05)  # the server has accepted and begun the handshake
        started = loop.time()
        await asyncio.wait_for(server.stop(), 20)
        took = loop.time() - started
        for writer in stalls:
            writer.close()
        return took

    assert asyncio.run(main()) < 5
