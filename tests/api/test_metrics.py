"""engine.metrics and ``GET /metrics``: exposition format 0.0.4, thread safety, counters move."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable

import pytest

from engine.api.auth_settings import AuthSettings
from engine.metrics import Counter, EngineMetrics, Gauge, Histogram, Registry, render_prometheus
from tests.api.conftest import AppFactory, TestClient, bearer

_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
SAMPLE = re.compile(
    rf"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{{(?P<labels>{_LABEL}(?:,{_LABEL})*)\}})?"
    r" (?P<value>[+-]?(?:\d+(?:\.\d*)?(?:e[+-]?\d+)?|Inf|NaN))$"
)
HELP = re.compile(r"^# HELP (?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*) (?:[^\\\n]|\\[\\n])*$")
TYPE = re.compile(r"^# TYPE (?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram)$")


def parse(text: str) -> dict[str, float]:
    """Check every line's syntax and family order; samples as ``name{labels}`` → value."""
    assert text.endswith("\n")
    samples: dict[str, float] = {}
    family = None
    for line in text.splitlines():
        if m := HELP.match(line):
            family = m["name"]
        elif m := TYPE.match(line):
            assert m["name"] == family, "TYPE follows the HELP of the same family"
        else:
            m = SAMPLE.match(line)
            assert m, f"not a valid sample line: {line!r}"
            assert family and m["name"].startswith(family)
            key = f"{m['name']}{{{m['labels']}}}" if m["labels"] else m["name"]
            samples[key] = float(m["value"].replace("Inf", "inf"))
    return samples


def test_counter_with_labels_and_escaping() -> None:
    registry = Registry()
    counter = registry.register(Counter("x_total", "Things,\nwith \\ help.", ("path",)))
    counter.inc(path='a "quoted"\\path\nnext')
    counter.inc(2.5, path="b")
    text = render_prometheus(registry)
    assert "# HELP x_total Things,\\nwith \\\\ help." in text
    assert 'x_total{path="a \\"quoted\\"\\\\path\\nnext"} 1' in text
    assert parse(text)['x_total{path="b"}'] == 2.5


def test_counter_refuses_wrong_labels_and_decrements() -> None:
    counter = Counter("y_total", "Y.", ("a",))
    with pytest.raises(ValueError, match="takes labels"):
        counter.inc(b="1")
    with pytest.raises(ValueError, match="cannot go down"):
        counter.inc(-1, a="1")
    with pytest.raises(ValueError, match="invalid metric name"):
        Counter("1bad", "x")
    with pytest.raises(ValueError, match="invalid label name"):
        Counter("ok", "x", ("__reserved",))
    with pytest.raises(ValueError, match="reserved"):
        Histogram("h", "x", ("le",))


def test_duplicate_registration_is_refused() -> None:
    registry = Registry()
    registry.register(Counter("dup_total", "x"))
    with pytest.raises(ValueError, match="already registered"):
        registry.register(Gauge("dup_total", "x"))


def test_gauge_callback_and_failing_callback() -> None:
    registry = Registry()
    depth = [7]
    gauge = registry.register(Gauge("queue", "Q.", lambda: depth[0]))
    assert parse(render_prometheus(registry))["queue"] == 7
    depth[0] = 3
    assert "queue 3\n" in render_prometheus(registry)

    def broken() -> float:
        raise RuntimeError("db down")

    gauge.set_function(broken)
    text = render_prometheus(registry)
    assert "# TYPE queue gauge" in text and "\nqueue " not in text
    gauge.set_function(None)
    gauge.set(1.5)
    assert parse(render_prometheus(registry))["queue"] == 1.5


