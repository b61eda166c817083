"""The example routes take documents of any type to the stub Epic and a folder and pull the stub
Epic's appointments; `make run` layers engine/sim/routes over them, adding the stub athenahealth.
Both pass `engine routes check`, and the built-in example needs no secret in the environment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from engine.adapters.registry import load_routes
from engine.documents.model import DocumentInfo
from engine.routes.router import Router

MAKE_RUN_ROUTES = Path(__file__).resolve().parents[1] / "engine" / "sim" / "routes"


def _document(document_type: str) -> DocumentInfo:
    return DocumentInfo(
        document_id=1,
        sha256="0" * 64,
        size=1000,
        media_type="application/pdf",
        patient_mrn="DEMO1002",
        document_type=document_type,
        document_date="2026-12-04",
        sender="scanner",
        channel="folder",
    )


def _destinations(site: Path | None, document_type: str) -> dict[str, tuple[str, str]]:
    routes = load_routes(site)
    matched = Router(routes).match(document=_document(document_type))
    return {
        name: (routes.destinations[name].type, route.mapping)
        for route in matched
        for name in route.destinations
    }


def test_every_document_type_goes_to_epic_and_the_folder() -> None:
    for document_type in ("insurance-card", "consent", "referral", "lab-report"):
        assert _destinations(None, document_type) == {
            "stub-epic": ("epic", "fhir"),
            "documents-folder": ("file", "none"),
        }, document_type
    routes = load_routes(None)
    assert (
        routes.destinations["stub-epic"].settings["base_url"].startswith("http://127.0.0.1:8092/")
    )


def test_make_runs_routes_add_the_stub_athena_for_every_type() -> None:
    for document_type in ("insurance-card", "consent", "referral", "lab-report"):
        assert _destinations(MAKE_RUN_ROUTES, document_type) == {
            "stub-epic": ("epic", "fhir"),
            "stub-athena": ("athenahealth", "none"),
            "documents-folder": ("file", "none"),
        }, document_type
    athena = load_routes(MAKE_RUN_ROUTES).destinations["stub-athena"]
    assert athena.settings["base_url"] == "http://127.0.0.1:8093"
    assert athena.settings["client_secret_env"] == "ENGINE_STUB_ATHENA_SECRET"


def test_the_stub_epics_appointments_are_a_pull_source_run_by_hand() -> None:
    source = load_routes(None).sources["stub-epic-appointments"]
    assert source.type == "epic"
    assert (source.every_minutes, source.cron) == (None, None)  # engine pull run, not a schedule
    assert source.settings["base_url"] == "http://127.0.0.1:8092/api/FHIR/R4"


def _routes_check(site: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", "routes", "check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "ENGINE_ROUTES_DIR": site},  # no athena secret
    )


def test_engine_routes_check_passes_on_the_example_and_make_runs_routes() -> None:
    out = _routes_check("")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok: 4 routes, 4 destinations")
    out = _routes_check(str(MAKE_RUN_ROUTES))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok: 5 routes, 5 destinations")
