"""Payers: how the engine asks insurers about eligibility (X12 270 out, 271 back).

:class:`PayerAdapter` is the contract (:mod:`.contract`); payer files say which adapter reaches
which payer (:mod:`.config`); ``x12-http`` talks to a clearinghouse in the CAQH CORE real-time
style (:mod:`.x12_http`); the stub payer answers from a synthetic roster in-process
(:mod:`.stub`) or over HTTP (:mod:`.stub_http`); :class:`MemoryPayer` is the fake for tests.
"""

from engine.adapters.payer.config import PayerConfig, PayerSet, load_payers
from engine.adapters.payer.contract import (
    PayerAdapter,
    PayerRejected,
    PayerUnavailable,
    build_payer,
    check_answer,
)
from engine.adapters.payer.memory import MemoryPayer
from engine.adapters.payer.stub import StubPayer

__all__ = [
    "MemoryPayer",
    "PayerAdapter",
    "PayerConfig",
    "PayerRejected",
    "PayerSet",
    "PayerUnavailable",
    "StubPayer",
    "build_payer",
    "check_answer",
    "load_payers",
]
