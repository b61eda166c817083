"""The FHIR resource index: the latest version of every resource the engine mapped, by fullUrl.

Processing writes it (in the same transaction that finishes the message, see
:func:`upsert_resources`); the jobs read it (the eligibility job looks up the day's
appointments, their patients, coverages and payers) without asking a FHIR server.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Insert, or_, select, text
from sqlalchemy.dialects import postgresql, sqlite

from engine.store.db import Repository
from engine.store.lists import in_list, json_rows
from engine.store.tables import fhir_resources

__all__ = ["IndexedResource", "ResourceIndex", "upsert_resources"]


@dataclass(frozen=True)
class IndexedResource:
    """A FHIR resource the engine mapped, kept (latest version) for the jobs that read them."""

    resource_type: str
    full_url: str
    body: bytes
    patient_url: str | None = None
    start: datetime | None = None
    status: str | None = None


def _upsert_statement(insert: postgresql.Insert | sqlite.Insert) -> Insert:
    """Insert a resource, or update it by fullUrl; an older message never overwrites a newer
    one's (executemany: one row per fullUrl)."""
    excluded = insert.excluded
    return insert.on_conflict_do_update(
        index_elements=[fhir_resources.c.full_url],
        set_={
            "patient_url": excluded.patient_url,
            "start": excluded.start,
            "status": excluded.status,
            "body": excluded.body,
            "message_id": excluded.message_id,
            "updated_at": excluded.updated_at,
        },
        where=fhir_resources.c.message_id <= excluded.message_id,
    )


#: built once per dialect (the upsert is spelled the same on both, but built by each dialect)
_UPSERT = {
    "postgresql": _upsert_statement(postgresql.insert(fhir_resources)),
    "sqlite": _upsert_statement(sqlite.insert(fhir_resources)),
}


#: PostgreSQL: the batch's rows in one statement, as one JSON array (an ``executemany`` sent a
#: statement a row; see engine/store/deliveries.py). Not one array a column: psycopg quotes a
#: text array's elements in Python, a call per quote, and a resource's JSON is mostly quotes
#: (that took twice the executemany's time); orjson writes the rows in C and PostgreSQL reads
#: them in C. The rows' order (sorted by fullUrl) is the order the unique index's entries are
#: locked in: ``ORDER BY n`` keeps it.
_UPSERT_PG = text(
    "INSERT INTO fhir_resources (resource_type, full_url, patient_url, start, status, body,"
    " message_id, updated_at)"
    " SELECT r.resource_type, r.full_url, r.patient_url, r.start, r.status, r.body,"
    " r.message_id, :updated_at"
    " FROM ROWS FROM (json_to_recordset(CAST(:rows AS json)) AS (resource_type text,"
    " full_url text, patient_url text, start timestamptz, status text, body text,"
    " message_id bigint)) WITH ORDINALITY"
    " AS r(resource_type, full_url, patient_url, start, status, body, message_id, n)"
    " ORDER BY r.n"
    " ON CONFLICT (full_url) DO UPDATE SET patient_url = excluded.patient_url,"
    " start = excluded.start, status = excluded.status, body = excluded.body,"
    " message_id = excluded.message_id, updated_at = excluded.updated_at"
    " WHERE fhir_resources.message_id <= excluded.message_id"
)


_URL_WIDTH = getattr(fhir_resources.c.full_url.type, "length", None) or 0


def _stored_as(full_url: str) -> str:
    """The fullUrl as the column keeps it: PostgreSQL cuts spaces past a varchar's width
    without a word (anything else past it is refused), so two fullUrls that differ only there
    are one row, and one statement may not upsert a row twice."""
    if _URL_WIDTH and len(full_url) > _URL_WIDTH and not full_url[_URL_WIDTH:].strip(" "):
        return full_url[:_URL_WIDTH]
    return full_url


def upsert_resources(
    conn: Connection, items: Sequence[tuple[int, IndexedResource]], now: datetime
) -> None:
    """Index the resources (message id, resource) in the caller's transaction: insert or update
    by fullUrl; an older message never overwrites a newer one's."""
    if not items:
        return
    latest: dict[str, tuple[int, IndexedResource]] = {}
    for mid, r in items:  # one row per fullUrl in a statement
        latest[_stored_as(r.full_url)] = (mid, r)
    rows = [
        {
            "resource_type": r.resource_type,
            "full_url": r.full_url,
            "patient_url": r.patient_url,
            "start": r.start,
            "status": r.status,
            "body": r.body.decode(),
            "message_id": mid,
        }
        # sorted: one lock order for concurrent workers
        for mid, r in sorted(latest.values(), key=lambda item: item[1].full_url)
    ]
    if conn.dialect.name == "postgresql":
        for text_rows in json_rows(rows):
            conn.execute(_UPSERT_PG, {"rows": text_rows, "updated_at": now})
    else:
        conn.execute(_UPSERT[conn.dialect.name], [{**row, "updated_at": now} for row in rows])


