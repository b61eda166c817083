"""The day the front desk's views open on when none is asked for: the next business day where
the practice is.

The eligibility job checks the coming business days first (engine.jobs.targets.
business_days) and ``engine demo`` books its appointments on the next one; so the console's
worklist, the dashboard's eligibility and ``engine eligibility list`` open on that day too, by
the job's own rule: Monday after a Friday, a Saturday or a Sunday, not the weekend day after
it, which has no appointment. Its own module (no FastAPI), so the CLI takes it without the web
app, and the pages without importing one another.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from engine.jobs.targets import business_days

__all__ = ["next_business_day"]


def _now() -> datetime:
    """The time now (a test sets another clock here)."""
    return datetime.now(UTC)


def next_business_day(timezone: str, now: datetime | None = None) -> date:
    """The first business day after today (``now``'s day where the practice is, ``timezone``)."""
    today = (now or _now()).astimezone(ZoneInfo(timezone)).date()
    return business_days(today + timedelta(days=1), 1)[0]
