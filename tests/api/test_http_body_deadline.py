"""A message body must arrive within ``ENGINE_HTTP_BODY_TIMEOUT_S`` (engine/api/body.py): an
authenticated client that sends a little and then stalls (or dribbles) gets a 408 naming the
problem and its connection closed, instead of holding the connection, and what it sent, for as
long as it likes; a slow body that arrives in time is taken as before."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, HTTPException
from starlette.requests import Request

from engine.api.body import read_capped
from engine.metrics import EngineMetrics
from engine.settings import Settings
from tests.api.conftest import MAX_BYTES, AppFactory, bearer
from tests.api.fakes import ACK, FakeIngest, post_scope

ADT = (
    b"MSH|^~\\&|FRONTDESK|CLINIC|ENGINE|HUB|20260102030405||ADT^A04|CTRL-1|P|2.5.1\r"
    b"PID|1||MRN1^^^CLINIC^MR||Testpatient^Alice||19800101|F\r"
)
BUNDLE = b'{"resourceType": "Bundle", "type": "collection", "entry": []}'
#: how long a test waits for an answer at most (the deadline under test is 0.5 s)
WAIT_S = 20.0


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(var_dir=tmp_path, max_message_bytes=MAX_BYTES, http_body_timeout_s=0.5)


class Client:
    """An ASGI client sending ``parts`` of a body, ``pause_s`` apart, then stalling (when
    ``stall``) as a slow-loris client does; what the app answered is kept."""

    def __init__(self, parts: list[bytes], *, pause_s: float = 0.0, stall: bool = False) -> None:
        self.parts, self.pause_s, self.stall = list(parts), pause_s, stall
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""

    async def receive(self) -> dict[str, Any]:
        if not self.parts:
            await asyncio.sleep(3600)  # nothing more comes: only a deadline ends this
        await asyncio.sleep(self.pause_s)
        part = self.parts.pop(0)
        more = bool(self.parts) or self.stall
        return {"type": "http.request", "body": part, "more_body": more}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {k.decode(): v.decode() for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")


def post(app: FastAPI, path: str, client: Client, headers: dict[str, str]) -> Client:
    scope = post_scope(path, headers)
    asyncio.run(asyncio.wait_for(app(scope, client.receive, client.send), WAIT_S))
    return client


def receive_errors(metrics: EngineMetrics) -> float | None:
    return metrics.registry.get_sample_value("engine_errors_total", {"stage": "receive"})


@pytest.fixture
def hl7_headers(token: Callable[[str], str]) -> dict[str, str]:
    return {"content-type": "x-application/hl7-v2+er7", **bearer(token("integration"))}


def test_a_stalled_hl7v2_body_is_408_and_the_connection_closed(
    make_app: AppFactory,
    hl7_headers: dict[str, str],
    ingest: FakeIngest,
    metrics: EngineMetrics,
) -> None:
    headers = {**hl7_headers, "content-length": str(len(ADT))}
    sent = post(make_app(), "/hl7v2", Client([ADT[:20]], stall=True), headers)
    assert sent.status == 408
    assert json.loads(sent.body) == {
        "detail": "body stopped coming: not 64 KiB more within 0.5 s (20 bytes came)"
    }
    assert sent.headers["connection"] == "close"  # the rest of the body may be on its way
    assert ingest.calls == [] and receive_errors(metrics) == 1


def test_a_stalled_fhir_body_is_408_in_an_operation_outcome(
    make_app: AppFactory, token: Callable[[str], str], ingest: FakeIngest
) -> None:
    headers = {"content-type": "application/fhir+json", **bearer(token("integration"))}
    sent = post(make_app(), "/fhir", Client([BUNDLE[:10]], stall=True), headers)
    assert sent.status == 408 and sent.headers["connection"] == "close"
    outcome = json.loads(sent.body)
    assert outcome["resourceType"] == "OperationOutcome"
    assert (
        outcome["issue"][0]["diagnostics"]
        == "body stopped coming: not 64 KiB more within 0.5 s (10 bytes came)"
    )
    assert outcome["issue"][0]["code"] == "timeout"
    assert ingest.calls == []


def test_a_body_dribbled_within_the_deadline_is_taken(
    make_app: AppFactory,
    hl7_headers: dict[str, str],
    ingest: FakeIngest,
    settings: Settings,
) -> None:
    settings.http_body_timeout_s = WAIT_S  # room for a loaded machine: the pauses are 0.02 s
    parts = [ADT[i : i + 16] for i in range(0, len(ADT), 16)]
    sent = post(make_app(), "/hl7v2", Client(parts, pause_s=0.02), hl7_headers)
    assert sent.status == 200 and sent.body == ACK
    assert ingest.calls[0][1] == ADT


def test_read_capped_takes_its_deadline_from_the_caller() -> None:
    """Without the engine's settings (an app of its own), the deadline passed is the one kept."""
    client = Client([b"x" * 10], stall=True)
    scope = {"type": "http", "method": "POST", "headers": [], "app": FastAPI()}
    request = Request(scope, client.receive)  # type: ignore[arg-type]
    read = read_capped(request, limit=1024, metrics=EngineMetrics(), timeout_s=0.2)
    with pytest.raises(HTTPException) as refused:
        asyncio.run(asyncio.wait_for(read, WAIT_S))
    assert refused.value.status_code == 408
    assert (
        refused.value.detail == "body stopped coming: not 64 KiB more within 0.2 s (10 bytes came)"
    )


def test_a_large_body_that_keeps_coming_is_taken_past_the_deadline() -> None:
    """Review of 7 December: the deadline was for the whole body, so a 16 MiB message over a
    slow link was refused every time. 64 KiB more within each deadline keeps it going: here four
    steps 0.3 s apart, 1.2 s in all against a deadline of 0.5 s."""
    parts = [b"x" * (64 * 1024)] * 4
    client = Client(parts, pause_s=0.3)
    scope = {"type": "http", "method": "POST", "headers": [], "app": FastAPI()}
    request = Request(scope, client.receive)  # type: ignore[arg-type]
    read = read_capped(request, limit=1024 * 1024, metrics=EngineMetrics(), timeout_s=0.5)
    assert len(asyncio.run(asyncio.wait_for(read, WAIT_S))) == 4 * 64 * 1024
