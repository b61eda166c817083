"""The one YAML reader of configuration files: lines of keys and items, errors naming them."""

from __future__ import annotations

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
