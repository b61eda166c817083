"""TLS to Epic: the system trust store (truststore) unless a private CA is named, and an
optional client certificate; a certificate that cannot be read stops the build naming it."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import truststore

from engine.adapters.epic import EpicDestination, EpicDocumentDestination, EpicTls, ssl_context
from engine.errors import ConfigError

MRN = "urn:oid:1.2.840.114350.1.13.99999.2.7.5.737384.14"


def test_the_system_trust_store_by_default() -> None:
    ctx = ssl_context(None)
    assert isinstance(ctx, truststore.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED


def test_a_private_ca_and_a_client_certificate(pki: Path) -> None:
    tls = EpicTls(
        ca_file=pki / "ca.crt", client_cert=pki / "client.crt", client_key=pki / "client.key"
    )
    ctx = ssl_context(tls)
    assert not isinstance(ctx, truststore.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.get_ca_certs()  # the private CA loaded


def test_an_unreadable_certificate_is_a_config_error(tmp_path: Path) -> None:
    config = EpicDestination.model_validate(
        {
            "base_url": "https://epic.example.org/api/FHIR/R4",
            "client_id": "c",
            "mrn_system": MRN,
            "tls": {"client_cert": str(tmp_path / "missing.crt")},
        }
    )
    with pytest.raises(ConfigError, match="epic tls"):
        EpicDocumentDestination("epic", config)


def test_a_document_over_https_with_a_private_ca_and_a_stranger_refused(
    pki: Path, tmp_path: Path
) -> None:
    """The stub Epic over TLS (a server certificate for localhost from the test CA): a document
    goes through with ``tls.ca_file``; with the system trust store (which does not know the
    test CA) the connection is refused and the delivery retryable, nothing sent."""
    import asyncio
    import hashlib
    import threading
    import time

    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from engine.keys import Keyring
    from engine.settings import Settings
    from engine.sim.epic import FHIR_BASE, StubEpicState, create_stub_epic_app
    from engine.sim.server_thread import ServerThread
    from tests.adapters.test_epic_documents import document, pdf

    ring = Keyring(tmp_path / "var" / "keys")
    ring.create("ES384")

    async def jwks(request: Request) -> JSONResponse:
        return JSONResponse(ring.jwks())

    keys_server = ServerThread(Starlette(routes=[Route("/.well-known/jwks.json", jwks)]))
    keys_server.start()
    state = StubEpicState()
    state.register("tls-client", keys_server.url + "/.well-known/jwks.json")
    config = uvicorn.Config(
        create_stub_epic_app(state),
        host="127.0.0.1",
        port=0,
        log_config=None,
        log_level="warning",
        lifespan="off",
        ssl_certfile=str(pki / "server.crt"),
        ssl_keyfile=str(pki / "server.key"),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        base = f"https://localhost:{port}{FHIR_BASE}"

        def deliver(tls: dict[str, str] | None) -> tuple[bool, bool, str]:
            keys = {"base_url": base, "client_id": "tls-client", "mrn_system": MRN}
            config = EpicDestination.model_validate({**keys, **({"tls": tls} if tls else {})})
            dest = EpicDocumentDestination("epic", config, settings=Settings(home=tmp_path))

            async def run() -> tuple[bool, bool, str]:
                try:
                    result = await dest.deliver(document(1, pdf(1)))
                    return result.ok, result.retryable, result.detail
                finally:
                    await dest.close()

            return asyncio.run(run())

        ok, retryable, detail = deliver(None)
        assert not ok and retryable, detail
        assert state.token_requests == 0 and sum(state.creates_by_hash.values()) == 0
        ok, _, detail = deliver({"ca_file": str(pki / "ca.crt")})
        assert ok, detail
        assert state.creates_by_hash[hashlib.sha256(pdf(1)).hexdigest()] == 1
    finally:
        server.should_exit = True
        thread.join(10)
        keys_server.stop()
