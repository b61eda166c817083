"""The receiver's insert: a batch of messages in one statement (``save_batch``,
engine/store/messages.py)."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, text

from engine.store.lists import json_rows_counted
from engine.store.tables import messages

__all__ = ["insert_messages"]

#: SQLite: executemany with RETURNING, in parameter order
_INSERT_MESSAGES = insert(messages).returning(messages.c.id, sort_by_parameter_order=True)

#: PostgreSQL: a batch's rows in one statement of one text, as one JSON array, raw in base64
#: (as the deliveries' and the index's, engine/store/deliveries.py). SQLAlchemy's
#: insertmanyvalues wrote a statement text per batch size and psycopg converted each anew:
#: with the dedupe keys looked up before it, the receiver's store cost 0.24 ms of its CPU a
#: message in batches of 4; this, 0.12 (7 December, 6,000 messages). A row whose dedupe key is
#: stored already is skipped, not refused (the caller then looks it up): a committed one by
#: the batch's keys looked up in the index first (``:keys``: a read, which waits for nobody;
#: ``ON CONFLICT`` alone waited for any transaction still changing the original's row, a
#: worker's claim or a purge, and the whole batch's ACKs with it; and a ``NOT EXISTS`` per row
#: was planned from json_to_recordset's guess of 100 rows, a hash join over the whole table
#: while it is small), one another writer or node is inserting by ``ON CONFLICT``, which waits
#: for that insert to commit (or roll back: then the row goes in). Each row inserted takes its
#: id from the sequence in ``ORDER BY n`` order, so the ids returned, sorted, are the inserted
#: rows' in the list's order (another writer's ids may fall between them, never among them out
#: of order).
_INSERT_MESSAGES_PG = text(
    "INSERT INTO messages (received_at, channel, peer, kind, size, raw, control_id,"
    " message_type, trigger, structure, sending_application, sending_facility, dedupe_key,"
    " digest, replay_of, patient_key, state, reason, warnings, updated_at)"
    " SELECT :now, r.channel, r.peer, r.kind, r.size, decode(r.raw, 'base64'), r.control_id,"
    " r.message_type, r.trigger, r.structure, r.sending_application, r.sending_facility,"
    " r.dedupe_key, r.digest, r.replay_of, r.patient_key, r.state, r.reason, r.warnings, :now"
    " FROM ROWS FROM (json_to_recordset(CAST(:rows AS json)) AS (channel text, peer text,"
    " kind text, size integer, raw text, control_id text, message_type text, trigger text,"
    " structure text, sending_application text, sending_facility text, dedupe_key text,"
    " digest text, replay_of bigint, patient_key text, state text, reason text, warnings text,"
    " guard text)) WITH ORDINALITY"
    " AS r(channel, peer, kind, size, raw, control_id, message_type, trigger, structure,"
    " sending_application, sending_facility, dedupe_key, digest, replay_of, patient_key, state,"
    " reason, warnings, guard, n)"
    " WHERE r.dedupe_key IS NULL OR ARRAY[r.dedupe_key, r.guard] && ARRAY(SELECT"
    " m.dedupe_key::text FROM messages m WHERE m.dedupe_key = ANY (CAST(:keys AS text[])))"
    " IS NOT TRUE"
    " ORDER BY r.n ON CONFLICT (dedupe_key) DO NOTHING RETURNING id, dedupe_key"
)


def _json_row(row: dict[str, Any], guard: str | None) -> dict[str, Any]:
    """A row of :func:`_row` for ``json_to_recordset``: its bytes in base64, no times; its
    guard beside it."""
    out = {k: v for k, v in row.items() if k not in ("received_at", "updated_at")}
    out["raw"] = base64.b64encode(row["raw"]).decode()
    out["guard"] = guard
    return out


def insert_messages(
    conn: Connection,
    rows: list[dict[str, Any]],
    now: datetime,
    guards: list[str | None] | None = None,
) -> list[int | None]:
    """Insert the rows (of :func:`_row`, their dedupe keys distinct); each one's id, in their
    order, or None where PostgreSQL found its key stored already, or its guard (``guards``,
    one a row: the key the row would have had as a control ID reused, engine/store/
    resends.py; SQLite looks guards up before, under its writer's lock)."""
    if conn.dialect.name != "postgresql":
        return [int(i) for i in conn.execute(_INSERT_MESSAGES, rows).scalars()]
    guards = guards or [None] * len(rows)
    ids: list[int | None] = []
    start = 0
    json_rows = [_json_row(row, guard) for row, guard in zip(rows, guards, strict=True)]
    for count, text_rows in json_rows_counted(json_rows):
        chunk, start = rows[start : start + count], start + count
        keys = [row["dedupe_key"] for row in chunk if row["dedupe_key"] is not None]
        keys += [g for g in guards[start - count : start] if g is not None]
        params = {"rows": text_rows, "now": now, "keys": keys}
        returned = conn.execute(_INSERT_MESSAGES_PG, params).all()
        inserted = {key for _, key in returned}
        taken = iter(sorted(int(mid) for mid, _ in returned))
        for row in chunk:
            key = row["dedupe_key"]
            ids.append(next(taken) if key is None or key in inserted else None)
    return ids
