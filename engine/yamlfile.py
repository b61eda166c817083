"""Read a YAML configuration file with the line of every key, and name that line in its errors.

Mapping files, route files, payer files and rosters are YAML parsed into pydantic models at
start-up; a mistake must stop the engine with the file, the line and the key, as in
``segments/PID.yaml, line 12, rules[3].table: no code table named 'sex'``. This module is the one
place that does it: :func:`read_yaml` parses a file once (with libyaml's parser where PyYAML was
built with it: start-up reads some hundred mapping files, and it is about ten times faster than
the pure-Python one) and keeps the line of every key and list item; :meth:`YamlFile.validate`
validates the document, or a part of it, and turns the first pydantic error into that message;
:func:`parse_file` does both for a file that is one model.

A key's line is the line the key is written on (for a list item, the item's first line). The
error shown is the first one, or the first unknown key when there is one: a misspelt key also
makes its correct spelling "missing", and the misspelling is what to fix. The union tags pydantic
puts into an error's location (``auth.oauth2.scope``) are left out of the key shown
(``auth.scope``), as are its validator names.

A pure leaf: it imports nothing of the engine but its error type, so the core (mappings,
routes) and the adapters may all use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from engine.errors import ConfigError

__all__ = ["Key", "YamlFile", "key_text", "parse_file", "read_yaml"]

M = TypeVar("M", bound=BaseModel)

#: a key path into a document: mapping keys and list indexes (``("routes", 0, "name")``)
Key = tuple[Any, ...]

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

#: words in a key that say it holds a secret, which a configuration file must only name
_SECRET_WORDS = ("token", "secret", "password")


def key_text(key: Sequence[Any]) -> str:
    """A key path as a file's reader writes it: ``routes[0].destinations[1]``."""
    out = ""
    for part in key:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


@dataclass(frozen=True)
class YamlFile:
    """One parsed YAML file: its data and where each key and list item is written."""

    #: how errors name the file (``(built-in) segments/PID.yaml``, ``site/routes.yaml``)
    where: str
    data: Any
    #: the line (from 1) of every key and list item by key path; ``()`` is the document
    lines: dict[Key, int] = field(default_factory=dict)
    #: keys written twice in one mapping, which YAML loaders collapse to the last one silently
    duplicates: list[tuple[Key, int]] = field(default_factory=list)

    def line_of(self, key: Sequence[Any]) -> int:
        """The line of the deepest part of ``key`` the file writes (1 when it writes none)."""
        for end in range(len(key), -1, -1):
            line = self.lines.get(tuple(key[:end]))
            if line is not None:
                return line
        return 1

    def error(self, key: Sequence[Any], message: str) -> ConfigError:
        """A :class:`ConfigError` naming the file, the line of ``key`` and the key."""
        return ConfigError(
            f"{self.where}, line {self.line_of(key)}, {key_text(key) or '(file)'}: {message}"
        )

    def mapping(self) -> dict[str, Any]:
        """The document, which must be a mapping of keys."""
        if not isinstance(self.data, dict):
            raise ConfigError(
                f"{self.where}, line 1: expected a mapping of keys (e.g. 'segment: PID')"
            )
        return self.data

    def validate(self, model: type[M], *, secret_hint: str | None = None) -> M:
        """The document, which must be a mapping, as ``model``.

        ``secret_hint`` is added to an "unknown key" error when the key looks like a secret
        (``token``). Raises :class:`ConfigError` naming the file, the line and the key.
        """
        try:
            return model.model_validate(self.mapping())
        except ValidationError as exc:
            raise self.validation_error(exc, secret_hint=secret_hint) from exc

    def validation_error(
        self, exc: ValidationError, *, at: Key = (), secret_hint: str | None = None
    ) -> ConfigError:
        """A pydantic error as a :class:`ConfigError`: its first problem (an unknown key first)
        with the line and key as the file writes them; ``at`` is where the validated part of the
        document sits (``("destinations", "lab")``), empty for the whole document."""
        errors = exc.errors()
        err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        key = self._written_key((*at, *err["loc"]))
        message = err["msg"].removeprefix("Value error, ")
        if (
            secret_hint
            and err["type"] == "extra_forbidden"
            and any(w in str(key[-1]).lower() for w in _SECRET_WORDS)
        ):
            message += f" ({secret_hint})"
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more)"
        return self.error(key, message)

    def _written_key(self, loc: Sequence[Any]) -> Key:
        """An error location without what pydantic adds to it: validator names
        (``function-after[...]``) and union tags (a part the file does not write, short of the
        last, which may be a key the file misses)."""
        key: list[Any] = []
        for n, part in enumerate(loc):
            if isinstance(part, str):
                if part.startswith("function-"):
                    continue
                if n < len(loc) - 1 and (*key, part) not in self.lines:
                    continue
            key.append(part)
        return tuple(key)


def read_yaml(path: Path, where: str) -> YamlFile:
    """Parse one YAML file (PyYAML's safe loader) and note where each key is written.

    Raises :class:`ConfigError` when the file cannot be read or is not valid YAML.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read ({exc})") from exc
    loader = _Loader(text)
    try:
        node: yaml.Node | None = loader.get_single_node()
        # constructed from the same nodes: the text is parsed once
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise _syntax_error(exc, where) from exc
    finally:
        loader.dispose()
    out = YamlFile(where, data)
    if node is not None:
        _note_lines(node, (), out.lines, out.duplicates)
    return out


def parse_file(path: Path, model: type[M], where: str) -> M:
    """Read one YAML file that is one ``model``; errors name the file, the line and the key."""
    return read_yaml(path, where).validate(model)


def _syntax_error(exc: yaml.YAMLError, where: str) -> ConfigError:
    # the construct that failed (context) is where to look; the problem may be lines later
    ctx = getattr(exc, "context_mark", None)
    mark = getattr(exc, "problem_mark", None)
    first = ctx or mark
    line = f", line {first.line + 1}" if first is not None else ""
    problem = getattr(exc, "problem", None) or str(exc)
    if ctx is not None and mark is not None and mark.line != ctx.line:
        problem += f" at line {mark.line + 1}"
    return ConfigError(f"{where}{line}: not valid YAML ({problem})")


def _note_lines(
    node: yaml.Node, at: Key, lines: dict[Key, int], duplicates: list[tuple[Key, int]]
) -> None:
    lines.setdefault(at, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for k, v in node.value:
            here = (*at, k.value)
            if k.value in seen:
                duplicates.append((here, k.start_mark.line + 1))
            seen.add(k.value)
            lines[here] = k.start_mark.line + 1
            _note_lines(v, here, lines, duplicates)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _note_lines(v, (*at, i), lines, duplicates)
