"""A route file's ``athenahealth`` destination and source, read and built through the registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.adapters.athena import AthenaDestination
from engine.adapters.athena_source import AthenaSource
from engine.adapters.registry import build_destination, build_source, load_routes
from engine.errors import ConfigError

ROUTE_FILE = """\
destinations:
  athena-docs:
    type: athenahealth
    base_url: https://api.preview.platform.athenahealth.com
    client_id: engine-test-client
    client_secret_env: ATHENA_ROUTES_SECRET
    practices:
      OAK: {practice_id: "195900", department_id: "1"}
    document_classes: {consent: ADMIN_HIPAA}
    requests_per_second: 5
    retry: {max_attempts: 5}

sources:
  athena-appointments:
    type: athenahealth
    base_url: https://api.preview.platform.athenahealth.com
    client_id: engine-test-client
    client_secret_env: ATHENA_ROUTES_SECRET
    practice_id: "195900"
    department_ids: ["1", "2"]
    payer_ids: {"7001": DEMOPAY}
    every_minutes: 15
    days: 2

routes:
  - name: documents-to-athena
    match: {kind: document}
    mapping: none
    destinations: [athena-docs]
"""


def site_with(tmp_path: Path, text: str) -> Path:
    site = tmp_path / "routes"
    site.mkdir()
    (site / "athena.yaml").write_text(text)
    return site


def test_a_route_file_builds_the_destination_and_the_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    routes = load_routes(site_with(tmp_path, ROUTE_FILE), defaults=tmp_path / "no-defaults")
    monkeypatch.setenv("ATHENA_ROUTES_SECRET", "s3cret")
    dest = build_destination("athena-docs", routes.destinations["athena-docs"])
    assert isinstance(dest, AthenaDestination)
    assert dest.config.practice_for("OAK", None) == ("195900", "1")
    assert dest.config.subclass_for("consent", None) == "ADMIN_HIPAA"
    assert dest.config.token_endpoint.endswith("/oauth2/v1/token")
    source = build_source("athena-appointments", routes.sources["athena-appointments"])
    assert isinstance(source, AthenaSource)
    assert source.config.departments == ["1", "2"]


def test_without_the_secret_neither_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ATHENA_ROUTES_SECRET", raising=False)
    routes = load_routes(site_with(tmp_path, ROUTE_FILE), defaults=tmp_path / "no-defaults")
    with pytest.raises(ConfigError, match="ATHENA_ROUTES_SECRET"):
        build_destination("athena-docs", routes.destinations["athena-docs"])
    with pytest.raises(ConfigError, match="ATHENA_ROUTES_SECRET"):
        build_source("athena-appointments", routes.sources["athena-appointments"])


def test_a_bad_key_is_named_with_its_line(tmp_path: Path) -> None:
    text = ROUTE_FILE.replace('    practice_id: "195900"\n', '    practice_id: "not-a-number"\n')
    with pytest.raises(ConfigError, match=r"athena\.yaml, line \d+.*practice_id"):
        load_routes(site_with(tmp_path, text), defaults=tmp_path / "no-defaults")
