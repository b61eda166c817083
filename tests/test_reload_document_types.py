"""A reload of a running ``engine serve`` applies a changed document type table (issue 12): a type
the site adds is refused by ``POST /documents`` and the watched folder before the reload and
taken after it, without a restart, and the worker (restarted on the reloaded files) maps it; an
invalid table is refused with the file named, and the running table stays."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from engine.sim.pdf import synthetic_pdf
from tests.serve_support import Engine, engine_cli, wait_for

ROUTES = """
destinations:
  chart: {{type: file, directory: "{chart}"}}
routes:
  - name: documents-to-chart
    match: {{kind: document}}
    mapping: fhir
    destinations: [chart]
"""

WOUND_PHOTO = """
types:
  wound-photo:
    display: Wound photo
    txa2: WP
    athena: {class: CLINICALDOCUMENT}
"""

#: wound-photo kept, burn-photo added, but with an athena class athena does not have
INVALID = (
    WOUND_PHOTO
    + """
  burn-photo:
    display: Burn photo
    txa2: BP
    athena: {class: NOSUCHCLASS}
"""
)


class Site:
    """The running engine, its site mapping folder, its inbox and where the chart copies go."""

    token = ""  # an integration's bearer token
    admin = ""  # an admin's

    def __init__(self, tmp_path: Path) -> None:
        self.var = tmp_path / "var"
        self.var.mkdir()
        routes = tmp_path / "routes"
        routes.mkdir()
        self.chart = tmp_path / "chart"
        (routes / "chart.yaml").write_text(ROUTES.format(chart=self.chart))
        self.mappings = tmp_path / "site"
        (self.mappings / "tables").mkdir(parents=True)
        self.inbox = tmp_path / "inbox"
        self.inbox.mkdir()
        env = {
            "ENGINE_HOME": str(self.var),
            "ENGINE_MAPPINGS_DIR": str(self.mappings),
            "ENGINE_DOCUMENTS_INBOX": str(self.inbox),
            "ENGINE_LOG_LEVEL": "INFO",
        }
        self.engine = Engine(self.var, routes, env)
        self.pdfs = 0

    def upload(self, document_type: str) -> httpx.Response:
        self.pdfs += 1
        pdf = synthetic_pdf(document_type, "Testpatient Ann", mrn="MRN1001", seed=self.pdfs)
        return httpx.post(
            f"http://127.0.0.1:{self.engine.http}/documents",
            headers={"Authorization": f"Bearer {self.token}"},
            data={"mrn": "MRN1001", "document_type": document_type, "date": "2026-12-01"},
            files={"file": (f"scan-{self.pdfs}.pdf", pdf, "application/pdf")},
            timeout=30,
        )

    def drop(self, document_type: str) -> str:
        """A scan dropped in the inbox (who and what from its name); the folder it went to."""
        self.pdfs += 1
        name = f"MRN1002_{document_type}_20261201-{self.pdfs}.pdf"
        pdf = synthetic_pdf(document_type, "Testpatient Bob", mrn="MRN1002", seed=self.pdfs)
        (self.inbox / name).write_bytes(pdf)
        for _ in range(150):
            for folder in ("done", "error"):
                if (self.inbox / folder / name).exists():
                    return folder
            time.sleep(0.2)
        raise AssertionError(f"{name} was never taken")

    def log(self) -> str:
        return self.engine.log.read_text(errors="replace")


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    running = Site(tmp_path)
    running.token = engine_cli(running.var, "token", "--role", "integration").splitlines()[-1]
    running.admin = engine_cli(running.var, "token", "--role", "admin").splitlines()[-1]
    running.engine.start()
    try:
        yield running
    finally:
        running.engine.stop()


def test_a_reload_applies_a_changed_document_type_table(site: Site) -> None:
    proc = site.engine.proc
    assert proc is not None
    refused = site.upload("wound-photo")
    assert refused.status_code == 422
    assert "not in the site's document type table" in refused.json()["detail"]
    assert site.drop("wound-photo") == "error"

    (site.mappings / "tables" / "document_types.yaml").write_text(WOUND_PHOTO)
    proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "configuration reloaded" in site.log(), 30), site.log()[-2000:]
    accepted = site.upload("wound-photo")
    assert accepted.status_code == 201, accepted.text
    assert site.drop("wound-photo") == "done"
    assert site.upload("consent").status_code == 201  # the built-in types stay
    # the worker, restarted on the reloaded files, maps the new type to a DocumentReference
    assert wait_for(lambda: len(_chart(site.chart)) == 3, 60), "not delivered"
    types = sorted(doc["type"]["text"] for doc in _chart(site.chart))
    assert types == ["Consent", "Wound photo", "Wound photo"]

    (site.mappings / "tables" / "document_types.yaml").write_text(INVALID)
    kept = httpx.post(
        f"http://127.0.0.1:{site.engine.http}/api/admin/reload",
        headers={"Authorization": f"Bearer {site.admin}"},
        timeout=60,
    )
    assert kept.status_code == 422
    error = kept.json()["error"]
    assert "tables/document_types.yaml" in error and "NOSUCHCLASS" in error
    assert str(site.var) not in error  # the admin's file named, not the running copy
    assert site.upload("wound-photo").status_code == 201  # the running table stayed
    assert site.upload("burn-photo").status_code == 422
    assert site.drop("wound-photo") == "done"
    assert proc.poll() is None  # never restarted


def _chart(folder: Path) -> list[dict[str, object]]:
    """The DocumentReferences the worker wrote to the chart folder."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.rglob("*"):
        if not path.is_file() or path.name.startswith("."):
            continue
        try:
            body = json.loads(path.read_bytes())
        except ValueError:
            continue
        if isinstance(body, dict) and body.get("resourceType") == "DocumentReference":
            found.append(body)
    return found
