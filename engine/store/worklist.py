"""What the front desk's console pages read (issue 13): documents with the patient they were sent
for and how each destination stands, for the Documents page.

The operator's document list (:func:`engine.store.search.document_lines`) leaves the patient
out: a list is for an IT admin, who opens one document (audited) to see it. The front desk
matches documents to patients: for the ones waiting it must see the MRN each came with, its
date and title, on the page. So this reads the page's documents with those, and the state of
each delivery of each one's live message, in three statements for the whole page (not one per
document). The caller records the list in the audit trail (one record per page shown).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from sqlalchemy import Connection, bindparam, select

from engine.store.search import DocumentQuery, document_lines
from engine.store.tables import deliveries, documents
from engine.store.views import DocumentLine

__all__ = ["DeskDocument", "desk_documents"]


@dataclass(frozen=True)
class DeskDocument(DocumentLine):
    """A document as the front desk sees it in a list: who it was sent for, and where it is."""

    patient_mrn: str = ""
    patient_authority: str = ""
    document_date: str = ""
    title: str | None = None
    file_name: str | None = None
    #: (destination, delivery state) of the live message's deliveries, in the order queued
    #: (deliveries replaced by a resend left out: their resend stands for them)
    delivery_states: tuple[tuple[str, str], ...] = ()


_PATIENTS = select(
    documents.c.id,
    documents.c.patient_mrn,
    documents.c.patient_authority,
    documents.c.document_date,
    documents.c.title,
    documents.c.file_name,
).where(documents.c.id.in_(bindparam("ids", expanding=True)))
_STATES = (
    select(deliveries.c.message_id, deliveries.c.destination, deliveries.c.state)
    .where(
        deliveries.c.message_id.in_(bindparam("mids", expanding=True)),
        deliveries.c.state != "resent",
    )
    .order_by(deliveries.c.id)
)


def _states(conn: Connection, message_ids: Sequence[int]) -> dict[int, list[tuple[str, str]]]:
    out: dict[int, list[tuple[str, str]]] = {}
    if message_ids:
        for r in conn.execute(_STATES, {"mids": list(message_ids)}):
            out.setdefault(r.message_id, []).append((r.destination, r.state))
    return out


def desk_documents(conn: Connection, query: DocumentQuery) -> list[DeskDocument]:
    """The documents that match, newest first (as :func:`document_lines`), each with its
    patient, date, title and the states of its deliveries."""
    lines = document_lines(conn, query)
    if not lines:
        return []
    patients = {r.id: r for r in conn.execute(_PATIENTS, {"ids": [d.id for d in lines]})}
    states = _states(conn, [d.message_id for d in lines if d.message_id is not None])
    out: list[DeskDocument] = []
    for line in lines:
        row = patients.get(line.id)
        out.append(
            DeskDocument(
                **asdict(line),
                patient_mrn=row.patient_mrn if row is not None else "",
                patient_authority=row.patient_authority if row is not None else "",
                document_date=row.document_date if row is not None else "",
                title=row.title if row is not None else None,
                file_name=row.file_name if row is not None else None,
                delivery_states=tuple(states.get(line.message_id or 0, ())),
            )
        )
    return out
