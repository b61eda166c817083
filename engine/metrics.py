"""Metrics: the engine's Prometheus metrics, kept by ``prometheus_client``.

What ``/metrics`` shows (text exposition format 0.0.4,
https://prometheus.io/docs/instrumenting/exposition_formats/#text-based-format)::

    engine_messages_received_total{channel}          counter    receiver
    engine_acks_total{code}                          counter    receiver
    engine_resends_total{outcome}                    counter    receiver
    engine_errors_total{stage}                       counter    receiver (receive, store),
                                                                worker (deliver)
    engine_messages_routed_total{route}              counter    worker
    engine_deliveries_total{destination,outcome}     counter    worker
    engine_delivery_latency_seconds{destination}     histogram  worker
    engine_dead_letters_total{destination}           counter    worker
    engine_worker_processes                          gauge      worker (livesum)
    engine_leader{node}                              gauge      worker (livemax)
    engine_config_generation                         gauge      the receiver, at scrape time
    engine_queue_depth                               gauge      the store, at scrape time
    engine_destination_queue_depth{destination}      gauge      the store, at scrape time
    engine_destination_oldest_waiting_seconds{destination}
                                                     gauge      the store, at scrape time
    engine_alerts_active{rule}                       gauge      the store, at scrape time
                                                                (engine/alerts/gauge.py)

New with issue 10: ``engine_messages_routed_total``, ``engine_worker_processes`` and the two
``engine_destination_*`` gauges; with issue 14: ``engine_leader`` (1 while the worker node
``node`` holds the singleton jobs' leadership, engine/jobs/leader.py, else 0) and
``engine_config_generation`` (the configuration generation the receiver runs,
engine/flow/config.py; 0 until this node has taken one, so a node behind the others shows) and
``engine_resends_total`` (``outcome`` ``duplicate`` or ``control_id_reused``: a feed whose
control IDs restart shows as the second, engine/store/resends.py). The
other names and label names are those dashboards already use: keep them.

Two ways to keep the values:

- in memory, in a ``CollectorRegistry`` of the instance's own (``EngineMetrics()``): one process,
  and tests, which build as many as they like;
- in files, prometheus_client's multiprocess mode (``EngineMetrics(multiprocess_dir=...)``):
  ``engine serve`` runs the receiver and its worker process(es) apart, each process writes its
  own values into the directory (``var/metrics``, emptied by the receiver at start with
  :func:`reset_multiprocess_dir`) and the receiver's ``/metrics`` adds them up
  (``MultiProcessCollector``). Counters and histograms are summed over every process that ever
  wrote, so a worker that was restarted keeps its counts. A process is in one mode or the other,
  and builds one ``EngineMetrics`` in multiprocess mode (two would write the same file entries).

Gauges in multiprocess mode: ``engine_worker_processes`` is ``livesum`` (each worker sets 1; the
receiver removes a stopped worker's file with :meth:`EngineMetrics.forget_process`);
``engine_leader`` is ``livemax``, by node id (a worker registers a new node id for each
configuration round, so the id of an earlier round stays at 0 until its process ends). The queue
gauges are not recorded by any process: a callback gauge (``Gauge.set_function``) cannot work in
multiprocess mode, which reads only the files, and the queue lives in the database anyway, so a
collector of our own queries the store when ``/metrics`` is scraped, and never between scrapes.

Labels carry names the engine chose (channel, ACK code, stage, route, destination, outcome) —
never a field of a message, so no patient data can reach a scrape.

Incomplete: no OpenMetrics output, no exemplars, no ``_created`` series (multiprocess mode
cannot keep them, so neither mode shows them).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import ParamSpec, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

__all__ = [
    "DEFAULT_LATENCY_BUCKETS",
    "Backlog",
    "EngineMetrics",
    "reset_multiprocess_dir",
]

log = logging.getLogger(__name__)

#: seconds; from a fast local FHIR server to a slow EHR API
DEFAULT_LATENCY_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

#: where prometheus_client's multiprocess mode keeps its files (inherited by spawned workers)
_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Backlog(Protocol):
    """One destination's waiting deliveries (``SqlMessageStore.backlog()`` returns these)."""

    @property
    def destination(self) -> str: ...

    @property
    def waiting(self) -> int: ...

    @property
    def oldest_age_s(self) -> float: ...


