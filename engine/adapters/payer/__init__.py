"""Payers: how the engine asks insurers about eligibility (X12 270 out, 271 back).

:class:`PayerAdapter` is the contract (:mod:`.contract`); payer files say which adapter reaches
which payer (:mod:`.config`) and :func:`.registry.build_payer` builds it; ``x12-http`` talks to a
clearinghouse in the CAQH CORE real-time style (:mod:`.x12_http`, its wire format in :mod:`.core`);
the ``stub`` kind is the stub payer of :mod:`engine.sim.payer`; :class:`MemoryPayer` is the fake
for tests. The registry is not imported here: it imports the simulator, which imports this
package's contract.
"""

from engine.adapters.payer.config import PayerConfig, PayerSet, load_payers
from engine.adapters.payer.contract import (
    PayerAdapter,
    PayerRejected,
    PayerUnavailable,
    check_answer,
)
from engine.adapters.payer.memory import MemoryPayer

__all__ = [
    "MemoryPayer",
    "PayerAdapter",
    "PayerConfig",
    "PayerRejected",
    "PayerSet",
    "PayerUnavailable",
    "check_answer",
    "load_payers",
]
