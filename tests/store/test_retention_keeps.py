"""What retention keeps (review of 7 December).

- SQLite numbers a new row the highest id + 1. A feed idle past the retention had its newest
  message purged, and the next message took its id: the audit trail (kept for years) then named
  another patient's message for the purged one's reads. The newest message is kept now.
- A replayed original whose copy was delivered after the cutoff was purged with the copy still
  kept (the original's ``updated_at`` is the replay's): a resend of it by the sender was then
  stored and routed again, its dedupe key gone. The original now waits as long as its copy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, select, update

from engine.store import Incoming, SqlMessageStore
from engine.store.tables import deliveries, documents, messages
from tests.jobs.retention_support import delivered, document_row

OLD = datetime.now(UTC) - timedelta(days=40)


def _stored(store: SqlMessageStore, n: int) -> int:
    [s] = store.save_batch(
        [Incoming(raw=f"MSH|^~\\&|X|{n}".encode(), channel="test", dedupe_key=f"k{n}")]
    )
    return s.id


def _settle(store: SqlMessageStore, mid: int, state: str, when: datetime) -> None:
    with store.db_engine.begin() as conn:
        conn.execute(
            update(messages).where(messages.c.id == mid).values(state=state, updated_at=when)
        )


def test_a_purged_messages_id_is_never_given_to_a_new_message(store: SqlMessageStore) -> None:
    first = _stored(store, 1)
    _settle(store, first, "delivered", OLD)
    purged = store.purge_range(timedelta(days=30)).rows
    second = _stored(store, 2)
    assert second != first
    if store.db_engine.dialect.name == "sqlite":
        assert purged == 0  # the newest stays until a newer one is stored
        _settle(store, second, "delivered", OLD)
        assert store.purge_range(timedelta(days=30)).rows == 1  # the first goes now
        assert _stored(store, 3) == second + 1
    else:
        assert purged == 1  # a sequence never hands an id out twice


def test_a_replayed_original_waits_for_its_copy_settled_after_the_cutoff(
    store: SqlMessageStore,
) -> None:
    original = _stored(store, 1)
    copy = _stored(store, 2)
    _settle(store, original, "replayed", OLD)  # replayed 40 days ago...
    with store.db_engine.begin() as conn:  # ...its copy delivered yesterday
        conn.execute(
            update(messages)
            .where(messages.c.id == copy)
            .values(replay_of=original, state="delivered", updated_at=OLD + timedelta(days=39))
        )
    _stored(store, 3)  # a newer message (SQLite keeps the newest)
    assert store.purge_range(timedelta(days=30)).rows == 0
    _settle(store, copy, "delivered", OLD)  # once the copy is past the cutoff, both go
    assert store.purge_range(timedelta(days=30)).rows == 2
    with store.db_engine.connect() as conn:
        assert conn.execute(select(messages.c.id)).scalars().all() == [copy + 1]


def test_the_newest_delivery_and_documents_ids_are_never_given_again(
    store: SqlMessageStore,
) -> None:
    """SQLite numbers deliveries and documents as it does messages. The newest delivery or
    document can belong to an older message (a replay delivered again, a document routed
    late): that message stays, so a new row never takes a purged one's id."""
    with_delivery, with_document = _stored(store, 1), _stored(store, 2)
    newest = _stored(store, 3)
    with store.db_engine.begin() as conn:  # the newest delivery and document: older messages'
        [old_delivery] = conn.execute(
            insert(deliveries).returning(deliveries.c.id), [delivered(with_delivery, OLD)]
        ).scalars()
        [old_document] = conn.execute(
            insert(documents).returning(documents.c.id), [document_row(with_document, OLD)]
        ).scalars()
    for mid in (with_delivery, with_document, newest):
        _settle(store, mid, "delivered", OLD)
    purged = store.purge_range(timedelta(days=30)).rows
    later = _stored(store, 4)
    with store.db_engine.begin() as conn:
        [new_delivery] = conn.execute(
            insert(deliveries).returning(deliveries.c.id), [delivered(later, OLD)]
        ).scalars()
        [new_document] = conn.execute(
            insert(documents).returning(documents.c.id), [document_row(later, OLD)]
        ).scalars()
    assert new_delivery != old_delivery
    assert new_document != old_document
    if store.db_engine.dialect.name == "sqlite":
        assert purged == 0  # the three kept: the newest message, delivery and document's
    else:
        assert purged == 3  # a sequence never hands an id out twice
