"""What a check of eligibility says, as the scheduled runs and the console see it: the outcome
of one check, a 271's verdict for the front desk, and the verdicts given without asking the
payer (engine/jobs/eligibility.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from engine.x12.x271 import Benefit, EligibilityResult

__all__ = [
    "ALREADY_CHECKED",
    "IN_FLIGHT",
    "INTERRUPTED",
    "UNAVAILABLE_AAA",
    "CheckOutcome",
    "verdict",
]

#: AAA reject reasons that say the payer could not answer now (retry later)
UNAVAILABLE_AAA = frozenset({"42", "79", "80", "T4"})
#: EB03 service types whose copay the front desk collects, in order of preference
_VISIT_TYPES = ("98", "30", "BZ", "A3")


@dataclass(frozen=True)
class CheckOutcome:
    """One check's verdict, as stored."""

    check_id: int | None
    status: str
    patient_url: str
    payer_id: str
    copay: str | None = None
    deductible_remaining: str | None = None
    reason: str | None = None
    reused: bool = False


#: the status of an appointment a resumed run finds checked by its earlier part
ALREADY_CHECKED = "already_checked"
#: the verdict of an appointment whose 270 was out when its run's node died (no answer recorded)
INTERRUPTED = {
    "status": "needs_action",
    "reason": (
        "the check was interrupted when the node running it stopped, after its 270 went to "
        "the payer: not asked twice; check this coverage again by hand"
    ),
}


#: the verdict of an appointment whose patient another run sent a 270 about today, with the same
#: payer (for this appointment or another: the payer answers about the member), that run's node
#: having stopped before the answer was recorded (the run not resumed yet). Not a wait for that
#: answer: it died with the node and never comes; the front desk checks the coverage once by hand
IN_FLIGHT = {
    "status": "needs_action",
    "reason": (
        "a 270 for this patient with this payer went out today in a run whose node stopped "
        "before the answer was recorded: not asked twice; check this coverage again by hand"
    ),
}


def _money(value: Decimal | None) -> str | None:
    return None if value is None else f"{value:.2f}"


def _pick(
    benefits: Sequence[Benefit], info: str, *, remaining: bool | None = None
) -> Benefit | None:
    """The benefit of this EB01 that applies to an office visit, in network, individual."""
    candidates = [b for b in benefits if b.info.code == info and b.amount is not None]
    if remaining is not None:
        candidates = [
            b
            for b in candidates
            if (b.time_period is not None and b.time_period.code == "29") == remaining
        ]

    def score(b: Benefit) -> tuple[int, int, int]:
        types = [t.code for t in b.service_types] or ["30"]
        kind = min((_VISIT_TYPES.index(t) for t in types if t in _VISIT_TYPES), default=9)
        network = 0 if b.in_network is True else 1 if b.in_network is None else 2
        level = 0 if b.coverage_level is None or b.coverage_level.code == "IND" else 1
        return (network, kind, level)

    return min(candidates, key=score) if candidates else None


def verdict(result: EligibilityResult) -> dict[str, Any]:
    """The front desk's view of one 271 result."""
    if result.errors:
        reasons = "; ".join(f"AAA {e.reason.code} {e.reason.meaning}" for e in result.errors)
        if any(e.reason.code in UNAVAILABLE_AAA for e in result.errors):
            return {"status": "payer_unavailable", "reason": reasons}
        return {"status": "needs_action", "reason": reasons}
    active = result.active
    if active is None:
        return {
            "status": "needs_action",
            "reason": "the payer did not say whether coverage is active",
        }
    if not active:
        return {
            "status": "inactive",
            "reason": "the payer says the coverage is not active",
            "plan": result.plan or None,
        }
    copay = _pick(result.benefits, "B")
    deductible = _pick(result.benefits, "C", remaining=False)
    remaining = _pick(result.benefits, "C", remaining=True)
    return {
        "status": "eligible",
        "copay": _money(copay.amount if copay else None),
        "deductible": _money(deductible.amount if deductible else None),
        "deductible_remaining": _money(remaining.amount if remaining else None),
        "plan": result.plan or None,
    }