class ResourceIndex(Repository):
    """Reads of the resource index, as FHIR dicts with their fullUrl under ``_full_url``."""

    def resource(self, full_url: str) -> dict[str, Any] | None:
        """The resource with this fullUrl, or None."""
        with self.db_engine.connect() as conn:
            body = conn.execute(
                select(fhir_resources.c.body).where(fhir_resources.c.full_url == full_url)
            ).scalar_one_or_none()
        return {**orjson.loads(body), "_full_url": full_url} if body else None

    _BY_URL = select(fhir_resources.c.full_url, fhir_resources.c.body).where(
        in_list(fhir_resources.c.full_url, "urls")
    )

    def resources_by_url(self, full_urls: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The resources with these fullUrls, by fullUrl (those not indexed are left out)."""
        wanted = sorted(set(full_urls))
        if not wanted:
            return {}
        with self.db_engine.connect() as conn:
            rows = conn.execute(self._BY_URL, {"urls": wanted})
            return {r.full_url: {**orjson.loads(r.body), "_full_url": r.full_url} for r in rows}

    def resources_for_patients(
        self, resource_type: str, patient_urls: Iterable[str]
    ) -> dict[str, list[dict[str, Any]]]:
        """The resources of one type that refer to each of these patients (e.g. their
        Coverages), oldest first, by patient, in one query."""
        wanted = sorted(set(patient_urls))
        out: dict[str, list[dict[str, Any]]] = {url: [] for url in wanted}
        if not wanted:
            return out
        query = (
            select(fhir_resources.c.patient_url, fhir_resources.c.full_url, fhir_resources.c.body)
            .where(
                fhir_resources.c.resource_type == resource_type,
                in_list(fhir_resources.c.patient_url, "patients"),
            )
            .order_by(fhir_resources.c.id)
        )
        with self.db_engine.connect() as conn:
            for r in conn.execute(query, {"patients": wanted}):
                out[r.patient_url].append({**orjson.loads(r.body), "_full_url": r.full_url})
        return out

    def appointment_page(
        self, start: datetime, end: datetime, after: tuple[datetime, int] | None, limit: int
    ) -> tuple[list[dict[str, Any]], tuple[datetime, int] | None]:
        """Up to ``limit`` appointments starting in [start, end), in the order of their start
        (then row), after ``after``; and where the next page starts (None after the last)."""
        start, end = start.astimezone(UTC), end.astimezone(UTC)  # the index keeps UTC
        c = fhir_resources.c
        query = select(c.id, c.start, c.full_url, c.body).where(
            c.resource_type == "Appointment", c.start >= start, c.start < end
        )
        if after is not None:  # keyset: later starts, or the same start and a later row
            query = query.where(c.start >= after[0], or_(c.start > after[0], c.id > after[1]))
        with self.db_engine.connect() as conn:
            rows = conn.execute(query.order_by(c.start, c.id).limit(limit)).all()
        page = [{**orjson.loads(r.body), "_full_url": r.full_url} for r in rows]
        return page, ((rows[-1].start, rows[-1].id) if len(rows) == limit else None)

    def appointments_between(self, start: datetime, end: datetime) -> list[dict[str, Any]]:
        """Appointments starting in [start, end), as FHIR dicts with ``_full_url``."""
        start, end = start.astimezone(UTC), end.astimezone(UTC)  # the index keeps UTC
        with self.db_engine.connect() as conn:
            rows = conn.execute(
                select(fhir_resources.c.full_url, fhir_resources.c.body)
                .where(
                    fhir_resources.c.resource_type == "Appointment",
                    fhir_resources.c.start >= start,
                    fhir_resources.c.start < end,
                )
                .order_by(fhir_resources.c.start, fhir_resources.c.id)
            )
            return [{**orjson.loads(r.body), "_full_url": r.full_url} for r in rows]
