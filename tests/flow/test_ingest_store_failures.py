"""A group commit that fails: stored again one by one only when a row of it was the trouble.

The database lost (during the COMMIT too) or unreachable, the whole batch is refused at once:
each message tried again alone would wait for the connect timeout in turn, and one without a
dedupe key (a FHIR Bundle) whose commit went through would be stored a second time."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from datetime import UTC, datetime

import psycopg
import pytest
from psycopg import errors as pg
from sqlalchemy import exc as sa

from engine.flow.ingest import Ingest, Receipt
from engine.store import Incoming, Stored

CLOCK = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
ADT = (
    "MSH|^~\\&|FRONTDESK|CLINIC|ENGINE|HUB|20260304050607||ADT^A08|CTRL-{n}|P|2.5.1\r"
    "PID|1||MRN{n}^^^CLINIC^MR||Testpatient^Alice||19800101|F\r"
)
BUNDLE = b'{"resourceType": "Bundle", "type": "transaction", "id": "b%d", "entry": []}'


def adt(n: int) -> bytes:
    return ADT.format(n=n).encode()


def lost_in_commit() -> Exception:
    return sa.OperationalError(
        "COMMIT",
        {},
        psycopg.OperationalError("server closed the connection unexpectedly"),
        connection_invalidated=True,
    )


def unreachable() -> Exception:
    return sa.OperationalError(
        None, None, psycopg.OperationalError("connection failed: timeout expired")
    )


def bad_value() -> Exception:
    return sa.DataError("INSERT", {}, pg.StringDataRightTruncation("value too long"))


class _Store:
    """Commits in memory (a dedupe key stored twice gives the original), and fails the saves
    it is told to: ``fail[n]`` is the exception of save n (from 0) and whether that save's rows
    were committed before it was raised, as when the connection drops in the COMMIT."""

    def __init__(self, fail: dict[int, tuple[Exception, bool]] | None = None) -> None:
        self.fail = fail or {}
        self.always: Exception | None = None
        self.bad_raw: bytes | None = None  # a row refused whenever it is in a save
        self.rows: list[Incoming] = []
        self.saves: list[int] = []  # each save's number of messages
        self._lock = threading.Lock()

    def save_batch(self, items: list[Incoming]) -> list[Stored]:
        with self._lock:
            n = len(self.saves)
            self.saves.append(len(items))
            if self.always is not None:
                raise self.always
            if self.bad_raw is not None and any(i.raw == self.bad_raw for i in items):
                raise bad_value()
            failure, committed = self.fail.get(n, (None, False))
            if failure is not None and not committed:
                raise failure
            out = [self._commit(item) for item in items]
            if failure is not None:
                raise failure
            return out

    def _commit(self, item: Incoming) -> Stored:
        for number, row in enumerate(self.rows, 1):
            if item.dedupe_key is not None and row.dedupe_key == item.dedupe_key:
                return Stored(number, CLOCK, duplicate=True)
        self.rows.append(item)
        return Stored(len(self.rows), CLOCK)


async def _receive_together(store: _Store, hl7: int, fhir: int = 0) -> list[Receipt]:
    """Messages arriving together (one batch, as the group commit takes them)."""
    ing = Ingest(store, identity=("ENGINE", "HUB"), clock=lambda: CLOCK)  # type: ignore[arg-type]
    await ing.start()
    try:
        return list(
            await asyncio.wait_for(
                asyncio.gather(  # (a Bundle first: the first batch holds a keyless message)
                    *(ing.receive_fhir(BUNDLE % n) for n in range(fhir)),
                    *(ing.receive(adt(n), channel="mllp") for n in range(hl7)),
                ),
                60,
            )
        )
    finally:
        await ing.stop()


def test_a_connection_lost_in_the_commit_stores_no_bundle_twice() -> None:
    store = _Store({0: (lost_in_commit(), True)})
    receipts = asyncio.run(_receive_together(store, hl7=2, fhir=3))
    first = store.saves[0]
    # the batch that failed is refused whole, and not tried again message by message
    assert sum(store.saves) == 5
    assert sum(r.state == "refused" for r in receipts) == first
    raws = [row.raw for row in store.rows]
    assert len(raws) == len(set(raws)) == 5  # each stored once: by the COMMIT that was lost


def test_an_unreachable_database_refuses_the_batch_at_once() -> None:
    """Each message tried alone would wait for the connect timeout, one after the other."""
    store = _Store()
    store.always = unreachable()
    receipts = asyncio.run(_receive_together(store, hl7=6))
    assert all(r.state == "refused" and r.ack_code == "AR" for r in receipts)
    assert sum(store.saves) == 6  # each message in one save: none tried again alone


@pytest.mark.parametrize(
    ("failure", "one_by_one"),
    [
        pytest.param(unreachable(), False, id="unreachable"),
        pytest.param(
            sa.OperationalError(None, None, pg.AdminShutdown("terminating connection")),
            False,
            id="server-shutting-down",
        ),
        pytest.param(
            sa.OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked")),
            False,
            id="sqlite-locked",
        ),
        pytest.param(sa.TimeoutError("QueuePool limit reached"), False, id="no-pooled-connection"),
        pytest.param(bad_value(), True, id="value-too-long"),
        pytest.param(
            sa.IntegrityError("INSERT", {}, pg.NotNullViolation("null value")),
            True,
            id="constraint",
        ),
        pytest.param(
            sa.OperationalError("INSERT", {}, pg.QueryCanceled("statement timeout")),
            True,
            id="statement-cancelled",
        ),
        pytest.param(
            sa.OperationalError("INSERT", {}, pg.DeadlockDetected("deadlock detected")),
            True,
            id="deadlock",
        ),
        pytest.param(OSError("blob file not written"), True, id="not-a-database-error"),
    ],
)
def test_only_a_failure_about_a_row_is_tried_again_message_by_message(
    failure: Exception, one_by_one: bool
) -> None:
    store = _Store({0: (failure, False)})
    receipts = asyncio.run(_receive_together(store, hl7=3))
    first = store.saves[0]
    if one_by_one:
        assert sum(store.saves) == 3 + first
        assert [r.ack_code for r in receipts] == ["AA"] * 3
    else:
        assert sum(store.saves) == 3
        assert sum(r.ack_code == "AR" for r in receipts) == first


def test_a_bad_row_refuses_only_itself() -> None:
    store = _Store()
    store.bad_raw = adt(1)
    receipts = asyncio.run(_receive_together(store, hl7=3))
    assert [r.ack_code for r in receipts] == ["AA", "AR", "AA"]
    assert sorted(row.raw for row in store.rows) == sorted([adt(0), adt(2)])


def test_the_database_lost_while_going_one_by_one_refuses_the_rest_at_once() -> None:
    store = _Store({0: (bad_value(), False), 1: (unreachable(), False)})
    receipts = asyncio.run(_receive_together(store, hl7=4))
    first = store.saves[0]
    assert first > 1  # (the messages arrived together)
    # the batch, then its first message alone: the database gone, the others are not tried
    assert store.saves[:2] == [first, 1]
    assert sum(store.saves) == 4 + 1
    assert sum(r.ack_code == "AR" for r in receipts) == first


@pytest.mark.parametrize("committed", [False, True])
def test_a_batch_of_keyed_messages_that_found_its_connection_dead_is_tried_once_more(
    committed: bool,
) -> None:
    """The pooled connection died (the server restarted): every message has a dedupe key, so
    the batch is tried again whole on a new connection; had the COMMIT gone through, the second
    try finds them stored and answers their ACKs (review of 7 December: all were refused)."""
    store = _Store({0: (lost_in_commit(), committed)})
    receipts = asyncio.run(_receive_together(store, hl7=3))
    first = store.saves[0]
    assert store.saves[:2] == [first, first]  # the same batch, once more
    assert [r.ack_code for r in receipts] == ["AA"] * 3
    assert len(store.rows) == 3  # each stored once
