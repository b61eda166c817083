"""The athena pull reads no answer past ``max_response_bytes``: a page too large stops the pull
naming the request and the limit, and is not read further (a 200 MB page once took 701 MB)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from engine.adapters.source import SourceError
from engine.sim.athena import DEMO_DEPARTMENT, DEMO_PRACTICE, StubAthenaServer
from engine.sim.server_thread import ServerThread
from tests.adapters.test_athena_source import JAN, athena, home, pull, server, source

__all__ = ["athena", "home", "server"]  # the fixtures, for pytest

ROW = orjson.dumps(
    {
        "appointmentid": "1",
        "patientid": "1001",
        "departmentid": DEMO_DEPARTMENT,
        "date": "01/07/2030",
        "starttime": "09:00",
        "appointmentstatus": "f",
        "pad": "x" * 1000,
    }
)
#: what the endless page would be: far more than any limit
ENDLESS_BYTES = 64 * 2**20


class EndlessPage:
    """An athena whose booked-appointments page never ends (chunked, no Content-Length),
    counting what it managed to send."""

    def __init__(self) -> None:
        self.sent = 0
        self.lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/oauth2/v1/token", self.token, methods=["POST"]),
                Route(f"/v1/{DEMO_PRACTICE}/appointments/booked", self.booked),
            ]
        )

    async def token(self, request: Request) -> Response:
        return JSONResponse({"access_token": "t", "token_type": "bearer", "expires_in": 3600})

    async def booked(self, request: Request) -> Response:
        async def rows() -> AsyncIterator[bytes]:
            yield b'{"totalcount": 1, "appointments": ['
            while self.sent < ENDLESS_BYTES:
                # a server stops once its client has gone: on uvloop, uvicorn (0.54) drops what
                # is sent to a closed connection without telling the app, which would otherwise
                # go on to the end
                if await request.is_disconnected():
                    return
                with self.lock:
                    self.sent += len(ROW) + 1
                yield ROW + b","
            yield ROW + b"]}"

        return StreamingResponse(rows(), media_type="application/json")


@pytest.fixture
def endless() -> Iterator[tuple[EndlessPage, str]]:
    page = EndlessPage()
    thread = ServerThread(page.app)
    thread.start()
    try:
        yield page, thread.url
    finally:
        thread.stop()


def test_a_page_past_the_limit_stops_the_pull_naming_it(
    athena: StubAthenaServer, home: Path
) -> None:
    athena.state.seed_appointments(40, start=JAN)
    with pytest.raises(SourceError) as caught:
        pull(source(athena, home, max_response_bytes=4096), JAN, JAN + timedelta(days=90))
    assert "appointments/booked" in str(caught.value)
    assert "larger than 4096 bytes" in str(caught.value)
    assert "DEMO" not in str(caught.value)  # no MRN, no name


def test_the_limit_defaults_to_ten_mib(athena: StubAthenaServer, home: Path) -> None:
    assert source(athena, home).config.max_response_bytes == 10 * 2**20


def test_an_endless_page_is_not_read_past_the_limit(
    endless: tuple[EndlessPage, str], athena: StubAthenaServer, home: Path
) -> None:
    page, url = endless
    src = source(athena, home, base_url=url, max_response_bytes=2**20)
    with pytest.raises(SourceError, match="larger than 1048576 bytes"):
        pull(src, JAN, JAN)
    # the pull let go after about a MiB (what sits in the socket buffers aside), not 64
    assert page.sent < 16 * 2**20
