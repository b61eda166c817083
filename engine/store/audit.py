"""The audit trail: who replayed, resent or viewed a message's payload, from where, and when.

One row per action an operator took on a message, from the CLI (the OS user) or the API (the
token's subject), refused ones included (outcome ``refused``). Each row names the message and its
patient key (whose data was seen or sent) and never the payload. The console extends this table
(tables.py ``audit_log``); this is the minimal trail issue 11 asks for.
"""

from __future__ import annotations

from sqlalchemy import Connection, bindparam, insert, select

from engine.store.clean import clean
from engine.store.db import Repository, aware, utcnow
from engine.store.tables import audit_log, messages
from engine.store.views import AuditEntry

__all__ = ["ACTIONS", "Audit", "OUTCOMES", "audit"]

#: what an operator can do to a message that the trail records
ACTIONS = frozenset(
    {
        "replay",
        "resend",
        "view-payload",
        # documents (issue 12): their metadata names a patient, so lists and views are recorded
        "match-document",
        "view-document",
        "list-documents",
        # the console (issue 13): views of patient data, and what users and admins did
        "search-messages",
        "view-message",
        "view-worklist",
        "recheck-eligibility",
        "upload-document",
        "view-report",
        "workbench",
        "mark-handled",
        "reprocess",
        "reload",
        "login",
        "login-failed",
        "logout",
        "session-expired",
        "user-add",
        "user-change",
        "user-disable",
        "view-audit",
        "export-audit",
        "alert",
    }
)
#: where an action came from
SOURCES = frozenset({"cli", "api", "console", "engine"})
OUTCOMES = frozenset({"ok", "refused", "error"})

_WIDTHS = {c.name: getattr(c.type, "length", None) for c in audit_log.columns}
_PATIENT_OF = select(messages.c.patient_key).where(messages.c.id == bindparam("mid"))


def audit(
    conn: Connection,
    *,
    action: str,
    actor: str,
    source: str,
    message_id: int | None,
    outcome: str,
    detail: str | None = None,
    peer: str | None = None,
    patient_key: str | None = None,
) -> None:
    """Record one action in the caller's transaction (so a resend and its record commit
    together); the message's patient key is read here, unless ``patient_key`` names the
    patient (a search by MRN, a worklist: no one message)."""
    if action not in ACTIONS or outcome not in OUTCOMES:
        raise ValueError(f"audit: unknown action {action!r} or outcome {outcome!r}")
    patient = patient_key
    if patient is None and message_id is not None:
        patient = conn.execute(_PATIENT_OF, {"mid": message_id}).scalar_one_or_none()
    conn.execute(
        insert(audit_log).values(
            at=utcnow(),
            actor=clean(actor or "unknown", _WIDTHS["actor"]),
            source=source,
            action=action,
            message_id=message_id,
            patient_key=patient,
            detail=clean(detail),
            outcome=outcome,
            peer=clean(peer, _WIDTHS["peer"]),
        )
    )


class Audit(Repository):
    """Recording and listing the audit trail."""

    def record_audit(
        self,
        *,
        action: str,
        actor: str,
        source: str,
        message_id: int | None,
        outcome: str,
        detail: str | None = None,
        peer: str | None = None,
        patient_key: str | None = None,
    ) -> None:
        """Record an action taken outside a store transaction (a payload view, a refusal)."""
        with self._tx() as conn:
            audit(
                conn,
                action=action,
                actor=actor,
                source=source,
                message_id=message_id,
                outcome=outcome,
                detail=detail,
                peer=peer,
                patient_key=patient_key,
            )

    def audit_entries(self, *, limit: int = 50, message_id: int | None = None) -> list[AuditEntry]:
        """The newest entries first, optionally only those of one message."""
        query = (
            select(
                audit_log.c.id,
                audit_log.c.at,
                audit_log.c.actor,
                audit_log.c.source,
                audit_log.c.action,
                audit_log.c.message_id,
                audit_log.c.patient_key,
                audit_log.c.outcome,
                audit_log.c.detail,
                audit_log.c.peer,
            )
            .order_by(audit_log.c.at.desc(), audit_log.c.id.desc())
            .limit(limit)
        )
        if message_id is not None:
            query = query.where(audit_log.c.message_id == message_id)
        with self.db_engine.connect() as conn:
            return [
                AuditEntry(**{**row._asdict(), "at": aware(row.at)}) for row in conn.execute(query)
            ]
