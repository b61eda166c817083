"""Helpers for the payer tests: 270s about the roster's synthetic members."""

from __future__ import annotations

from datetime import date, datetime

from engine.x12.x270 import EligibilityInquiry, Payer, Person, Provider, build_270

#: the day every inquiry asks about (the roster's coverage dates are chosen around it)
SERVICE_DATE = date(2026, 11, 30)
NOW = datetime(2026, 11, 27, 18, 0)
TRACE = "TRC000000123"


def inquiry(
    member_id: str,
    last: str = "",
    first: str = "",
    birth: date | None = None,
    *,
    dependent: Person | None = None,
    payer_id: str = "SYNPAY",
    types: tuple[str, ...] = ("30",),
    service_date: date | None = SERVICE_DATE,
) -> EligibilityInquiry:
    return EligibilityInquiry(
        payer=Payer("SYNTHETIC HEALTH PLAN", payer_id),
        provider=Provider(npi="1234567893", organization="EXAMPLE FAMILY PRACTICE"),
        subscriber=Person(last_name=last, first_name=first, birth_date=birth, member_id=member_id),
        dependent=dependent,
        trace_number=TRACE,
        originator_id="1234567893",
        service_date=service_date,
        service_types=types,
    )


def x270(q: EligibilityInquiry, control_number: int = 42) -> str:
    return build_270(
        q,
        sender_id="ENGINE",
        receiver_id=q.payer.payer_id,
        control_number=control_number,
        now=NOW,
    )


def alice(**kwargs: object) -> EligibilityInquiry:
    """The roster's active PPO member with every kind of benefit."""
    return inquiry("XQZ123456789", "Testpatient", "Alice", date(1984, 2, 29), **kwargs)  # type: ignore[arg-type]
