"""The example routes `make run` uses take documents of any type to the stub Epic, the stub
athenahealth and a folder, pull the stub Epic's appointments, and pass `engine routes check`."""

from __future__ import annotations

import subprocess
import sys

from engine.adapters.registry import load_routes
from engine.documents.model import DocumentInfo
from engine.routes.router import Router


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


def test_every_document_type_goes_to_epic_athena_and_the_folder() -> None:
    routes = load_routes(None)
    router = Router(routes)
    for document_type in ("insurance-card", "consent", "referral", "lab-report"):
        matched = router.match(document=_document(document_type))
        by_destination = {
            name: (routes.destinations[name].type, route.mapping)
            for route in matched
            for name in route.destinations
        }
        assert by_destination == {
            "stub-epic": ("epic", "fhir"),
            "stub-athena": ("athenahealth", "none"),
            "documents-folder": ("file", "none"),
        }, document_type
    assert (
        routes.destinations["stub-epic"].settings["base_url"].startswith("http://127.0.0.1:8092/")
    )
    assert routes.destinations["stub-athena"].settings["base_url"] == "http://127.0.0.1:8093"


def test_the_stub_epics_appointments_are_pulled_on_a_schedule() -> None:
    source = load_routes(None).sources["stub-epic-appointments"]
    assert source.type == "epic"
    assert source.every_minutes is not None
    assert source.settings["base_url"] == "http://127.0.0.1:8092/api/FHIR/R4"


def test_engine_routes_check_passes_on_the_example() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "engine", "routes", "check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "ENGINE_ROUTES_DIR": ""},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok: 4 routes, 5 destinations")