_P = ParamSpec("_P")


def _never_raises(record: Callable[_P, None]) -> Callable[_P, None]:
    """Metrics must never stop an ACK, a routing or a delivery: a value that cannot be written
    (multiprocess mode writes to memory-mapped files, which can fail) is logged and dropped."""

    @functools.wraps(record)
    def guarded(*args: _P.args, **kwargs: _P.kwargs) -> None:
        try:
            record(*args, **kwargs)
        except Exception as exc:
            log.warning(
                "metric not recorded",
                extra={"metric": record.__name__, "error": type(exc).__name__},
            )

    return guarded


def reset_multiprocess_dir(directory: Path) -> None:
    """Create ``directory`` or empty it of the files a previous run left (counts start at 0).

    Only the receiver calls this, before it starts any worker: a file removed while a process
    writes to it would lose that process's counts.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()


def _record_to_files(directory: Path) -> None:
    """Make this process keep its metric values in ``directory`` (multiprocess mode).

    prometheus_client chooses where values live once, when it is first imported, from
    ``PROMETHEUS_MULTIPROC_DIR``. A worker spawned after the receiver set the variable starts in
    that mode; the receiver itself imported prometheus_client before it read its Settings, so
    it switches here, the way prometheus_client's own tests do (before any metric exists).
    """
    directory = directory.resolve()
    current = os.environ.get(_MULTIPROC_ENV)
    if current and Path(current).resolve() != directory:
        raise ValueError(f"this process already keeps its metrics in {current}")
    os.environ[_MULTIPROC_ENV] = str(directory)
    if not values.ValueClass._multiprocess:
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


class _QueueGauges:
    """A collector: the queue gauges, read from the store when ``/metrics`` is scraped."""

    def __init__(self) -> None:
        self.backlog: Callable[[], Iterable[Backlog]] | None = None
        #: destinations shown at 0 when nothing waits for them (the store lists only the others)
        self.destinations: tuple[str, ...] = ()

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("engine_queue_depth", "Deliveries waiting in the outbound queue."),
            GaugeMetricFamily(
                "engine_destination_queue_depth",
                "Deliveries waiting (not delivered, not dead), by destination.",
                labels=("destination",),
            ),
            GaugeMetricFamily(
                "engine_destination_oldest_waiting_seconds",
                "Age of the oldest waiting delivery, by destination (0 when none waits).",
                labels=("destination",),
            ),
        )

    def describe(self) -> list[Metric]:
        """The families without samples: registering must not query the store."""
        return list(self._families())

    def collect(self) -> list[Metric]:
        total, depth, age = self._families()
        try:
            if self.backlog is not None:
                rows = {row.destination: row for row in self.backlog()}
                for name in sorted(set(self.destinations) | set(rows)):
                    row = rows.get(name)
                    depth.add_metric([name], row.waiting if row else 0)
                    age.add_metric([name], row.oldest_age_s if row else 0.0)
                total.add_metric([], sum(row.waiting for row in rows.values()))
        except Exception as exc:  # the database away: the scrape shows the rest, without these
            log.warning("queue gauges not read", extra={"error": type(exc).__name__})
            return list(self._families())
        return [total, depth, age]


class _ConfigGeneration:
    """A collector: ``engine_config_generation``, read when ``/metrics`` is scraped."""

    def __init__(self) -> None:
        self.generation: Callable[[], int | None] | None = None

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "engine_config_generation",
            "The configuration generation this node runs (published by a reload on any node "
            "of the database; 0 until this node has taken one).",
        )

    def describe(self) -> list[Metric]:
        return [self._family()]

    def collect(self) -> list[Metric]:
        family = self._family()
        if self.generation is not None:
            family.add_metric([], self.generation() or 0)
        return [family]


class EngineMetrics:
    """The engine's metrics: what the receiver and the workers record, and the page to scrape.

    ``multiprocess_dir``: keep the values in files there, so that ``/metrics`` in the receiver
    shows those of every process writing to it (see the module's docstring); ``None`` keeps them
    in memory, in a registry of this instance's own.
    """

    def __init__(
        self,
        *,
        latency_buckets: Iterable[float] = DEFAULT_LATENCY_BUCKETS,
        multiprocess_dir: Path | None = None,
    ) -> None:
        # the engine's metrics are the only prometheus_client metrics in its processes; the
        # ``_created`` series exist only in memory, so one switch keeps both modes' pages alike
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry()
        if multiprocess_dir is not None:
            _record_to_files(multiprocess_dir)
            MultiProcessCollector(self.registry, path=str(multiprocess_dir))  # type: ignore[no-untyped-call]
            own: CollectorRegistry | None = None  # values are read from the files, not objects
        else:
            own = self.registry
        self._message_metrics(own)
        self._delivery_metrics(own, tuple(latency_buckets))
        self._pull_metrics(own)
        self._workers = Gauge(
            "engine_worker_processes",
            "Worker processes running (processing and delivery) beside this receiver.",
            registry=own,
            multiprocess_mode="livesum",
        )
        self._leader = Gauge(
            "engine_leader",
            "1 while the worker node holds the leadership (it runs the singleton jobs: "
            "eligibility schedule, pulls, retention, alerts), else 0.",
            ("node",),
            registry=own,
            multiprocess_mode="livemax",
        )
        self._queues = _QueueGauges()
        self.registry.register(self._queues)
        self._config = _ConfigGeneration()
        self.registry.register(self._config)

    def _message_metrics(self, own: CollectorRegistry | None) -> None:
        """The receiver's and the processor's counters: received, ACKs, errors, routed."""
        self._received = Counter(
            "engine_messages_received_total",
            "Messages received and stored, by channel (mllp, http, fhir, file).",
            ("channel",),
            registry=own,
        )
        self._resends = Counter(
            "engine_resends_total",
            "Messages under a sender's control ID stored before, by outcome: duplicate (a resend,"
            " answered from the original) or control_id_reused (other content, stored anew).",
            ("outcome",),
            registry=own,
        )
        self._acks = Counter(
            "engine_acks_total",
            "Acknowledgments sent, by MSA-1 code (AA/CA accepted; AE/AR/CE/CR negative).",
            ("code",),
            registry=own,
        )
        self._errors = Counter(
            "engine_errors_total",
            "Failures, by pipeline stage (receive, store, parse, map, route, deliver).",
            ("stage",),
            registry=own,
        )
        self._routed = Counter(
            "engine_messages_routed_total",
            "Messages routed, by route (once per route that made deliveries for the message).",
            ("route",),
            registry=own,
        )

    def _delivery_metrics(
        self, own: CollectorRegistry | None, latency_buckets: tuple[float, ...]
    ) -> None:
        """The dispatcher's: delivery latency, attempts by outcome, dead letters."""
        self._latency = Histogram(
            "engine_delivery_latency_seconds",
            "Time from a message's receipt to its successful delivery, by destination.",
            ("destination",),
            registry=own,
            buckets=latency_buckets,
        )
        self._dead = Counter(
            "engine_dead_letters_total",
            "Deliveries given up after their last retry, by destination.",
            ("destination",),
            registry=own,
        )
        self._deliveries = Counter(
            "engine_deliveries_total",
            "Delivery attempts, by destination and outcome (delivered, retry, dead).",
            ("destination", "outcome"),
            registry=own,
        )

    def _pull_metrics(self, own: CollectorRegistry | None) -> None:
        """The pull sources': appointments read by outcome, pulls that stopped early."""
        self._pulled = Counter(
            "engine_pulled_appointments_total",
            "Appointments read by a pull source, by source and outcome (new: stored; unchanged: "
            "already stored, that version).",
            ("source", "outcome"),
            registry=own,
        )
        self._pull_failures = Counter(
            "engine_pull_failures_total",
            "Pulls that stopped early (the source failed or timed out), by source.",
            ("source",),
            registry=own,
        )

    @_never_raises
    def record_receipt(
        self, *, channel: str, ack_code: str | None, stored: bool, resend: str | None = None
    ) -> None:
        """Count one received message (when stored), the ACK it was answered with (if any) and,
        for a control ID stored before, what it was (``resend``: ``duplicate``, answered from
        the original; ``control_id_reused``, other content stored as a message of its own)."""
        if stored:
            self._received.labels(channel=channel).inc()
        if resend:
            self._resends.labels(outcome=resend).inc()
        if ack_code:
            self._acks.labels(code=ack_code).inc()

    @_never_raises
    def record_error(self, stage: str) -> None:
        """Count one failure at ``stage`` (receive, store, parse, map, route, deliver)."""
        self._errors.labels(stage=stage).inc()

    @_never_raises
    def record_routed(self, routes: Iterable[str]) -> None:
        """Count one message routed by each of ``routes`` (each route once)."""
        for route in set(routes):
            self._routed.labels(route=route).inc()

    @_never_raises
    def delivered(
        self, destination: str, seconds: float, ok: bool, dead: bool, needs_patient: bool = False
    ) -> None:
        """One delivery attempt's outcome (the dispatcher's ``Observer``): counted by outcome
        (delivered, retry, dead, needs-patient: the EHR does not know the patient, the delivery
        waits for an operator); its latency when delivered; a dead letter (and a ``deliver``
        error) when given up."""
        if needs_patient and not ok:
            outcome = "needs-patient"
        else:
            outcome = "delivered" if ok else ("dead" if dead else "retry")
        if ok:  # the latency first: a scrape that counts the delivery sees its latency too
            self._latency.labels(destination=destination).observe(seconds)
        self._deliveries.labels(destination=destination, outcome=outcome).inc()
        if dead and not ok:
            self._dead.labels(destination=destination).inc()
            self.record_error("deliver")

    @_never_raises
    def record_pull(self, source: str, *, new: int, unchanged: int, failed: bool) -> None:
        """One pull of ``source`` (engine/jobs/pull.py): its appointments by outcome, and
        whether it stopped early."""
        self._pulled.labels(source=source, outcome="new").inc(new)
        self._pulled.labels(source=source, outcome="unchanged").inc(unchanged)
        if failed:
            self._pull_failures.labels(source=source).inc()

    def watch_backlog(
        self, backlog: Callable[[], Iterable[Backlog]], destinations: Iterable[str] = ()
    ) -> None:
        """Read the queue gauges from ``backlog`` (``SqlMessageStore.backlog``) at each scrape;
        ``destinations`` (the routes' destinations) are shown at 0 when nothing waits for them."""
        self._queues.backlog = backlog
        self._queues.destinations = tuple(destinations)

    @_never_raises
    def worker_running(self) -> None:
        """Called once by each worker process: counts it in ``engine_worker_processes``."""
        self._workers.set(1)

    @_never_raises
    def record_leader(self, node: str, leading: bool) -> None:
        """Whether ``node`` leads now (``Leadership``'s ``on_change``): ``engine_leader``."""
        self._leader.labels(node=node).set(1 if leading else 0)

    def watch_config(self, generation: Callable[[], int | None]) -> None:
        """Read ``engine_config_generation`` from ``generation`` (the reloader's) at each scrape."""
        self._config.generation = generation

    def forget_process(self, pid: int) -> None:
        """A process that wrote here has ended: drop its live gauges (``engine_worker_processes``);
        its counters stay in the totals. Nothing to do in memory."""
        if self.multiprocess_dir is not None:
            mark_process_dead(pid, str(self.multiprocess_dir))  # type: ignore[no-untyped-call]

    def exposition(self) -> bytes:
        """Every metric, in the text exposition format 0.0.4 (queries the store's backlog)."""
        return generate_latest(self.registry)
