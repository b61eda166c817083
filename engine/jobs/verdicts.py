"""What a check of eligibility says, as the scheduled runs and the console see it: the outcome
of one check, and the verdicts given without asking the payer (engine/jobs/eligibility.py)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ALREADY_CHECKED", "IN_FLIGHT", "INTERRUPTED", "CheckOutcome"]


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


#: the verdict of an appointment whose 270 another run sent today, that run's node having
#: stopped before the answer was recorded (the run not resumed yet)
IN_FLIGHT = {
    "status": "needs_action",
    "reason": (
        "a 270 for this appointment went to the payer today in a run whose node stopped before "
        "the answer was recorded: not asked twice; check this coverage again by hand"
    ),
}
