"""The eligibility tests' world: the demo patients and appointments, received and mapped, and an
eligibility service whose clock is fixed (Friday 27 November 2026, 13:00 in New York)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from engine.adapters.payer import PayerSet, load_payers
from engine.adapters.registry import load_routes
from engine.flow.process import Processor
from engine.jobs.eligibility import EligibilityService
from engine.mappings import Mappings, load_mappings
from engine.routes.loader import RouteSet
from engine.settings import Settings
from engine.sim.demo import demo_messages
from engine.store import Incoming, SqlMessageStore

TODAY = date(2026, 11, 27)  # a Friday: the next business day is Monday the 30th
MONDAY = date(2026, 11, 30)
TIMEZONE = "America/New_York"

ROUTES = """
destinations:
  fhir: {type: file, directory: /nonexistent}
routes:
  - {name: all, match: {message: [ADT, SIU]}, mapping: fhir, destinations: [fhir]}
"""


@pytest.fixture(scope="module")
def mappings() -> Mappings:
    return load_mappings()


@pytest.fixture
def indexed(store: SqlMessageStore, mappings: Mappings, tmp_path: Path) -> SqlMessageStore:
    """The demo patients and their appointments, received and processed."""
    (tmp_path / "routes").mkdir()
    (tmp_path / "routes" / "r.yaml").write_text(ROUTES)
    routes: RouteSet = load_routes(defaults=tmp_path / "routes")
    store.save_batch([Incoming(raw=raw, channel="test") for _, raw in demo_messages(TODAY)])
    processor = Processor(store, routes, mappings)
    while processor.process_batch():
        pass
    return store


def service(
    store: SqlMessageStore, payers: PayerSet | None = None, **kw: object
) -> EligibilityService:
    """An eligibility service on ``store`` in New York, its clock at Friday 18:00 UTC."""
    settings = Settings(timezone=TIMEZONE)
    return EligibilityService(
        store,
        payers or load_payers(),
        settings,
        clock=lambda: datetime(2026, 11, 27, 18, 0, tzinfo=UTC),
        **kw,  # type: ignore[arg-type]
    )


def api_client(svc: object, tmp_path: Path, role: str = "admin") -> tuple[TestClient, str]:
    """The API over ``svc`` (fakes for the rest) and a dev token with ``role``."""
    from engine.api.app import create_app
    from engine.api.auth_settings import AuthSettings
    from engine.api.tokens import mint_dev_token
    from engine.metrics import EngineMetrics
    from tests.api.fakes import FakeHealth, FakeIngest, FakeMessages

    auth = AuthSettings(dev_secret_file=tmp_path / "secret")
    app = create_app(
        Settings(var_dir=tmp_path),
        ingest=FakeIngest(),
        messages=FakeMessages(),
        health=FakeHealth(),
        metrics=EngineMetrics(),
        auth=auth,
        eligibility=svc,
    )
    return TestClient(app), mint_dev_token(auth, role=role)
