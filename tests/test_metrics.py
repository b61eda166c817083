"""engine.metrics: the families and labels dashboards read, the queue gauges read at scrape time,
and multiprocess mode (several processes record, one page shows them all)."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.metrics import EngineMetrics, reset_multiprocess_dir
from engine.store import Incoming, NewDelivery, Processed, SqlMessageStore
from tests.metrics_support import families, parse, record_in_process

#: the families, types and label names the engine showed before prometheus_client (keep them)
BEFORE = {
    "engine_messages_received_total": "counter",
    "engine_acks_total": "counter",
    "engine_errors_total": "counter",
    "engine_queue_depth": "gauge",
    "engine_delivery_latency_seconds": "histogram",
    "engine_dead_letters_total": "counter",
    "engine_deliveries_total": "counter",
}


@dataclass(frozen=True)
class Row:
    destination: str
    waiting: int
    oldest_age_s: float


def page(metrics: EngineMetrics) -> str:
    return metrics.exposition().decode()


def test_every_family_with_its_labels_and_values() -> None:
    metrics = EngineMetrics(latency_buckets=(0.1, 1.0))
    metrics.record_receipt(channel="mllp", ack_code="AA", stored=True)
    metrics.record_receipt(channel="mllp", ack_code="AE", stored=False)
    metrics.record_receipt(channel="http", ack_code=None, stored=True)
    metrics.record_error("receive")
    metrics.delivered("fhir-main", 0.05, True, False)
    metrics.delivered("fhir-main", 0.5, True, False)
    metrics.delivered("fhir-main", 3.0, True, False)
    metrics.delivered("fhir-main", 1.0, False, False)
    metrics.delivered("payer", 0.0, False, True)
    metrics.record_routed(["adt-to-fhir", "adt-to-fhir", "adt-to-archive"])
    metrics.record_pull("clinic", new=3, unchanged=2, failed=False)
    metrics.record_pull("clinic", new=0, unchanged=1, failed=True)
    metrics.watch_backlog(lambda: [Row("fhir-main", 4, 12.5)], destinations=["payer"])
    metrics.record_leader("host:1:a", True)
    metrics.record_leader("host:2:b", False)
    metrics.watch_config(lambda: 7)
    text = page(metrics)
    assert families(text) == {
        **BEFORE,
        "engine_messages_routed_total": "counter",
        "engine_worker_processes": "gauge",
        "engine_leader": "gauge",
        "engine_config_generation": "gauge",
        "engine_destination_queue_depth": "gauge",
        "engine_destination_oldest_waiting_seconds": "gauge",
        "engine_pulled_appointments_total": "counter",
        "engine_pull_failures_total": "counter",
        "engine_resends_total": "counter",
    }
    assert parse(text) == {
        'engine_messages_received_total{channel="mllp"}': 1,
        'engine_messages_received_total{channel="http"}': 1,
        'engine_acks_total{code="AA"}': 1,
        'engine_acks_total{code="AE"}': 1,
        'engine_errors_total{stage="receive"}': 1,
        'engine_errors_total{stage="deliver"}': 1,
        'engine_messages_routed_total{route="adt-to-fhir"}': 1,
        'engine_messages_routed_total{route="adt-to-archive"}': 1,
        'engine_delivery_latency_seconds_bucket{destination="fhir-main",le="0.1"}': 1,
        'engine_delivery_latency_seconds_bucket{destination="fhir-main",le="1.0"}': 2,
        'engine_delivery_latency_seconds_bucket{destination="fhir-main",le="+Inf"}': 3,
        'engine_delivery_latency_seconds_count{destination="fhir-main"}': 3,
        'engine_delivery_latency_seconds_sum{destination="fhir-main"}': 3.55,
        'engine_dead_letters_total{destination="payer"}': 1,
        'engine_deliveries_total{destination="fhir-main",outcome="delivered"}': 3,
        'engine_deliveries_total{destination="fhir-main",outcome="retry"}': 1,
        'engine_deliveries_total{destination="payer",outcome="dead"}': 1,
        'engine_pulled_appointments_total{outcome="new",source="clinic"}': 3,
        'engine_pulled_appointments_total{outcome="unchanged",source="clinic"}': 3,
        'engine_pull_failures_total{source="clinic"}': 1,
        "engine_worker_processes": 0,
        'engine_leader{node="host:1:a"}': 1,
        'engine_leader{node="host:2:b"}': 0,
        "engine_config_generation": 7,
        "engine_queue_depth": 4,
        'engine_destination_queue_depth{destination="fhir-main"}': 4,
        'engine_destination_queue_depth{destination="payer"}': 0,
        'engine_destination_oldest_waiting_seconds{destination="fhir-main"}': 12.5,
        'engine_destination_oldest_waiting_seconds{destination="payer"}': 0,
    }
    assert "# HELP engine_queue_depth Deliveries waiting in the outbound queue.\n" in text
    assert "_created" not in text  # multiprocess mode has none, so neither mode shows them


def test_label_values_are_escaped() -> None:
    metrics = EngineMetrics()
    metrics.record_routed(['a "quoted"\\route\nnext'])
    text = page(metrics)
    assert 'engine_messages_routed_total{route="a \\"quoted\\"\\\\route\\nnext"} 1.0\n' in text
    parse(text)


def test_each_instance_counts_alone() -> None:
    first, second = EngineMetrics(), EngineMetrics()
    first.record_error("store")
    assert parse(page(first))['engine_errors_total{stage="store"}'] == 1
    assert 'engine_errors_total{stage="store"}' not in parse(page(second))


def test_the_backlog_is_read_at_scrape_time_only() -> None:
    calls: list[int] = []
    rows = [Row("lab", 2, 30.0)]

    def backlog() -> list[Row]:
        calls.append(1)
        return rows

    metrics = EngineMetrics()
    metrics.watch_backlog(backlog)
    metrics.record_receipt(channel="mllp", ack_code="AA", stored=True)
    assert calls == []
    assert parse(page(metrics))['engine_destination_queue_depth{destination="lab"}'] == 2
    rows = [Row("lab", 1, 5.0), Row("pharmacy", 7, 60.0)]
    samples = parse(page(metrics))
    assert len(calls) == 2
    assert samples["engine_queue_depth"] == 8
    assert samples['engine_destination_oldest_waiting_seconds{destination="lab"}'] == 5
    assert samples['engine_destination_oldest_waiting_seconds{destination="pharmacy"}'] == 60
    rows = []  # emptied: a destination nobody named is no longer listed
    samples = parse(page(metrics))
    assert samples["engine_queue_depth"] == 0
    assert not any(key.startswith("engine_destination_") for key in samples)


def test_a_failing_backlog_leaves_the_rest_of_the_page(caplog: pytest.LogCaptureFixture) -> None:
    def backlog() -> list[Row]:
        raise RuntimeError("database gone")

    metrics = EngineMetrics()
    metrics.watch_backlog(backlog, destinations=["lab"])
    metrics.record_receipt(channel="mllp", ack_code="AA", stored=True)
    with caplog.at_level(logging.WARNING, logger="engine.metrics"):
        text = page(metrics)
    samples = parse(text)
    assert samples['engine_acks_total{code="AA"}'] == 1
    assert "# TYPE engine_queue_depth gauge" in text
    assert not any(key.startswith(("engine_queue", "engine_destination_")) for key in samples)
    assert [r.getMessage() for r in caplog.records] == ["queue gauges not read"]


def test_the_queue_gauges_from_a_real_store(store: SqlMessageStore) -> None:
    for destination, patient in (("lab", "A"), ("lab", "A"), ("lab", "B"), ("archive", "C")):
        [stored] = store.save_batch([Incoming(raw=b"MSH|", channel="test")])
        delivery = NewDelivery(destination, "r", "hl7v2", "text/plain", b"x", patient)
        store.finish_batch([Processed(stored.id, "routed", None, patient, [delivery])])
    metrics = EngineMetrics()
    metrics.watch_backlog(store.backlog, destinations=["lab", "archive", "payer"])
    samples = parse(page(metrics))
    assert samples["engine_queue_depth"] == 4
    assert samples['engine_destination_queue_depth{destination="lab"}'] == 3
    assert samples['engine_destination_queue_depth{destination="archive"}'] == 1
    assert samples['engine_destination_queue_depth{destination="payer"}'] == 0
    assert samples['engine_destination_oldest_waiting_seconds{destination="lab"}'] >= 0
    assert samples['engine_destination_oldest_waiting_seconds{destination="payer"}'] == 0


def test_updates_from_many_threads_are_not_lost() -> None:
    metrics = EngineMetrics()

    def work() -> None:
        for _ in range(2000):
            metrics.record_receipt(channel="mllp", ack_code="AA", stored=False)
            metrics.delivered("d", 0.01, True, False)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    samples = parse(page(metrics))
    assert samples['engine_acks_total{code="AA"}'] == 16000
    assert samples['engine_delivery_latency_seconds_count{destination="d"}'] == 16000


def test_two_processes_record_and_the_receiver_shows_both(metrics_dir: Path) -> None:
    workers = [
        record_in_process(metrics_dir, "fhir-main", 3, inherit_env=True),
        record_in_process(metrics_dir, "fhir-main", 2, inherit_env=False),
    ]
    pids = []
    for worker in workers:
        out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        pids.append(int(out))
    receiver = EngineMetrics(multiprocess_dir=metrics_dir, latency_buckets=(0.1, 1.0))
    receiver.record_receipt(channel="mllp", ack_code="AA", stored=True)
    receiver.watch_backlog(lambda: [Row("fhir-main", 1, 2.0)])
    text = page(receiver)
    samples = parse(text)
    assert samples['engine_deliveries_total{destination="fhir-main",outcome="delivered"}'] == 5
    assert samples['engine_deliveries_total{destination="fhir-main",outcome="dead"}'] == 2
    assert samples['engine_dead_letters_total{destination="fhir-main"}'] == 2
    assert samples['engine_errors_total{stage="deliver"}'] == 2
    assert samples['engine_messages_routed_total{route="adt-to-fhir"}'] == 2
    assert samples['engine_delivery_latency_seconds_bucket{destination="fhir-main",le="0.1"}'] == 0
    assert samples['engine_delivery_latency_seconds_bucket{destination="fhir-main",le="1.0"}'] == 5
    assert samples['engine_delivery_latency_seconds_bucket{destination="fhir-main",le="+Inf"}'] == 5
    assert samples['engine_delivery_latency_seconds_count{destination="fhir-main"}'] == 5
    assert samples['engine_delivery_latency_seconds_sum{destination="fhir-main"}'] == 2.5
    assert samples['engine_messages_received_total{channel="mllp"}'] == 1
    assert samples['engine_acks_total{code="AA"}'] == 1
    assert samples["engine_worker_processes"] == 2
    assert samples["engine_queue_depth"] == 1
    assert families(text).items() >= BEFORE.items()
    # a worker that ended no longer counts as running; what it delivered still does
    receiver.forget_process(pids[0])
    samples = parse(page(receiver))
    assert samples["engine_worker_processes"] == 1
    assert samples['engine_deliveries_total{destination="fhir-main",outcome="delivered"}'] == 5


def test_the_leader_gauge_follows_the_term_and_ends_with_its_process(metrics_dir: Path) -> None:
    metrics = EngineMetrics(multiprocess_dir=metrics_dir)
    assert not any(k.startswith("engine_leader") for k in parse(page(metrics)))
    metrics.record_leader("host:1:a", False)  # a node that does not lead shows 0
    assert parse(page(metrics))['engine_leader{node="host:1:a"}'] == 0
    metrics.record_leader("host:1:a", True)
    assert parse(page(metrics))['engine_leader{node="host:1:a"}'] == 1
    metrics.record_leader("host:1:a", False)
    assert parse(page(metrics))['engine_leader{node="host:1:a"}'] == 0
    metrics.record_leader("host:1:a", True)
    metrics.forget_process(os.getpid())  # its process ended (livemax): no stale 1 for it
    assert not any(k.startswith("engine_leader") for k in parse(page(metrics)))


def test_the_configuration_generation_is_read_at_scrape_time() -> None:
    metrics = EngineMetrics()
    generation: list[int | None] = [None]
    metrics.watch_config(lambda: generation[0])
    assert parse(page(metrics))["engine_config_generation"] == 0  # none taken yet
    generation[0] = 3
    assert parse(page(metrics))["engine_config_generation"] == 3


def test_a_new_run_starts_from_zero(metrics_dir: Path) -> None:
    worker = record_in_process(metrics_dir, "lab", 1, inherit_env=True)
    _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert list(metrics_dir.glob("*.db"))
    reset_multiprocess_dir(metrics_dir)
    assert list(metrics_dir.glob("*.db")) == []


def test_one_process_keeps_its_metrics_in_one_directory(metrics_dir: Path) -> None:
    EngineMetrics(multiprocess_dir=metrics_dir)
    with pytest.raises(ValueError, match="already keeps its metrics in"):
        EngineMetrics(multiprocess_dir=metrics_dir.parent / "elsewhere")


def test_a_metric_that_cannot_be_written_never_stops_the_flow(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Multiprocess files can fail to write: the ACK, the routing and the delivery go on."""
    metrics = EngineMetrics()

    def broken(*_args: object, **_kwargs: object) -> None:
        raise OSError("no space left on device")

    for counter in (metrics._received, metrics._routed, metrics._deliveries, metrics._errors):
        monkeypatch.setattr(counter, "labels", broken)
    with caplog.at_level(logging.WARNING, logger="engine.metrics"):
        metrics.record_receipt(channel="mllp", ack_code="AA", stored=True)
        metrics.record_routed(["adt-to-fhir"])
        metrics.delivered("local-fhir", 0.01, ok=False, dead=True)
        metrics.record_error("store")
    failed = [r for r in caplog.records if r.getMessage() == "metric not recorded"]
    assert [r.metric for r in failed] == [  # type: ignore[attr-defined]
        "record_receipt",
        "record_routed",
        "delivered",
        "record_error",
    ]
    assert all(r.error == "OSError" for r in failed)  # type: ignore[attr-defined]


def test_a_delivery_waiting_for_its_patient_is_counted_as_such() -> None:
    """needs-patient is neither a retry nor a dead letter: the EHR does not know the patient."""
    metrics = EngineMetrics()
    metrics.delivered("epic", 0.2, ok=False, dead=False, needs_patient=True)
    samples = parse(page(metrics))
    assert samples['engine_deliveries_total{destination="epic",outcome="needs-patient"}'] == 1
    assert 'engine_deliveries_total{destination="epic",outcome="retry"}' not in samples
    assert 'engine_dead_letters_total{destination="epic"}' not in samples
