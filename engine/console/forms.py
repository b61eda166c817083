"""The console's search forms, the parts the message search and the audit trail share: the
form's paging links, the keyset cursor (``before``) and the dates, read in the practice's time
zone and kept within the years the store takes (a year out of range answers 422, not an
overflow).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from engine.store.audit import YEARS

__all__ = ["BIGINT_MAX", "SearchForm", "form_time", "keyset_cursor"]

#: the largest key the store's BIGINT columns hold
BIGINT_MAX = 2**63 - 1


class SearchForm:
    """A search form as typed (a frozen dataclass of strings), shown again as typed."""

    def link(self, **extra: Any) -> str:
        """The page's query string with these filters (and ``extra``), for the paging links."""
        pairs = {k: v for k, v in vars(self).items() if v}
        pairs.update({k: v for k, v in extra.items() if v is not None})
        return "?" + urlencode(pairs) if pairs else "?"


def keyset_cursor(value: str, what: str) -> int | None:
    """``before`` as typed: empty, or a key (``what`` names it in the error)."""
    value = value.strip()
    if not value:
        return None
    if not value.isdigit() or not 1 <= int(value) <= BIGINT_MAX:
        raise ValueError(f"before: not {what}")
    return int(value)


def form_time(
    value: str, zone: str, name: str, *, end: bool = False, times: bool = True
) -> datetime | None:
    """A date (``2026-12-03``), or with ``times`` a time too (``2026-12-03T09:15``), in the
    practice's zone ``zone``; a date alone as ``end`` (the "to" field) includes that whole day:
    the next local midnight. ValueError names the field (``name``) and what is wrong."""
    value = value.strip()
    if not value:
        return None
    shape = "YYYY-MM-DD[THH:MM]" if times else "YYYY-MM-DD"
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        when = None
    if when is None or (not times and len(value) != 10):
        raise ValueError(f"{name}: {value[:40]!r} is not a date ({shape})") from None
    if not YEARS[0] <= when.year <= YEARS[1]:
        raise ValueError(f"{name}: {value!r} is out of range (years {YEARS[0]} to {YEARS[1]})")
    when = when if when.tzinfo else when.replace(tzinfo=ZoneInfo(zone))
    if end and "T" not in value and " " not in value:  # a day: up to the next local midnight
        day = when.date() + timedelta(days=1)
        return datetime(day.year, day.month, day.day, tzinfo=when.tzinfo)
    return when
