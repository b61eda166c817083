"""``/healthz`` (open, liveness) and ``/readyz`` (open, asks the HealthPort)."""

from __future__ import annotations

from tests.api.conftest import TestClient
from tests.api.fakes import FakeHealth


def test_healthz_is_open(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json()["status"] == "ok"


def test_readyz_follows_the_health_port(client: TestClient, health: FakeHealth) -> None:
    assert client.get("/readyz").json() == {"status": "ready"}
    health.is_ready = False
    response = client.get("/readyz")
    assert response.status_code == 503 and response.json() == {"status": "unavailable"}


def test_readyz_is_503_when_the_probe_fails(client: TestClient, health: FakeHealth) -> None:
    health.fail = True
    assert client.get("/readyz").status_code == 503
