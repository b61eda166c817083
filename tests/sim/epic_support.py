"""The stub Epic with one client registered, its public keys served as the engine serves them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from engine.keys import Keyring
from engine.sim.epic import StubEpicServer, running_stub_epic
from engine.sim.server_thread import ServerThread

__all__ = ["epic_with_client"]


@contextmanager
def epic_with_client(keyring: Keyring, client_id: str) -> Iterator[StubEpicServer]:
    """A running stub Epic that knows ``client_id`` by a JWKS URL answering ``keyring``'s keys."""

    async def jwks(request: Request) -> JSONResponse:
        return JSONResponse(keyring.jwks())

    server = ServerThread(Starlette(routes=[Route("/.well-known/jwks.json", jwks)]))
    server.start()
    try:
        with running_stub_epic() as epic:
            epic.state.register(client_id, server.url + "/.well-known/jwks.json")
            yield epic
    finally:
        server.stop()
