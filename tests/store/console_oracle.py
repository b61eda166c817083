"""The dashboard's received figures computed the plain way, one query per figure, as the
console read them before ``received_figures`` read the day's messages once: the tests' oracle
for that one-pass read."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select

from engine.store import SqlMessageStore
from engine.store.console_stats import _RECEIVED, _bucket, _bucket_start, _starts
from engine.store.db import utcnow
from engine.store.tables import messages


def received_counts(store: SqlMessageStore, since: datetime) -> dict[str, int]:
    """Messages received since ``since``, per state they are in now."""
    with store.db_engine.connect() as conn:
        return {r.state: int(r.n) for r in conn.execute(_RECEIVED, {"since": since})}


def ingest_rate(
    store: SqlMessageStore, span: str, now: datetime | None = None
) -> list[tuple[datetime, int]]:
    """Messages received per hour over the last day (``span`` ``day``: 24 buckets) or per
    minute over the last hour (``hour``: 60 buckets), oldest first, empty buckets as 0."""
    now = now or utcnow()
    starts = _starts(span, now)
    bucket = _bucket(store.db_engine.dialect.name, span).label("bucket")
    statement = (
        select(bucket, func.count().label("n"))
        .where(messages.c.received_at >= starts[0])
        .group_by(bucket)
    )
    with store.db_engine.connect() as conn:
        seen = {_bucket_start(str(r.bucket)): int(r.n) for r in conn.execute(statement)}
    return [(s, seen.get(s, 0)) for s in starts]
