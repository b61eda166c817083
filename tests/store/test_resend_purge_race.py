"""Two nodes on one PostgreSQL, a control ID reused, its first holder purged, and a resend: the
race the README's Known gaps named until the evening of 7 December (engine/store/resends.py,
``_HOLDERS``).

Node A stores Bob's message, which reuses Alice's control ID, under the digest-keyed key; while
A's transaction is still open, retention deletes Alice's message and Bob's resend reaches node
B. Before, B saw neither Alice's row (deleted) nor Bob's (not committed), took the plain key
and stored Bob's message a second time, to be routed twice. Now A's lookup of Alice's row locks
it until A commits, so the delete waits for A, and B meets one of the two rows."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, delete, select, text

from engine.store import Incoming, SqlMessageStore, Stored, create_db_engine
from engine.store.tables import messages
from tests.conftest import fresh_schema

pytestmark = pytest.mark.postgres

KEY = "FRONTDESK|CLINIC|CTRL-1"
#: the advisory lock that holds node A in the middle of its insert
GATE = 814
#: node A's insert of a row under a reused key (``key|#digest``) waits for the test's gate:
#: after its lookup, before its row is in the key's index
_HOLD_A = """
CREATE FUNCTION hold_node_a() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF current_setting('application_name') = 'node_a' AND NEW.dedupe_key LIKE '%|#%' THEN
    PERFORM pg_advisory_xact_lock_shared(814);
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER hold_node_a BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION hold_node_a();
"""


def _msg(given: str, when: str = "20261208031500") -> Incoming:
    raw = (
        f"MSH|^~\\&|FRONTDESK|CLINIC|ENGINE|HUB|{when}||ADT^A08|CTRL-1|P|2.5.1\r"
        f"PID|1||MRN-{given}^^^CLINIC^MR||Testpatient^{given}\r"
    ).encode()
    return Incoming(raw=raw, channel="mllp", kind="hl7v2", control_id="CTRL-1", dedupe_key=KEY)


@pytest.fixture
def nodes() -> Iterator[tuple[Engine, Engine]]:
    """Two engines on one new schema, as two nodes: ``node_a`` and ``node_b``."""
    with fresh_schema("race") as url:
        a = create_db_engine(f"{url}&application_name=node_a")
        b = create_db_engine(f"{url}&application_name=node_b")
        SqlMessageStore(a).migrate()
        with a.begin() as conn:
            conn.execute(text(_HOLD_A))
        try:
            yield a, b
        finally:
            a.dispose()
            b.dispose()


def _waiting(db: Engine, application: str, lock_type: str) -> bool:
    """Whether a session of ``application`` waits for a lock of ``lock_type`` (pg_locks)."""
    query = text(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE NOT l.granted AND a.application_name = :app AND l.locktype = :type"
    )
    with db.connect() as conn:
        return bool(conn.execute(query, {"app": application, "type": lock_type}).scalar_one())


def _until(check: object, what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_a_resend_at_another_node_while_the_first_holder_is_purged_is_not_stored_again(
    nodes: tuple[Engine, Engine],
) -> None:
    db_a, db_b = nodes
    node_a, node_b = SqlMessageStore(db_a), SqlMessageStore(db_b)
    [alice] = node_a.save_batch([_msg("Alice")])
    answers: dict[str, list[Stored]] = {}
    errors: list[BaseException] = []

    def run(name: str, job: object) -> threading.Thread:
        def target() -> None:
            try:
                answers[name] = job()  # type: ignore[operator]
            except BaseException as exc:  # reported below
                errors.append(exc)

        thread = threading.Thread(target=target, name=name)
        thread.start()
        return thread

    def purge_alice() -> list[Stored]:
        with db_b.begin() as conn:  # what retention's batch does to her row, in essence
            conn.execute(delete(messages).where(messages.c.id == alice.id))
        return []

    with db_b.connect() as gate:
        gate.execute(text("SELECT pg_advisory_lock(:g)"), {"g": GATE})
        threads = [run("a", lambda: node_a.save_batch([_msg("Bob")]))]
        _until(lambda: _waiting(db_b, "node_a", "advisory"), "node A never reached its insert")
        threads.append(run("purge", purge_alice))
        # the purge either finishes (nothing stops it) or waits for node A's transaction
        _until(
            lambda: "purge" in answers or _waiting(db_b, "node_b", "transactionid"),
            "the purge neither finished nor waited",
        )
        threads.append(run("b", lambda: node_b.save_batch([_msg("Bob", "20261208031700")])))
        _until(lambda: "b" in answers or bool(errors), "node B's resend never finished", 20)
        gate.execute(text("SELECT pg_advisory_unlock(:g)"), {"g": GATE})
        gate.commit()
    for thread in threads:
        thread.join(20)
    assert errors == [] and not any(t.is_alive() for t in threads)
    with db_b.connect() as conn:
        rows = conn.execute(select(messages.c.id, messages.c.dedupe_key, messages.c.raw)).all()
        bobs = [(r.id, r.dedupe_key) for r in rows if b"^Bob" in bytes(r.raw)]
        alive = conn.execute(select(messages.c.id).where(messages.c.id == alice.id)).all()
    assert alive == [], "the purge did not delete Alice's message in the end"
    assert len(bobs) == 1, f"Bob's message stored {len(bobs)} times: {bobs}"
    [(bob_id, bob_key)] = bobs
    [a_answer], [b_answer] = answers["a"], answers["b"]
    assert {a_answer.id, b_answer.id} == {bob_id}
    assert [a_answer.duplicate, b_answer.duplicate].count(True) == 1
    assert bob_key.startswith(f"{KEY}|#")
