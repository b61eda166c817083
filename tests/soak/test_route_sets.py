"""The soak's route sets (``--routes``) are valid route files for the engine, and each sends
messages where its name says: the example's to the FHIR server and a folder, ``file`` mapped
to a folder only."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.adapters.registry import load_routes
from soak.__main__ import _options
from soak.harness import Options, route_file


@pytest.mark.parametrize(
    ("name", "kinds"),
    [("example", {"fhir", "file"}), ("file", {"file"})],
)
def test_each_route_set_loads_and_sends_adt_where_its_name_says(
    tmp_path: Path, name: str, kinds: set[str]
) -> None:
    site = tmp_path / "routes"
    site.mkdir()
    text = route_file(Options(routes=name), "http://127.0.0.1:9/fhir", tmp_path)
    (site / "example.yaml").write_text(text)  # replaces the built-in example, as the soak's does
    routes = load_routes(site)
    adt = [r for r in routes.routes if r.match.message and "ADT" in r.match.message]
    assert {routes.destinations[d].type for r in adt for d in r.destinations} == kinds
    if name != "example":
        assert all(r.mapping == "fhir" for r in adt)


def test_the_routes_option_defaults_to_the_example_and_refuses_unknown_names() -> None:
    assert _options([]).routes == "example"
    assert _options(["--routes", "file"]).routes == "file"
    with pytest.raises(SystemExit):
        _options(["--routes", "nowhere"])


def test_the_fhir_destinations_concurrency_is_the_options(tmp_path: Path) -> None:
    site = tmp_path / "routes"
    site.mkdir()
    opts = _options(["--fhir-concurrency", "24"])
    (site / "example.yaml").write_text(route_file(opts, "http://127.0.0.1:9/fhir", tmp_path))
    routes = load_routes(site)
    assert routes.destinations["local-fhir"].concurrency == 24
    assert routes.destinations["dropbox"].concurrency is None
    assert _options([]).fhir_concurrency is None
