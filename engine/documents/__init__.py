"""Documents: scanned and faxed pages, signed forms and letters, from the front office to the chart.

model     what a document is (:class:`DocumentInfo`), the envelope a document delivery carries and
          the content an adapter reads its bytes from (:class:`DocumentContent`)

A document is stored before it is accepted, like a message: its bytes content-addressed (SHA-256)
in the database, its metadata in ``documents``, and a ``messages`` row of kind ``document`` whose
raw bytes are the metadata as JSON, so routing, mapping, delivery, retries, dead letters, replay
and per-patient order are the messages' own.
"""

from engine.documents.model import (
    DOCUMENT_ENVELOPE_TYPE,
    DocumentContent,
    DocumentEnvelope,
    DocumentInfo,
)

__all__ = ["DOCUMENT_ENVELOPE_TYPE", "DocumentContent", "DocumentEnvelope", "DocumentInfo"]
