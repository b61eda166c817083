"""Metrics: a tiny registry of counters, gauges and histograms, rendered for Prometheus.

No dependency: the engine needs seven metrics, not a client library. The output follows the
Prometheus text exposition format 0.0.4
(https://prometheus.io/docs/instrumenting/exposition_formats/#text-based-format): one ``# HELP``
and one ``# TYPE`` line per family, label values escaped (backslash, double quote, newline),
histograms as cumulative ``_bucket{le=...}`` samples ending in ``le="+Inf"``, then ``_sum`` and
``_count``.

Every update takes the metric's lock: ACKs and deliveries are counted from worker threads while
the HTTP server renders ``/metrics`` on the event loop.

Labels carry names the engine chose (channel, ACK code, stage, destination, outcome) — never a
field of a message, so no patient data can reach a scrape.

Incomplete: no OpenMetrics output, no exemplars, no timestamps, unlabelled gauges only.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

__all__ = [
    "DEFAULT_LATENCY_BUCKETS",
    "ENGINE_METRICS",
    "Counter",
    "EngineMetrics",
    "Gauge",
    "Histogram",
    "Registry",
    "render_prometheus",
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

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

LabelKey = tuple[str, ...]
Sample = tuple[str, tuple[tuple[str, str], ...], float]


class _Metric:
    """A metric family: name, help text, label names, and values per label combination."""

    kind = "untyped"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        if not _NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labelnames:
            if not _LABEL.match(label) or label.startswith("__"):
                raise ValueError(f"invalid label name {label!r} for {name}")
        if len(set(labelnames)) != len(labelnames):
            raise ValueError(f"duplicate label names for {name}")
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> LabelKey:
        if set(labels) != set(self.labelnames):
            raise ValueError(
                f"{self.name} takes labels {sorted(self.labelnames)}, got {sorted(labels)}"
            )
        return tuple(str(labels[name]) for name in self.labelnames)

    def _pairs(self, key: LabelKey) -> tuple[tuple[str, str], ...]:
        return tuple(zip(self.labelnames, key, strict=True))

    def samples(self) -> list[Sample]:
        raise NotImplementedError


class Counter(_Metric):
    """A value that only goes up (per label combination)."""

    kind = "counter"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, documentation, labelnames)
        self._values: dict[LabelKey, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if not amount >= 0:  # also refuses NaN
            raise ValueError(f"{self.name}: a counter cannot go down")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        key = self._key(labels)
        with self._lock:
            return self._values.get(key, 0.0)

    def samples(self) -> list[Sample]:
        with self._lock:
            items = sorted(self._values.items())
        return [(self.name, self._pairs(key), value) for key, value in items]


class Gauge(_Metric):
    """A value that goes up and down; set directly or read from a callback at scrape time."""

    kind = "gauge"

    def __init__(
        self, name: str, documentation: str, function: Callable[[], float] | None = None
    ) -> None:
        super().__init__(name, documentation)
        self._value = 0.0
        self._function = function

    def set(self, value: float) -> None:
        with self._lock:
            self._value = float(value)

    def set_function(self, function: Callable[[], float] | None) -> None:
        """Read the value from ``function`` at every scrape (``None`` goes back to ``set``)."""
        with self._lock:
            self._function = function

    def value(self) -> float | None:
        """The current value; ``None`` when the callback fails (the scrape then omits it)."""
        with self._lock:
            function, value = self._function, self._value
        if function is None:
            return value
        try:
            return float(function())
        except Exception as exc:  # a broken callback must not break the whole scrape
            log.warning(
                "gauge callback failed", extra={"metric": self.name, "error": type(exc).__name__}
            )
            return None

    def samples(self) -> list[Sample]:
        value = self.value()
        return [] if value is None else [(self.name, (), value)]


class Histogram(_Metric):
    """Observations counted into fixed, cumulative buckets, with their sum and count."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        buckets: Iterable[float] = DEFAULT_LATENCY_BUCKETS,
    ) -> None:
        if "le" in labelnames:
            raise ValueError(f"{name}: 'le' is reserved for histogram buckets")
        super().__init__(name, documentation, labelnames)
        bounds = sorted(float(b) for b in buckets if not math.isinf(b))
        if not bounds or len(set(bounds)) != len(bounds):
            raise ValueError(f"{name}: buckets must be distinct finite numbers")
        self.buckets = (*bounds, math.inf)
        # per label combination: (count per bucket, non-cumulative), sum
        self._counts: dict[LabelKey, list[int]] = {}
        self._sums: dict[LabelKey, float] = {}

    def observe(self, value: float, **labels: str) -> None:
        """Count ``value`` into its bucket; NaN is dropped (it would poison ``_sum`` for good)."""
        key = self._key(labels)
        if math.isnan(value):
            return
        index = next(i for i, bound in enumerate(self.buckets) if value <= bound)
        with self._lock:
            counts = self._counts.setdefault(key, [0] * len(self.buckets))
            counts[index] += 1
            self._sums[key] = self._sums.get(key, 0.0) + value

    def count(self, **labels: str) -> int:
        key = self._key(labels)
        with self._lock:
            return sum(self._counts.get(key, ()))

    def samples(self) -> list[Sample]:
        with self._lock:
            snapshot = sorted(
                (key, list(counts), self._sums[key]) for key, counts in self._counts.items()
            )
        out: list[Sample] = []
        for key, counts, total in snapshot:
            pairs = self._pairs(key)
            running = 0
            for bound, n in zip(self.buckets, counts, strict=True):
                running += n
                out.append((f"{self.name}_bucket", (*pairs, ("le", _number(bound))), running))
            out.append((f"{self.name}_sum", pairs, total))
            out.append((f"{self.name}_count", pairs, running))
        return out


