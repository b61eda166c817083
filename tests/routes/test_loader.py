"""Route files: the built-in example, site layering, and errors that name file, line and key.

Loaded as the engine loads them (:func:`engine.adapters.registry.load_routes`): each destination's
own keys checked by its adapter's config model."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.adapters.fhir_rest import FhirDestination
from engine.adapters.files import FileDestination
from engine.adapters.mllp.client import MllpDestination
from engine.adapters.registry import destination_config, load_routes
from engine.errors import ConfigError
from engine.retry import RetryPolicy
from engine.routes import loader
from engine.routes.loader import RouteSet
from engine.settings import engine_home

DESTS = """\
destinations:
  local-fhir:
    type: fhir
    base_url: http://127.0.0.1:8090/fhir/
  lab:
    type: mllp
    host: 127.0.0.1
    port: 2576
    retry: {max_attempts: 3}
"""


def write(d: Path, name: str, text: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    p = d / name
    p.write_text(text, encoding="utf-8")
    return p


def load_site(tmp_path: Path, files: dict[str, str], with_builtin: bool = False) -> RouteSet:
    site = tmp_path / "site"
    for name, text in files.items():
        write(site, name, text)
    empty = tmp_path / "builtin"
    empty.mkdir(exist_ok=True)
    return load_routes(site, defaults=None if with_builtin else empty)


def error_of(tmp_path: Path, files: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_site(tmp_path, files)
    return str(info.value)


def test_builtin_example_routes_adt_siu_dft_to_local_fhir_and_adt_to_dropbox() -> None:
    rs = load_routes(None)
    fhir = destination_config(rs.destinations["local-fhir"])
    assert isinstance(fhir, FhirDestination)
    assert (fhir.base_url, fhir.mode, fhir.auth.type) == (
        "http://127.0.0.1:8090/fhir",
        "transaction",
        "none",
    )
    drop = destination_config(rs.destinations["dropbox"])
    # a relative folder is the engine home's (ENGINE_HOME, else the directory started in)
    assert isinstance(drop, FileDestination) and drop.directory == engine_home() / "var/outbox"
    to_fhir = rs.route("to-local-fhir")
    assert to_fhir.mapping == "fhir" and to_fhir.match.message == ["ADT", "SIU", "DFT"]
    assert rs.route("adt-to-dropbox").destinations == ["dropbox"]
    assert rs.origin["route:to-local-fhir"] == "(built-in) example.yaml"


def test_site_file_adds_routes_and_can_use_builtin_destinations(tmp_path: Path) -> None:
    rs = load_site(
        tmp_path,
        {
            "lab.yaml": DESTS.replace("local-fhir", "other-fhir")
            + "routes:\n  - {name: orders, match: {message: [ORM]}, mapping: none,"
            " destinations: [lab, local-fhir]}\n"
        },
        with_builtin=True,
    )
    assert [r.name for r in rs.routes] == [
        "to-local-fhir",
        "adt-to-dropbox",
        "documents-to-epic",
        "documents-to-folder",
        "orders",
    ]
    lab = rs.destinations["lab"]
    assert isinstance(destination_config(lab), MllpDestination)
    assert lab.retry == RetryPolicy(max_attempts=3, base_delay_s=2, max_delay_s=300)
    assert rs.origin["route:orders"].endswith("site/lab.yaml")


def test_site_file_of_the_same_name_replaces_the_builtin(tmp_path: Path) -> None:
    rs = load_site(tmp_path, {"example.yaml": "routes: []\n"}, with_builtin=True)
    assert rs.routes == [] and rs.destinations == {}


def test_defaults_and_retry_policy_backoff() -> None:
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.base_delay_s, policy.max_delay_s) == (10, 2.0, 300.0)
    assert [policy.delay_for(n) for n in (1, 2, 3, 8, 9, 50)] == [2, 4, 8, 256, 300, 300]


def test_unknown_destination_names_route_and_destination_with_line(tmp_path: Path) -> None:
    text = DESTS + (
        "routes:\n"
        "  - name: adt-out\n"
        "    match: {message: [ADT]}\n"
        "    mapping: fhir\n"
        "    destinations:\n"
        "      - local-fhir\n"
        "      - fihr\n"
    )
    msg = error_of(tmp_path, {"r.yaml": text})
    assert "site/r.yaml, line 16, routes[0].destinations[1]" in msg
    assert "route 'adt-out'" in msg and "unknown destination 'fihr'" in msg
    assert "defined: lab, local-fhir" in msg


def test_unknown_mapping_names_route_and_value_with_line(tmp_path: Path) -> None:
    text = DESTS + "routes:\n  - name: adt-out\n    mapping: xml\n    destinations: [lab]\n"
    msg = error_of(tmp_path, {"r.yaml": text})
    assert "site/r.yaml, line 12, routes[0].mapping" in msg
    assert "route 'adt-out'" in msg and "unknown mapping 'xml'" in msg
    assert "fhir, none, hl7v2" in msg


@pytest.mark.parametrize(
    ("text", "where", "says"),
    [
        (
            "destinations:\n  x:\n    type: fhir\n    base_url: http://h/fhir\n"
            "    auth: {type: bearer, token: abc}\n",
            "line 5, destinations.x.auth.token",
            "Extra inputs are not permitted (a secret never goes in a route file",
        ),
        (
            "destinations:\n  x:\n    type: fhir\n    base_url: http://h/fhir\n"
            "    auth: {type: bearer, token_env: 'abc def'}\n",
            "line 5, destinations.x.auth.token_env",
            "not an environment variable name",
        ),
        (
            "destinations:\n  x: {type: smtp, host: h}\n",
            "line 2, destinations.x",
            "does not match any of the expected tags",
        ),
        (
            "destinations:\n  x:\n    type: mllp\n    host: h\n    port: 99999\n",
            "line 5, destinations.x.port",
            "less than or equal to 65535",
        ),
        (
            "routes:\n  - name: r\n    match:\n      conditions:\n"
            "        - {path: 'PV1 2', in: [O]}\n    mapping: none\n    destinations: [d]\n",
            "line 5, routes[0].match.conditions[0].path",
            "malformed path",
        ),
        (
            "routes:\n  - name: r\n    match:\n      conditions:\n        - {path: PV1-2}\n"
            "    mapping: none\n    destinations: [d]\n",
            "line 5, routes[0].match.conditions[0]",
            "needs 'in', 'not_in' or 'present'",
        ),
        (
            "routes:\n  - name: r\n    match: {message: [adt]}\n    mapping: fhir\n"
            "    destinations: [d]\n",
            "line 3, routes[0].match.message",
            "'adt' is not a message code",
        ),
        (
            "routes:\n  - name: r\n    match: {message: [ADT], resource_type: [Patient]}\n"
            "    mapping: none\n    destinations: [d]\n",
            "line 3, routes[0].match",
            "cannot be mixed with HL7v2 criteria",
        ),
        (
            "routes:\n  - name: r\n    match: {resource_type: [Patient]}\n    mapping: fhir\n"
            "    destinations: [d]\n",
            "line 2, routes[0]",
            "mapping 'fhir' converts HL7v2",
        ),
        (
            "routes:\n  - name: r\n    mapping: none\n    destinations: []\n",
            "line 4, routes[0].destinations",
            "at least 1 item",
        ),
        ("routes:\n  - name: r\n    mapping: [none\n", "line 3", "not valid YAML"),
    ],
)
def test_errors_name_file_line_and_key(tmp_path: Path, text: str, where: str, says: str) -> None:
    msg = error_of(tmp_path, {"bad.yaml": text})
    assert f"site/bad.yaml, {where}" in msg, msg
    assert says in msg, msg


def test_a_route_name_defined_twice_names_both_files(tmp_path: Path) -> None:
    route = "routes:\n  - {name: same, mapping: none, destinations: [lab]}\n"
    msg = error_of(tmp_path, {"a.yaml": DESTS + route, "b.yaml": "\n" + route})
    assert "site/b.yaml, line 3, routes[0].name" in msg
    assert "route 'same' is already defined in" in msg and "site/a.yaml" in msg


def test_a_destination_defined_twice_names_both_files(tmp_path: Path) -> None:
    msg = error_of(tmp_path, {"a.yaml": DESTS, "b.yaml": DESTS})
    assert "site/b.yaml, line 2, destinations.local-fhir" in msg
    assert "already defined in" in msg and "site/a.yaml" in msg


def test_a_key_written_twice_in_one_file_is_an_error(tmp_path: Path) -> None:
    text = DESTS + "  lab:\n    type: file\n    directory: out\n"
    msg = error_of(tmp_path, {"a.yaml": text})
    assert "site/a.yaml, line 10, destinations.lab: written twice" in msg


def test_missing_site_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="routes directory not found"):
        load_routes(tmp_path / "nope")


def test_file_must_be_a_mapping(tmp_path: Path) -> None:
    msg = error_of(tmp_path, {"a.yaml": "- just\n- a list\n"})
    assert "site/a.yaml, line 1: expected a mapping" in msg


def test_the_routes_alone_keep_a_destinations_own_keys_for_its_adapter(tmp_path: Path) -> None:
    site = tmp_path / "site"
    write(site, "a.yaml", "destinations:\n  x: {type: smtp, host: h, retry: {max_attempts: 2}}\n")
    rs = loader.read_routes(site, defaults=tmp_path)
    x = rs.destinations["x"]
    assert (x.type, x.retry.max_attempts, x.settings) == ("smtp", 2, {"host": "h"})


def test_the_destination_check_is_given_each_destination(tmp_path: Path) -> None:
    seen: list[str] = []
    write(tmp_path / "site", "a.yaml", DESTS)
    loader.read_routes(
        tmp_path / "site", defaults=tmp_path, check_destination=lambda d: seen.append(d.type)
    )
    assert seen == ["fhir", "mllp"]