def test_histogram_buckets_are_cumulative_with_inf_sum_and_count() -> None:
    registry = Registry()
    hist = registry.register(Histogram("lat_seconds", "L.", ("dest",), buckets=(0.1, 1.0)))
    for value in (0.05, 0.1, 0.5, 3.0):
        hist.observe(value, dest="ehr")
    samples = parse(render_prometheus(registry))
    assert samples['lat_seconds_bucket{dest="ehr",le="0.1"}'] == 2
    assert samples['lat_seconds_bucket{dest="ehr",le="1"}'] == 3
    assert samples['lat_seconds_bucket{dest="ehr",le="+Inf"}'] == 4
    assert samples['lat_seconds_count{dest="ehr"}'] == 4 == hist.count(dest="ehr")
    assert samples['lat_seconds_sum{dest="ehr"}'] == pytest.approx(3.65)
    hist.observe(float("nan"), dest="ehr")  # dropped: a NaN sum would never recover
    assert hist.count(dest="ehr") == 4


def test_values_render_as_prometheus_numbers() -> None:
    registry = Registry()
    gauge = registry.register(Gauge("g", "G."))
    for value, text in [(3.0, "3"), (0.25, "0.25"), (1e-05, "1e-05"), (float("inf"), "+Inf")]:
        gauge.set(value)
        assert render_prometheus(registry).endswith(f"\ng {text}\n")
        parse(render_prometheus(registry))
    with pytest.raises(ValueError):
        Counter("c_total", "C.").inc(float("nan"))


def test_engine_metrics_render_every_family() -> None:
    metrics = EngineMetrics()
    metrics.queue_depth.set_function(lambda: 4)
    metrics.record_receipt(channel="mllp", ack_code="AA", stored=True)
    metrics.record_receipt(channel="mllp", ack_code="AE", stored=False)
    metrics.delivery_latency.observe(0.2, destination="fhir-main")
    metrics.deliveries.inc(destination="fhir-main", outcome="delivered")
    metrics.dead_letters.inc(destination="payer")
    metrics.errors.inc(stage="deliver")
    text = render_prometheus(metrics.registry)
    samples = parse(text)
    assert samples['engine_messages_received_total{channel="mllp"}'] == 1
    assert samples['engine_acks_total{code="AA"}'] == samples['engine_acks_total{code="AE"}'] == 1
    assert samples["engine_queue_depth"] == 4
    assert samples['engine_deliveries_total{destination="fhir-main",outcome="delivered"}'] == 1
    assert samples['engine_delivery_latency_seconds_count{destination="fhir-main"}'] == 1
    families = re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M)
    assert dict(families) == {
        "engine_messages_received_total": "counter",
        "engine_acks_total": "counter",
        "engine_errors_total": "counter",
        "engine_queue_depth": "gauge",
        "engine_delivery_latency_seconds": "histogram",
        "engine_dead_letters_total": "counter",
        "engine_deliveries_total": "counter",
    }


def test_updates_from_many_threads_are_not_lost() -> None:
    metrics = EngineMetrics()

    def work() -> None:
        for _ in range(2000):
            metrics.acks.inc(code="AA")
            metrics.delivery_latency.observe(0.01, destination="d")

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert metrics.acks.value(code="AA") == 16000
    assert metrics.delivery_latency.count(destination="d") == 16000


def test_metrics_endpoint_is_open_and_counts_http_traffic(
    client: TestClient, token: Callable[[str], str]
) -> None:
    before = parse(client.get("/metrics").text)
    assert 'engine_messages_received_total{channel="http"}' not in before
    headers = {"Content-Type": "x-application/hl7-v2+er7", **bearer(token("integration"))}
    for _ in range(3):
        client.post(
            "/hl7v2", content=b"MSH|^~\\&|A|B|C|D|20260102||ADT^A04|1|P|2.5.1\r", headers=headers
        )
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    after = parse(response.text)
    assert after['engine_messages_received_total{channel="http"}'] == 3
    assert after['engine_acks_total{code="AA"}'] == 3


def test_metrics_can_require_a_viewer_token(
    make_app: AppFactory, auth: AuthSettings, token: Callable[[str], str]
) -> None:
    locked = auth.model_copy(update={"metrics_require_token": True})
    client = TestClient(make_app(auth_settings=locked))
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=bearer(token("integration"))).status_code == 403
    assert client.get("/metrics", headers=bearer(token("viewer"))).status_code == 200
