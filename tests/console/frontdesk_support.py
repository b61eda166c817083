"""The front desk's pages under test (owner: frontdesk-pages): the real app on a real store
(SQLite and PostgreSQL), the real intake and eligibility service (the stub payer answers), with
the console's user given by the test (``dependency_overrides[current_console_user]``), its
CSRF token checked by the console's own check (engine/console/sessions.py).

``waiting_document`` makes the state a destination leaves a document in when the EHR does not
know its patient: stored as the intake stores it, routed to ``epic`` and ``files``, delivered to
``files``, and ``needs-patient`` at ``epic`` (the outcome the dispatcher records for Epic's
"no such patient").
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from fastapi import FastAPI

from engine.adapters.payer import load_payers
from engine.adapters.registry import load_routes
from engine.api.app import create_app
from engine.api.auth import Role
from engine.api.auth_settings import AuthSettings
from engine.console.auth import ConsoleUser, current_console_user
from engine.documents.intake import DocumentIntake, load_document_types
from engine.documents.model import DOCUMENT_ENVELOPE_TYPE, DocumentEnvelope, DocumentInfo
from engine.flow.process import Processor
from engine.jobs.eligibility import EligibilityService
from engine.mappings import load_mappings
from engine.metrics import EngineMetrics
from engine.settings import Settings
from engine.sim.demo import demo_messages
from engine.store import (
    Incoming,
    NewDelivery,
    NewDocument,
    Outcome,
    Processed,
    SqlMessageStore,
    StoredDocument,
)
from tests.api.fakes import FakeHealth, FakeIngest
from tests.jobs.conftest import ROUTES, TIMEZONE, TODAY, service

__all__ = [
    "CAP",
    "TOKEN",
    "front_desk_app",
    "index_demo",
    "user",
    "waiting_document",
]

CAP = 256 * 1024
TOKEN = "csrf-token-of-the-session"


def user(*roles: Role, name: str = "frida") -> ConsoleUser:
    return ConsoleUser(name, frozenset(roles), "session-1", TOKEN, "127.0.0.1:50000")


def front_desk_app(
    store: SqlMessageStore,
    tmp_path: Path,
    who: ConsoleUser,
    *,
    eligibility: EligibilityService | None = None,
) -> tuple[FastAPI, EngineMetrics]:
    """create_app on ``store`` with the intake (a 256 KiB cap, the built-in type table) and
    ``eligibility``; ``who`` is logged in."""
    settings = Settings(var_dir=tmp_path, timezone=TIMEZONE)
    metrics = EngineMetrics()
    intake = DocumentIntake(
        store,
        max_bytes=CAP,
        spool_dir=tmp_path / "spool",
        timezone=TIMEZONE,
        document_types=load_document_types(settings),
    )
    app = create_app(
        settings,
        ingest=FakeIngest(metrics),
        messages=store,
        health=FakeHealth(),
        metrics=metrics,
        auth=AuthSettings(environment="development", dev_secret_file=tmp_path / "secret"),
        documents=intake,
        eligibility=eligibility,
    )
    # the session is the test's; the CSRF check is the console's own (engine.console.sessions)
    app.dependency_overrides[current_console_user] = lambda: who
    return app, metrics


def stored_document(
    store: SqlMessageStore,
    tmp_path: Path,
    *,
    mrn: str = "MRN404",
    authority: str = "CLINIC",
    pdf: bytes | None = None,
) -> StoredDocument:
    """A referral scan for ``mrn`` (of ``authority``; "" for none) stored from the folder, not
    yet processed."""
    data = pdf or b"%PDF-1.4\n" + mrn.encode() + b"\n" + b"0" * 512
    source = tmp_path / f"scan-{mrn}.pdf"
    source.write_bytes(data)
    return store.store_document(
        NewDocument(
            patient_mrn=mrn,
            document_type="referral",
            document_date="2026-11-30",
            sender="scanner-1",
            channel="folder",
            patient_authority=authority,
            title="Referral letter",
        ),
        source,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        media_type="application/pdf",
    )


def waiting_document(
    store: SqlMessageStore, tmp_path: Path, *, mrn: str = "MRN404", pdf: bytes | None = None
) -> tuple[int, int]:
    """A document for ``mrn`` delivered to ``files`` and waiting for its patient at ``epic``:
    (document id, message id)."""
    stored = stored_document(store, tmp_path, mrn=mrn, pdf=pdf)
    done = []
    for mid, raw, kind in store.claim_received("w1"):
        assert kind == "document"
        info = DocumentInfo.from_json(raw)
        body = DocumentEnvelope(info, "none").to_bytes()
        new = [
            NewDelivery(d, "docs", "document", DOCUMENT_ENVELOPE_TYPE, body, info.patient_key)
            for d in ("epic", "files")
        ]
        done.append(Processed(mid, "routed", None, info.patient_key, new, worker="w1"))
    store.finish_batch(done)
    outcomes = [
        Outcome(d.id, ok=True)
        if d.destination == "files"
        else Outcome(d.id, ok=False, error="Patient?identifier: no match", needs_patient=True)
        for d in store.claim_due_deliveries()
    ]
    store.record_outcomes(outcomes)
    return stored.info.document_id, stored.message_id


def index_demo(store: SqlMessageStore, tmp_path: Path) -> EligibilityService:
    """The demo's patients and Monday appointments received and mapped (as tests/jobs does),
    and an eligibility service on them (the stub payer, New York, its clock on Friday)."""
    folder = tmp_path / "routes"
    folder.mkdir(exist_ok=True)
    (folder / "r.yaml").write_text(ROUTES)
    store.save_batch([Incoming(raw=raw, channel="test") for _, raw in demo_messages(TODAY)])
    processor = Processor(store, load_routes(defaults=folder), load_mappings())
    while processor.process_batch():
        pass
    return service(store, load_payers())
