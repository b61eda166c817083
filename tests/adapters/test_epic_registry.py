"""The ``epic`` destination and pull source in route files: keys checked by their models, and
routes that would send Epic what it does not take refused when the routes are loaded."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from engine.adapters.epic import EpicDestination, EpicDocumentDestination, EpicSource
from engine.adapters.registry import (
    build_destination,
    build_source,
    destination_config,
    load_routes,
)
from engine.errors import ConfigError
from engine.routes.spec import DestinationSpec, SourceSpec

BASE = "https://fhir.example.org/api/FHIR/R4"
MRN = "urn:oid:1.2.840.114350.1.13.99999.2.7.5.737384.14"


def test_registry_builds_epic_and_checks_its_keys() -> None:
    spec = DestinationSpec.model_validate(
        {"type": "epic", "base_url": BASE, "client_id": "c", "mrn_system": MRN}
    )
    config = destination_config(spec)
    assert isinstance(config, EpicDestination)
    assert "system/DocumentReference.write" in config.scope
    assert isinstance(build_destination("ehr", spec), EpicDocumentDestination)
    bad = DestinationSpec.model_validate({"type": "epic", "base_url": BASE})
    with pytest.raises(Exception, match="client_id"):
        destination_config(bad)


def test_registry_builds_the_epic_source() -> None:
    spec = SourceSpec.model_validate(
        {"type": "epic", "every_minutes": 30, "base_url": BASE, "client_id": "c", "mrn_system": MRN}
    )
    source = build_source("epic-pull", spec)
    assert isinstance(source, EpicSource)
    assert source.config.status == ["booked"]
    with pytest.raises(ConfigError, match="mrn_system"):
        build_source(
            "x", SourceSpec.model_validate({"type": "epic", "base_url": BASE, "client_id": "c"})
        )


def routes_file(tmp_path: Path, route: str) -> Path:
    site = tmp_path / "routes"
    site.mkdir()
    (site / "epic.yaml").write_text(
        textwrap.dedent(
            f"""
            destinations:
              epic:
                type: epic
                base_url: {BASE}
                client_id: engine-demo
                mrn_system: "{MRN}"
            routes:
            """
        )
        + textwrap.indent(textwrap.dedent(route), "  ")
    )
    return site


def test_documents_as_fhir_to_epic_load(tmp_path: Path) -> None:
    site = routes_file(
        tmp_path,
        """
        - name: docs-to-epic
          match: {kind: document}
          mapping: fhir
          destinations: [epic]
        """,
    )
    routes = load_routes(site, defaults=tmp_path / "none")
    assert routes.route("docs-to-epic").destinations == ["epic"]


@pytest.mark.parametrize(
    ("route", "says"),
    [
        (
            """
            - name: mdm-to-epic
              match: {kind: document}
              mapping: hl7v2
              destinations: [epic]
            """,
            "mllp destination",
        ),
        (
            """
            - name: adt-to-epic
              match: {kind: hl7v2}
              mapping: fhir
              destinations: [epic]
            """,
            "Epic takes HL7v2 over MLLP",
        ),
    ],
)
def test_routes_sending_epic_what_it_does_not_take_are_refused(
    tmp_path: Path, route: str, says: str
) -> None:
    site = routes_file(tmp_path, route)
    with pytest.raises(ConfigError, match=says) as caught:
        load_routes(site, defaults=tmp_path / "none")
    assert "epic.yaml" in str(caught.value)
