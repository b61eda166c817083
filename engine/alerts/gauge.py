"""``engine_alerts_active{rule}``: the alerts raised now, by rule, on the receiver's ``/metrics``.

A Prometheus collector (``collect`` at each scrape, as the queue gauges of engine/metrics.py):
the worker raises and clears alerts in the database (engine/alerts/state.py), so the receiver
reads them there when it is scraped, with one query on the raised rows
(:func:`~engine.alerts.state.raised_by_rule`, on ``ix_alerts_state``), and never between scrapes.
A callback gauge could not do it: prometheus_client's multiprocess mode reads only its files.

The value is the number of subjects a rule is raised for (destinations for ``queue-age``, payers
with ``per_payer``, else one). Every rule of ``alerts.yaml`` is shown, at 0 when it has raised
nothing, so an alerting rule on the series needs no ``absent()``; a rule removed from the file
shows while its alert is still raised (the worker retires it at its next evaluation). The label
is the rule's name from ``alerts.yaml`` (letters, digits, ``.``, ``_``, ``-``): never a message's
content. Alerts live in the database, so every node shows the same values: aggregate over nodes
with ``max``, not ``sum``.

``engine serve`` registers it beside the engine's metrics (engine/service.py) and tells it the
rules again at each reload.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from sqlalchemy import Engine

from engine.alerts.state import raised_by_rule

__all__ = ["ActiveAlertsGauge"]

log = logging.getLogger(__name__)


class ActiveAlertsGauge:
    """A collector for ``registry.register``: ``engine_alerts_active`` read from the store."""

    def __init__(self, db_engine: Engine, rules: Iterable[str] = ()) -> None:
        self.db_engine = db_engine
        #: the rules of ``alerts.yaml``, shown at 0 when they have raised nothing
        self.rules: tuple[str, ...] = tuple(rules)

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "engine_alerts_active",
            "Alerts raised now, by alert rule (one per subject: a destination, a payer).",
            labels=("rule",),
        )

    def describe(self) -> list[Metric]:
        """The family without samples: registering must not query the store."""
        return [self._family()]

    def collect(self) -> list[Metric]:
        family = self._family()
        try:
            raised = raised_by_rule(self.db_engine)
        except Exception as exc:  # the database away: the scrape shows the rest, without these
            log.warning("alert gauge not read", extra={"error": type(exc).__name__})
            return [family]
        for rule in sorted(set(self.rules) | set(raised)):
            family.add_metric([rule], raised.get(rule, 0))
        return [family]
