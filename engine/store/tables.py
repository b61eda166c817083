"""Tables of the message store (SQLAlchemy 2 Core).

Every message received is a row in ``messages`` *before* it is acknowledged: its raw bytes as they
arrived (so nothing is ever lost, even bytes that are not HL7), where it came from, what it is (when
it could be read) and its state with the reason for it.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

__all__ = ["messages", "metadata"]

metadata = MetaData()

messages = Table(
    "messages",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("channel", String(32), nullable=False),  # mllp, http, file, cli
    Column("peer", String(255), nullable=False, default=""),
    Column("size", Integer, nullable=False),
    Column("raw", LargeBinary, nullable=False),
    Column("control_id", String(199), nullable=True),  # MSH-10 (ST, 199 in v2.7)
    Column("message_type", String(16), nullable=True),  # MSH-9.1
    Column("trigger", String(16), nullable=True),  # MSH-9.2
    Column("structure", String(16), nullable=True),
    Column("sending_application", String(227), nullable=True),
    Column("sending_facility", String(227), nullable=True),
    Column("state", String(16), nullable=False),  # received, error, ...
    Column("reason", Text, nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_messages_state", "state"),
    Index("ix_messages_sender_control", "sending_application", "sending_facility", "control_id"),
)
