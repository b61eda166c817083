"""TLS to outside servers (any FHIR server, athenahealth, an X12 payer) is checked against the
operating system's trust store (truststore), as Epic's is, not against the CA bundle httpx
ships: a practice's IT adds its private CA to the system, and every adapter trusts it."""

from __future__ import annotations

import asyncio
import re
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import truststore
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from engine.adapters.fhir_http import fhir_client, tls_verify
from tests.serve_support import free_port

ADAPTERS = Path(__file__).resolve().parents[2] / "engine" / "adapters"


def test_verify_true_is_the_system_trust_store() -> None:
    ctx = tls_verify(True)
    assert isinstance(ctx, truststore.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert tls_verify(False) is False
    own = ssl.create_default_context()
    assert tls_verify(own) is own


def test_no_adapter_hands_httpx_a_bare_verify_flag() -> None:
    """httpx turns ``verify=True`` into certifi's bundle: every client an adapter builds itself
    takes its ``verify`` from tls_verify (or Epic's ssl_context)."""
    offenders = []
    for path in ADAPTERS.rglob("*.py"):
        lines = path.read_text().splitlines()
        for n, line in enumerate(lines):
            if re.search(r"httpx\.(Async)?(Client|HTTPTransport)\(", line):
                call = lines[n : n + 12]
                verify = [v for v in call if "verify=" in v]
                if verify and not any(
                    re.search(r"tls_verify|ssl_context|verify=verify", v) for v in verify
                ):
                    offenders.append(f"{path.name}:{n + 1}")
    assert offenders == []


@pytest.fixture
def https_server(pki: Path) -> Iterator[str]:
    async def metadata(request: Request) -> JSONResponse:
        return JSONResponse({"resourceType": "CapabilityStatement"})

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            Starlette(routes=[Route("/metadata", metadata)]),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            ssl_certfile=str(pki / "server.crt"),
            ssl_keyfile=str(pki / "server.key"),
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        threading.Event().wait(0.05)
    yield f"https://localhost:{port}"
    server.should_exit = True
    thread.join(10)


def test_a_server_the_system_does_not_trust_is_refused(https_server: str, pki: Path) -> None:
    async def get(verify: ssl.SSLContext | bool) -> int:
        async with fhir_client(timeout_s=5, verify=verify, transport=None) as client:
            return (await client.get(f"{https_server}/metadata")).status_code

    # the test CA is not in the system's store: refused
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        asyncio.run(get(True))
    # a route's own context with that CA: taken
    assert asyncio.run(get(ssl.create_default_context(cafile=str(pki / "ca.crt")))) == 200
