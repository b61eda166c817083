"""The one YAML reader of configuration files: lines of keys and items, errors naming them."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from engine.errors import ConfigError
from engine.yamlfile import key_text, parse_file, read_yaml


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Basic(_Strict):
    type: Literal["basic"]
    user: str


class Token(_Strict):
    type: Literal["bearer"]
    token_env: str


class Server(_Strict):
    name: str
    port: int = Field(ge=1, le=65535)
    auth: Annotated[Basic | Token, Field(discriminator="type")] | None = None


class Servers(_Strict):
    servers: list[Server]


TEXT = """\
# servers we talk to
servers:
  - name: a
    port: 1
  - name: b
    port: 2
    auth:
      type: bearer
      token: abc
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_lines_of_keys_and_items(tmp_path: Path) -> None:
    doc = read_yaml(write(tmp_path, TEXT), "s.yaml")
    assert doc.data["servers"][1]["auth"] == {"type": "bearer", "token": "abc"}
    assert doc.lines[("servers",)] == 2  # the key's own line, not its value's
    assert doc.lines[("servers", 1)] == 5
    assert doc.lines[("servers", 1, "auth", "token")] == 9
    assert doc.line_of(("servers", 1, "port", "nope")) == 6
    assert doc.duplicates == []


def test_an_unknown_key_is_reported_first_without_the_union_tag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        read_yaml(write(tmp_path, TEXT), "s.yaml").validate(Servers, secret_hint="name its env")
    assert str(info.value) == (
        "s.yaml, line 9, servers[1].auth.token: Extra inputs are not permitted (name its env) "
        "(and 1 more)"
    )


def test_parse_file_names_file_line_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "servers:\n  - name: a\n    port: 99999\n")
    with pytest.raises(ConfigError, match=r"^site/s.yaml, line 3, servers\[0\].port: Input should"):
        parse_file(path, Servers, "site/s.yaml")


def test_keys_written_twice_are_noted(tmp_path: Path) -> None:
    doc = read_yaml(write(tmp_path, "a: 1\nb: 2\na: 3\n"), "s.yaml")
    assert doc.data == {"a": 3, "b": 2} and doc.duplicates == [(("a",), 3)]


def test_syntax_errors_and_documents_that_are_not_mappings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^s.yaml, line 2: not valid YAML"):
        read_yaml(write(tmp_path, "a: 1\nb: [1, 2\n"), "s.yaml")
    with pytest.raises(ConfigError, match=r"^s.yaml, line 1: expected a mapping"):
        read_yaml(write(tmp_path, "- 1\n"), "s.yaml").validate(Servers)


def test_key_text() -> None:
    assert key_text(("routes", 0, "destinations", 1)) == "routes[0].destinations[1]"
    assert key_text(()) == ""


# --- limits: what a configuration file may hold (issue 11) ---------------------------------------

#: the classic "billion laughs": nine levels of nine aliases, 10**9 strings once expanded
LAUGHS = "destinations: {}\nroutes: []\nlol0: &a0 lol\n" + "".join(
    f"lol{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10)
)


def test_an_alias_bomb_is_refused_before_it_is_expanded(tmp_path: Path) -> None:
    path = write(tmp_path, LAUGHS)
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError) as info:
            read_yaml(path, "site/routes.yaml")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # lol6 is the first whose expansion (over a million values) passes the limit
    assert str(info.value).startswith("site/routes.yaml, line 9: more than 200000 values")
    assert "alias" in str(info.value)
    assert peak < 5 * 2**20, f"refusing the bomb took {peak} bytes"


def test_an_alias_bomb_in_a_route_file_stops_the_route_reader(tmp_path: Path) -> None:
    from engine.routes.loader import read_routes

    (tmp_path / "routes.yaml").write_text(LAUGHS, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"routes.yaml, line 9: more than 200000 values"):
        read_routes(tmp_path, defaults=tmp_path / "none")


def test_a_merge_key_bomb_is_refused(tmp_path: Path) -> None:
    text = "m0: &m0 {k: v}\n" + "".join(
        f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 9)}]}}\n" for i in range(1, 9)
    )
    with pytest.raises(ConfigError, match=r"^s.yaml, line \d: more than 200000 values"):
        read_yaml(write(tmp_path, text), "s.yaml")


def test_a_few_aliases_still_load(tmp_path: Path) -> None:
    text = "base: &b {port: 1, name: a}\nservers: [*b, *b]\nmore:\n  <<: *b\n  port: 2\n"
    doc = read_yaml(write(tmp_path, text), "s.yaml")
    assert doc.data["servers"] == [{"port": 1, "name": "a"}] * 2
    assert doc.data["more"] == {"port": 2, "name": "a"}


def test_an_alias_of_itself_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^s.yaml, line 2: an alias .* inside itself"):
        read_yaml(write(tmp_path, "a: 1\nb: &x [1, *x]\n"), "s.yaml")


def test_a_limit_on_values_can_be_set(tmp_path: Path) -> None:
    path = write(tmp_path, "a: [1, 2, 3]\n")
    # six values: the mapping, its key, the list and its three items
    assert read_yaml(path, "s.yaml", max_values=6).data == {"a": [1, 2, 3]}
    with pytest.raises(ConfigError, match=r"^s.yaml, line 1: more than 5 values"):
        read_yaml(path, "s.yaml", max_values=5)


def test_deep_nesting_is_refused(tmp_path: Path) -> None:
    text = "a: 1\nb: " + "[" * 100 + "]" * 100 + "\n"
    with pytest.raises(ConfigError, match=r"^s.yaml, line 2: nested deeper than 64 levels"):
        read_yaml(write(tmp_path, text), "s.yaml")
    nested = "".join(f"{'  ' * i}k{i}:\n" for i in range(70)) + "  " * 70 + "end: 1\n"
    with pytest.raises(ConfigError, match=r"^s.yaml, line \d+: nested deeper than 64 levels"):
        read_yaml(write(tmp_path, nested), "s.yaml")


def test_an_oversize_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "a: 1\n" + ("#" * 80 + "\n") * (2**20 // 81 + 1))
    with pytest.raises(ConfigError) as info:
        read_yaml(path, "site/routes.yaml")
    assert str(info.value).startswith("site/routes.yaml: larger than 1 MiB (1048576 bytes)")
    with pytest.raises(ConfigError, match=r"^s.yaml: larger than 4 bytes"):
        read_yaml(write(tmp_path, "a: 12\n"), "s.yaml", max_bytes=4)


@pytest.mark.parametrize(
    ("value", "tag"),
    [
        ("!!python/object:os.system {}", "!!python/object:os.system"),
        ("!!python/name:os.system ''", "!!python/name:os.system"),
        ("!!python/object/apply:os.system [echo hi]", "!!python/object/apply:os.system"),
        ("!custom x", "!custom"),
        ("!!binary aGk=", "!!binary"),
    ],
)
def test_tags_other_than_plain_values_are_refused(tmp_path: Path, value: str, tag: str) -> None:
    path = write(tmp_path, f"a: 1\nb:\n  c: {value}\n")
    with pytest.raises(ConfigError) as info:
        read_yaml(path, "site/routes.yaml")
    assert str(info.value).startswith(f"site/routes.yaml, line 3: tag {tag!r} is not allowed")


def test_plain_tags_are_allowed(tmp_path: Path) -> None:
    doc = read_yaml(write(tmp_path, "a: !!str 1\nb: !!int '2'\n=: x\n"), "s.yaml")
    assert doc.data == {"a": "1", "b": 2, "=": "x"}
