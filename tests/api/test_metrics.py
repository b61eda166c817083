"""``GET /metrics``: the page, its content type and auth, HTTP traffic counted, and the counts of
other processes (multiprocess mode) on the receiver's page."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from engine.api.app import create_app
from engine.api.auth_settings import AuthSettings
from engine.metrics import EngineMetrics
from engine.settings import Settings
from tests.api.conftest import AppFactory, TestClient, bearer
from tests.api.fakes import FakeHealth, FakeIngest, FakeMessages
from tests.metrics_support import parse, record_in_process

ADT = b"MSH|^~\\&|A|B|C|D|20260102||ADT^A04|1|P|2.5.1\r"


def test_metrics_endpoint_is_open_and_counts_http_traffic(
    client: TestClient, token: Callable[[str], str]
) -> None:
    before = parse(client.get("/metrics").text)
    assert 'engine_messages_received_total{channel="http"}' not in before
    headers = {"Content-Type": "x-application/hl7-v2+er7", **bearer(token("integration"))}
    for _ in range(3):
        client.post("/hl7v2", content=ADT, headers=headers)
    client.post("/hl7v2", content=b"x" * 5000, headers=headers)  # over the cap: 413
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    after = parse(response.text)
    assert after['engine_messages_received_total{channel="http"}'] == 3
    assert after['engine_acks_total{code="AA"}'] == 3
    assert after['engine_errors_total{stage="receive"}'] == 1


def test_metrics_can_require_a_viewer_token(
    make_app: AppFactory, auth: AuthSettings, token: Callable[[str], str]
) -> None:
    locked = auth.model_copy(update={"metrics_require_token": True})
    client = TestClient(make_app(auth_settings=locked))
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=bearer(token("integration"))).status_code == 403
    assert client.get("/metrics", headers=bearer(token("viewer"))).status_code == 200


def test_the_page_adds_up_what_worker_processes_recorded(
    metrics_dir: Path, settings: Settings, auth: AuthSettings, token: Callable[[str], str]
) -> None:
    workers = [
        record_in_process(metrics_dir, "fhir-main", 4, inherit_env=True),
        record_in_process(metrics_dir, "archive", 1, inherit_env=True),
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
    metrics = EngineMetrics(multiprocess_dir=metrics_dir)
    app = create_app(
        settings,
        ingest=FakeIngest(metrics),
        messages=FakeMessages(),
        health=FakeHealth(),
        metrics=metrics,
        auth=auth,
    )
    client = TestClient(app)
    headers = {"Content-Type": "x-application/hl7-v2+er7", **bearer(token("integration"))}
    assert client.post("/hl7v2", content=ADT, headers=headers).status_code == 200
    samples = parse(client.get("/metrics").text)
    assert samples['engine_messages_received_total{channel="http"}'] == 1  # this process
    assert samples['engine_deliveries_total{destination="fhir-main",outcome="delivered"}'] == 4
    assert samples['engine_deliveries_total{destination="archive",outcome="delivered"}'] == 1
    assert samples['engine_dead_letters_total{destination="fhir-main"}'] == 1
    assert samples['engine_dead_letters_total{destination="archive"}'] == 1
    assert samples['engine_messages_routed_total{route="adt-to-fhir"}'] == 2
    assert samples["engine_worker_processes"] == 2