M = TypeVar("M", bound=_Metric)


class Registry:
    """The metric families one ``/metrics`` page shows, in registration order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._metrics: dict[str, _Metric] = {}

    def register(self, metric: M) -> M:
        with self._lock:
            if metric.name in self._metrics:
                raise ValueError(f"metric {metric.name} is already registered")
            self._metrics[metric.name] = metric
        return metric

    def __iter__(self) -> Iterator[_Metric]:
        with self._lock:
            return iter(list(self._metrics.values()))


def render_prometheus(registry: Registry) -> str:
    """The registry in the text exposition format 0.0.4 (``text/plain; version=0.0.4``)."""
    lines: list[str] = []
    for metric in registry:
        lines.append(f"# HELP {metric.name} {_escape_help(metric.documentation)}")
        lines.append(f"# TYPE {metric.name} {metric.kind}")
        for name, labels, value in metric.samples():
            if labels:
                rendered = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)
                lines.append(f"{name}{{{rendered}}} {_number(value)}")
            else:
                lines.append(f"{name} {_number(value)}")
    return "\n".join(lines) + "\n" if lines else ""


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    """A sample value as Prometheus parses it (Go ``ParseFloat`` plus ``+Inf``/``-Inf``/``NaN``)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


class EngineMetrics:
    """The engine's metrics, on a registry of their own (one per running engine or test)."""

    def __init__(self, *, latency_buckets: Iterable[float] = DEFAULT_LATENCY_BUCKETS) -> None:
        self.registry = Registry()
        reg = self.registry.register
        self.messages_received = reg(
            Counter(
                "engine_messages_received_total",
                "Messages received and stored, by channel (mllp, http, fhir, file).",
                ("channel",),
            )
        )
        self.acks = reg(
            Counter(
                "engine_acks_total",
                "Acknowledgments sent, by MSA-1 code (AA/CA accepted; AE/AR/CE/CR negative).",
                ("code",),
            )
        )
        self.errors = reg(
            Counter(
                "engine_errors_total",
                "Failures, by pipeline stage (receive, store, parse, map, route, deliver).",
                ("stage",),
            )
        )
        self.queue_depth = reg(
            Gauge("engine_queue_depth", "Deliveries waiting in the outbound queue.")
        )
        self.delivery_latency = reg(
            Histogram(
                "engine_delivery_latency_seconds",
                "Time from a message's receipt to its successful delivery, by destination.",
                ("destination",),
                latency_buckets,
            )
        )
        self.dead_letters = reg(
            Counter(
                "engine_dead_letters_total",
                "Deliveries given up after their last retry, by destination.",
                ("destination",),
            )
        )
        self.deliveries = reg(
            Counter(
                "engine_deliveries_total",
                "Delivery attempts, by destination and outcome (delivered, retry, dead).",
                ("destination", "outcome"),
            )
        )

    def record_receipt(self, *, channel: str, ack_code: str | None, stored: bool) -> None:
        """Count one received message (when stored) and the ACK it was answered with (if any)."""
        if stored:
            self.messages_received.inc(channel=channel)
        if ack_code:
            self.acks.inc(code=ack_code)


#: the process-wide metrics that ``engine serve`` wires; tests build their own EngineMetrics
ENGINE_METRICS = EngineMetrics()
