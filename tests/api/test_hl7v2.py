"""``POST /hl7v2``: the ACK from the pipeline comes back as the body; limits and refusals."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from engine.metrics import EngineMetrics
from tests.api.conftest import MAX_BYTES, TestClient, bearer
from tests.api.fakes import ACK, NAK, FakeIngest

ADT = (
    b"MSH|^~\\&|FRONTDESK|CLINIC|ENGINE|HUB|20260102030405||ADT^A04|CTRL-1|P|2.5.1\r"
    b"EVN|A04|20260102030405\r"
    b"PID|1||MRN1^^^CLINIC^MR||Testpatient^Alice||19800101|F\r"
)


@pytest.fixture
def headers(token: Callable[[str], str]) -> dict[str, str]:
    return {"Content-Type": "x-application/hl7-v2+er7", **bearer(token("integration"))}


def test_answers_with_the_ack(
    client: TestClient, headers: dict[str, str], ingest: FakeIngest
) -> None:
    response = client.post("/hl7v2", content=ADT, headers=headers)
    assert response.status_code == 200
    assert response.content == ACK
    assert response.headers["content-type"] == "x-application/hl7-v2+er7"
    kind, raw, channel, peer = ingest.calls[0]
    assert (kind, raw, channel) == ("hl7v2", ADT, "http") and peer.startswith("testclient")


@pytest.mark.parametrize(
    "content_type", ["text/plain; charset=utf-8", "application/hl7-v2", "X-Application/HL7-V2+ER7"]
)
def test_accepted_content_types(
    client: TestClient, headers: dict[str, str], content_type: str
) -> None:
    response = client.post("/hl7v2", content=ADT, headers={**headers, "Content-Type": content_type})
    assert response.status_code == 200


def test_other_content_types_are_415(client: TestClient, headers: dict[str, str]) -> None:
    for content_type in ("application/json", ""):
        response = client.post(
            "/hl7v2", content=ADT, headers={**headers, "Content-Type": content_type}
        )
        assert response.status_code == 415


def test_oversize_is_413_and_not_received(
    client: TestClient, headers: dict[str, str], ingest: FakeIngest, metrics: EngineMetrics
) -> None:
    big = ADT + b"NTE|1||" + b"x" * MAX_BYTES + b"\r"
    assert client.post("/hl7v2", content=big, headers=headers).status_code == 413
    errors = metrics.registry.get_sample_value("engine_errors_total", {"stage": "receive"})
    assert ingest.calls == [] and errors == 1


def test_oversize_chunked_body_is_413(
    client: TestClient, headers: dict[str, str], ingest: FakeIngest
) -> None:
    def chunks() -> Iterator[bytes]:
        yield ADT
        for _ in range(10):
            yield b"NTE|1||" + b"x" * 1000 + b"\r"

    response = client.post("/hl7v2", content=chunks(), headers=headers)
    assert response.status_code == 413 and ingest.calls == []


def test_exactly_the_limit_passes(client: TestClient, headers: dict[str, str]) -> None:
    body = ADT + b"NTE|1||" + b"x" * (MAX_BYTES - len(ADT) - 8) + b"\r"
    assert len(body) == MAX_BYTES
    assert client.post("/hl7v2", content=body, headers=headers).status_code == 200


def test_empty_body_is_400(client: TestClient, headers: dict[str, str]) -> None:
    assert client.post("/hl7v2", content=b"", headers=headers).status_code == 400


def test_store_refusal_is_503_with_the_nak(
    client: TestClient, headers: dict[str, str], ingest: FakeIngest
) -> None:
    ingest.mode = "refused"
    response = client.post("/hl7v2", content=ADT, headers=headers)
    assert response.status_code == 503 and response.content == NAK
    assert response.headers["content-type"] == "x-application/hl7-v2+er7"
    assert response.headers["retry-after"] == "30"


def test_unreadable_without_an_ack_is_400(
    client: TestClient, headers: dict[str, str], ingest: FakeIngest
) -> None:
    ingest.mode = "unreadable"
    response = client.post("/hl7v2", content=b"not hl7 at all", headers=headers)
    assert response.status_code == 400 and "stored as message 1" in response.text


def test_no_commit_ack_wanted_is_204(
    client: TestClient, headers: dict[str, str], ingest: FakeIngest
) -> None:
    ingest.mode = "silent"
    response = client.post("/hl7v2", content=ADT, headers=headers)
    assert response.status_code == 204 and response.content == b""
