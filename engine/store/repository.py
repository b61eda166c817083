"""All queries of the message store live here (Repository pattern).

SQLite (WAL) is the embedded default, PostgreSQL the production choice; both run the same code and
the same tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, insert, select, update
from sqlalchemy.engine import make_url

from engine.store.tables import messages, metadata

__all__ = ["MessageRecord", "SqlMessageStore", "create_db_engine"]


def create_db_engine(url: str) -> Engine:
    """A SQLAlchemy engine (``db_engine``) for the URL; SQLite gets WAL and a created directory."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        db_engine = create_engine(url, connect_args={"check_same_thread": False})

        @event.listens_for(db_engine, "connect")
        def _pragma(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")  # durable: an ACKed message survives power loss
            cur.execute("PRAGMA busy_timeout=5000")
            cur.close()

        return db_engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return create_engine(parsed, pool_pre_ping=True)


@dataclass(frozen=True)
class MessageRecord:
    """One stored message's metadata (the raw bytes are fetched separately)."""

    id: int
    received_at: datetime
    channel: str
    peer: str
    size: int
    control_id: str | None
    message_type: str | None
    trigger: str | None
    state: str
    reason: str | None


class SqlMessageStore:
    """The message store on a SQLAlchemy engine."""

    def __init__(self, db_engine: Engine) -> None:
        self.db_engine = db_engine

    def create_schema(self) -> None:
        metadata.create_all(self.db_engine)

    def save_received(self, raw: bytes, *, channel: str, peer: str = "") -> int:
        """Store raw bytes as they arrived (state ``received``) and return the row id.

        Committed before returning: the caller may acknowledge once this returns.
        """
        now = datetime.now(UTC)
        with self.db_engine.begin() as conn:
            result = conn.execute(
                insert(messages).values(
                    received_at=now,
                    channel=channel,
                    peer=peer,
                    size=len(raw),
                    raw=raw,
                    state="received",
                    updated_at=now,
                )
            )
            pk = result.inserted_primary_key
            assert pk is not None
            return int(pk[0])

    def describe(
        self,
        message_id: int,
        *,
        control_id: str,
        message_type: str,
        trigger: str,
        structure: str,
        sending_application: str,
        sending_facility: str,
    ) -> None:
        """Record what a stored message turned out to be once parsed."""
        with self.db_engine.begin() as conn:
            conn.execute(
                update(messages)
                .where(messages.c.id == message_id)
                .values(
                    control_id=control_id,
                    message_type=message_type,
                    trigger=trigger,
                    structure=structure,
                    sending_application=sending_application,
                    sending_facility=sending_facility,
                    updated_at=datetime.now(UTC),
                )
            )

    def set_state(self, message_id: int, state: str, reason: str | None = None) -> None:
        with self.db_engine.begin() as conn:
            conn.execute(
                update(messages)
                .where(messages.c.id == message_id)
                .values(state=state, reason=reason, updated_at=datetime.now(UTC))
            )

    def get(self, message_id: int) -> MessageRecord | None:
        with self.db_engine.connect() as conn:
            row = conn.execute(
                select(*_RECORD_COLUMNS).where(messages.c.id == message_id)
            ).one_or_none()
        return MessageRecord(**row._mapping) if row else None

    def raw(self, message_id: int) -> bytes | None:
        with self.db_engine.connect() as conn:
            value = conn.execute(
                select(messages.c.raw).where(messages.c.id == message_id)
            ).scalar_one_or_none()
        return bytes(value) if value is not None else None

    def list(self, *, state: str | None = None, limit: int = 100) -> list[MessageRecord]:
        query = select(*_RECORD_COLUMNS).order_by(messages.c.id.desc()).limit(limit)
        if state:
            query = query.where(messages.c.state == state)
        with self.db_engine.connect() as conn:
            return [MessageRecord(**row._mapping) for row in conn.execute(query)]

    def ping(self) -> bool:
        """True when the database answers (for /readyz)."""
        with self.db_engine.connect() as conn:
            return bool(conn.execute(select(1)).scalar_one() == 1)


_RECORD_COLUMNS = (
    messages.c.id,
    messages.c.received_at,
    messages.c.channel,
    messages.c.peer,
    messages.c.size,
    messages.c.control_id,
    messages.c.message_type,
    messages.c.trigger,
    messages.c.state,
    messages.c.reason,
)
