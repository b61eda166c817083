"""Each delivery's attempts (issue 13: the message page shows every delivery "with its attempts
and errors"), kept cheaply because the delivery path is hot.

A first-time success, by far the usual outcome, writes nothing here: the delivery row already
says it (``attempts`` 1, ``delivered_at``), and the history derives that attempt from it. A
failed attempt (retry, dead, needs-patient), and a success after failures, is one row of
``delivery_attempts``, appended by one ``INSERT ... SELECT`` for the whole batch in the
transaction that records the outcomes (engine/store/deliveries.py ``record_outcomes``). The
``SELECT`` repeats the outcome's own condition (the delivery still pending, still the node's),
so an outcome that does not count (a claim taken over) leaves no attempt either, and the
attempt's number comes from the row itself.

What is kept of an error is the adapter's detail (PHI-free by the adapters' contract: status,
ACK code, error class), without control characters, with any URL's query and anything that
looks like a credential (``token=...``, ``Bearer ...``) cut out, at most 300 characters; the
HTTP status and the error's class are read from it. Rows go with their delivery (ON DELETE
CASCADE, migration 0020), so retention purges them with it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    DateTime,
    Integer,
    String,
    bindparam,
    insert,
    literal_column,
    select,
)

from engine.store.clean import clean_lines
from engine.store.db import aware
from engine.store.lists import in_list
from engine.store.tables import deliveries, delivery_attempts
from engine.store.views import AttemptView

__all__ = ["ERROR_CHARS", "Outcome", "attempt_fields", "attempt_history", "record_attempts"]


@dataclass(frozen=True)
class Outcome:
    """The outcome of one delivery attempt: delivered, or failed (retry at, or dead if None),
    or ``needs_patient``: the destination does not know the patient (``retry_at`` unused)."""

    delivery_id: int
    ok: bool
    error: str = ""
    retry_at: datetime | None = None
    needs_patient: bool = False
    #: the attempt's number (the delivery's attempts before it, plus one); 0: not known
    attempt: int = 0
    #: how long the attempt took
    seconds: float | None = None


#: how much of an attempt's error is kept
ERROR_CHARS = 300

_STATUS = re.compile(r"(?:->|\bHTTP)\s*([1-5]\d\d)\b")
_ERROR_CLASS = re.compile(r"\b([A-Z][A-Za-z0-9]*(?:Error|Exception|Timeout|Exceeded))\b")
_ACK_CODE = re.compile(r"\bmllp: (AE|AR|CE|CR)\b")
_URL_QUERY = re.compile(r"(https?://[^\s?#]*)[?#]\S*", re.IGNORECASE)
_CREDENTIAL = re.compile(
    r"(?i)\b(bearer|basic|token|access_token|password|passwd|secret|api[_-]?key|"
    r"client_secret)\b(\s*[=:]\s*|\s+)\S+"
)


def attempt_fields(detail: str | None) -> tuple[int | None, str | None, str | None]:
    """(HTTP status, error class, error text) of an attempt's detail, as kept."""
    if not detail:
        return None, None, None
    text = _URL_QUERY.sub(r"\1?…", detail)
    text = _CREDENTIAL.sub(lambda m: f"{m.group(1)}{m.group(2)}…", text)
    text = clean_lines(text, ERROR_CHARS) or ""
    status = _STATUS.search(text)
    kind = _ERROR_CLASS.search(text) or _ACK_CODE.search(text)
    return (
        int(status.group(1)) if status else None,
        kind.group(1)[:64] if kind else None,
        text or None,
    )


def _insert(owned: bool) -> Any:
    """The attempt of one outcome, numbered from its delivery row, only while the outcome
    counts (the delivery still pending; with an owner, still that node's claim)."""
    condition = [deliveries.c.id == bindparam("did"), deliveries.c.state == "pending"]
    if owned:
        condition.append(deliveries.c.claimed_by == bindparam("owner", type_=String()))
    source = select(
        deliveries.c.id,
        deliveries.c.attempts + literal_column("1"),
        bindparam("at", type_=DateTime(timezone=True)),
        bindparam("outcome", type_=String()),
        bindparam("status", type_=Integer()),
        bindparam("error_class", type_=String()),
        bindparam("error", type_=String()),
        bindparam("ms", type_=Integer()),
    ).where(*condition)
    columns = [
        "delivery_id",
        "attempt",
        "at",
        "outcome",
        "status",
        "error_class",
        "error",
        "duration_ms",
    ]
    return insert(delivery_attempts).from_select(columns, source)


_INSERT = _insert(False)
_INSERT_OWNED = _insert(True)


def _outcome_name(o: Outcome) -> str:
    if o.ok:
        return "delivered"
    if o.needs_patient:
        return "needs-patient"
    return "retry" if o.retry_at is not None else "dead"


def record_attempts(
    conn: Connection, outcomes: Iterable[Outcome], now: datetime, owner: str | None
) -> None:
    """Append the attempts worth a row (failures, and a success after failures) in the
    caller's transaction, before the outcomes' own updates (whose condition they share)."""
    rows = []
    for o in outcomes:
        if o.ok and o.attempt <= 1:
            continue  # a first-time success: the delivery row says it
        status, error_class, error = attempt_fields(None if o.ok else o.error)
        rows.append(
            {
                "did": o.delivery_id,
                "owner": owner,
                "at": now,
                "outcome": _outcome_name(o),
                "status": status,
                "error_class": error_class,
                "error": error,
                "ms": None if o.seconds is None else min(int(o.seconds * 1000), 2**31 - 1),
            }
        )
    if rows:
        conn.execute(_INSERT_OWNED if owner is not None else _INSERT, rows)


_HISTORY = (
    select(delivery_attempts)
    .where(in_list(delivery_attempts.c.delivery_id))
    .order_by(delivery_attempts.c.delivery_id, delivery_attempts.c.attempt, delivery_attempts.c.id)
)


def attempt_history(conn: Connection, rows: Sequence[Any]) -> dict[int, tuple[AttemptView, ...]]:
    """Each delivery's attempts, oldest first, for delivery rows with ``id``, ``attempts``
    and ``delivered_at``: the rows kept, and the delivering attempt from the
    delivery row when no row was kept for it (a first-time success). One query, and none when
    every delivery delivered at its first attempt or has made none."""
    asked = [int(r.id) for r in rows if int(r.attempts) > (1 if r.delivered_at else 0)]
    kept: dict[int, list[AttemptView]] = {}
    if asked:
        for a in conn.execute(_HISTORY, {"ids": asked}):
            kept.setdefault(int(a.delivery_id), []).append(
                AttemptView(
                    attempt=int(a.attempt),
                    at=aware(a.at),
                    outcome=a.outcome,
                    status=a.status,
                    error_class=a.error_class,
                    error=a.error,
                    duration_ms=a.duration_ms,
                )
            )
    out: dict[int, tuple[AttemptView, ...]] = {}
    for r in rows:
        history = kept.get(int(r.id), [])
        if r.delivered_at is not None and not any(a.outcome == "delivered" for a in history):
            history.append(AttemptView(int(r.attempts), aware(r.delivered_at), "delivered"))
        out[int(r.id)] = tuple(history)
    return out
