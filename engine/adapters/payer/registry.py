"""Which adapter a payer file's ``adapter:`` kind builds: the one place that knows them all.

The contract (:mod:`.contract`) names no adapter, and no adapter names another: each kind is one
builder here, so adding a kind (a SOAP clearinghouse, say) is one import and one entry.

* ``x12-http``: :class:`~engine.adapters.payer.x12_http.X12HttpPayer`, a clearinghouse in the
  CAQH CORE real-time style;
* ``stub``: the stub payer (:mod:`engine.sim.payer`), answering in-process from its roster; a
  stub with a ``url`` is the stub payer over HTTP (``engine payer-stub``), reached with the
  ``x12-http`` adapter like any clearinghouse.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from engine.adapters.payer.config import PayerConfig
from engine.adapters.payer.contract import PayerAdapter
from engine.adapters.payer.x12_http import X12HttpPayer
from engine.sim.payer.roster import load_roster
from engine.sim.payer.stub import StubPayer

__all__ = ["BUILDERS", "PayerBuilder", "build_payer"]

#: builds the adapter for one payer: (the payer ID or a label for logs, its config)
PayerBuilder = Callable[[str, PayerConfig], PayerAdapter]


def _x12_http(name: str, config: PayerConfig) -> PayerAdapter:
    return X12HttpPayer(name, config)


def _stub(name: str, config: PayerConfig) -> PayerAdapter:
    if config.url is not None:
        return X12HttpPayer(name, config)
    return StubPayer(
        load_roster(config.roster),
        name=name,
        latency_ms=config.latency_ms,
        jitter_ms=config.jitter_ms,
        max_concurrency=config.max_concurrency,
    )


#: adapter kind (``PayerConfig.adapter``) -> builder
BUILDERS: Final[dict[str, PayerBuilder]] = {"stub": _stub, "x12-http": _x12_http}


def build_payer(name: str, config: PayerConfig) -> PayerAdapter:
    """The adapter for one payer's config (``name``: the payer ID, or a label for logs).

    Raises :class:`~engine.errors.ConfigError` when the config cannot work (a secret's
    environment variable not set, a roster file that does not load).
    """
    return BUILDERS[config.adapter](name, config)
