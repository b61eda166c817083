"""The content digests of large HL7v2 messages stored before migration 0027 (a part of
:class:`~engine.store.SqlMessageStore`).

Since 0027 a message of :data:`~engine.store.resends.DIGEST_STORED_FROM` or more is stored with
its content's digest, and a resend compares with that. One stored before has none, and its
resend read and hashed it in the receiver's batch: on SQLite under the one writers' lock that
every ACK waits for (0.4 s a 100 MB MDM). The leader fills them in once, after an upgrade: each
message read and hashed outside any lock, its digest written in a short transaction of its own
(the bytes never change, so nothing can come between that matters)."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import bindparam, select, update

from engine.store.db import Repository
from engine.store.resends import DIGEST_STORED_FROM, content_digest
from engine.store.tables import messages

__all__ = ["Digests"]


class Digests(Repository):
    """Filling in the digests of large messages stored without one."""

    _WITHOUT = (
        select(messages.c.id, messages.c.raw)
        .where(
            messages.c.id > bindparam("after"),
            messages.c.digest.is_(None),
            messages.c.kind == "hl7v2",
            messages.c.dedupe_key.is_not(None),
            messages.c.size >= DIGEST_STORED_FROM,
        )
        .order_by(messages.c.id)
        .limit(bindparam("page"))
    )
    _SET = (
        update(messages)
        .where(messages.c.id == bindparam("mid"), messages.c.digest.is_(None))
        .values(digest=bindparam("d"))
    )

    def fill_digests(self, page: int = 20, stop: Callable[[], bool] | None = None) -> int:
        """Give every large HL7v2 message with a dedupe key and no digest its digest, ``page``
        read at a time (a page of large messages is a lot of bytes); how many. ``stop`` is
        asked between pages."""
        filled, after = 0, 0
        while stop is None or not stop():
            with self.db_engine.connect() as conn:
                rows = conn.execute(self._WITHOUT, {"after": after, "page": page}).all()
            if not rows:
                return filled
            found = [{"mid": r.id, "d": content_digest(bytes(r.raw))} for r in rows]
            with self._tx() as conn:
                conn.execute(self._SET, found)
            filled += len(found)
            after = rows[-1].id
        return filled
