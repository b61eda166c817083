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

A file is bounded before anything is built from it (a "billion laughs" route file of a dozen
lines once took 4.7 GB at start-up): at most :data:`MAX_BYTES` of text, and once parsed, before
the document is constructed, at most :data:`MAX_VALUES` values counting an alias as its anchor's
whole content again, nested at most :data:`MAX_DEPTH` deep, no alias inside the value it names,
and no tags but the plain ones (``!!python/object`` and ``!custom`` are refused). The parse keeps
aliases as shared nodes, so a bomb is refused from a few kilobytes of nodes, and the count walks
each node once.

A pure leaf: it imports nothing of the engine but its error type, so the core (mappings,
routes) and the adapters may all use it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from engine.errors import ConfigError

__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_VALUES",
    "Key",
    "YamlFile",
    "key_text",
    "parse_file",
    "read_yaml",
]

M = TypeVar("M", bound=BaseModel)

#: a key path into a document: mapping keys and list indexes (``("routes", 0, "name")``)
Key = tuple[Any, ...]

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

#: the most bytes a configuration file may have (the largest built-in one has 9 KB)
MAX_BYTES = 2**20
#: the most values (mappings, keys, lists, items) a file may hold, an alias counting its anchor's
#: whole content again; a file of ``MAX_BYTES`` without aliases writes some 200 000 at most
MAX_VALUES = 200_000
#: the deepest a value may be nested, the document being level 1 and a mapping's keys and values
#: one level below it (the built-in files go 12 deep)
MAX_DEPTH = 64

_YAML_TAG = "tag:yaml.org,2002:"
#: the tags a configuration file may hold: plain values, lists and mappings, merge keys (``<<``)
_PLAIN_TAGS = frozenset(
    _YAML_TAG + t
    for t in ("str", "int", "float", "bool", "null", "timestamp", "seq", "map", "merge", "value")
)

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


def read_yaml(
    path: Path,
    where: str,
    *,
    max_bytes: int = MAX_BYTES,
    max_values: int = MAX_VALUES,
    max_depth: int = MAX_DEPTH,
) -> YamlFile:
    """Parse one YAML file (PyYAML's safe loader) and note where each key is written.

    Raises :class:`ConfigError` when the file cannot be read, is not valid YAML, or passes one of
    the limits (see the module's docstring), naming the file and, but for its size, the line.
    """
    try:
        with path.open("rb") as f:
            # no more than one byte past the limit is read, in a buffer of the file's size
            size = os.fstat(f.fileno()).st_size
            raw = f.read(min(size, max_bytes) + 1)
            if len(raw) > size:  # a pipe, or a file growing as it is read
                raw += f.read(max_bytes + 1 - len(raw))
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read ({exc})") from exc
    if len(raw) > max_bytes:
        raise ConfigError(
            f"{where}: larger than {_size(max_bytes)}, the most a configuration file may have"
        )
    loader = _Loader(text)
    try:
        node: yaml.Node | None = loader.get_single_node()
        if node is not None:
            _Bounds(where, max_values, max_depth).visit(node, 1)
        # constructed from the same nodes: the text is parsed once
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise _syntax_error(exc, where) from exc
    except RecursionError as exc:  # the pure-Python parser recurses (libyaml stops at 1000)
        raise ConfigError(f"{where}: nested deeper than {max_depth} levels") from exc
    finally:
        loader.dispose()
    out = YamlFile(where, data)
    if node is not None:
        _note_lines(node, (), out.lines, out.duplicates)
    return out


def parse_file(path: Path, model: type[M], where: str) -> M:
    """Read one YAML file that is one ``model``; errors name the file, the line and the key."""
    return read_yaml(path, where).validate(model)


def _size(n: int) -> str:
    return f"{n // 2**20} MiB ({n} bytes)" if n >= 2**20 and n % 2**20 == 0 else f"{n} bytes"


class _Bounds:
    """The limits on a parsed document, checked on its nodes before it is constructed.

    An alias is a second reference to its anchor's node: its count (values and height) is
    remembered by node, so each node is walked once and a bomb is refused in the time and memory
    of its few nodes, at the first one whose expansion passes the limit.
    """

    def __init__(self, where: str, max_values: int, max_depth: int) -> None:
        self.where = where
        self.max_values = max_values
        self.max_depth = max_depth
        self.counted: dict[int, tuple[int, int]] = {}  # id(node): its values, its height
        self.open: set[int] = set()  # ids of the nodes being walked (their ancestors)

    def visit(self, node: yaml.Node, depth: int) -> tuple[int, int]:
        """The values in ``node`` (aliases expanded) and its height; raises past a limit."""
        known = self.counted.get(id(node))
        if known is None:
            return self._walk(node, depth)
        if depth + known[1] - 1 > self.max_depth:
            raise self._error(node, f"nested deeper than {self.max_depth} levels")
        return known

    def _walk(self, node: yaml.Node, depth: int) -> tuple[int, int]:
        if id(node) in self.open:
            raise self._error(node, "an alias names a value from inside itself (a recursive value)")
        if depth > self.max_depth:
            raise self._error(node, f"nested deeper than {self.max_depth} levels")
        if node.tag not in _PLAIN_TAGS:
            tag = node.tag.replace(_YAML_TAG, "!!", 1)
            raise self._error(
                node, f"tag {tag!r} is not allowed (only plain values, lists and mappings)"
            )
        if isinstance(node, yaml.ScalarNode):
            return 1, 1
        children: list[yaml.Node] = (
            [n for pair in node.value for n in pair]
            if isinstance(node, yaml.MappingNode)
            else node.value
        )
        self.open.add(id(node))
        values, height = 1, 1
        for child in children:
            if child.__class__ is yaml.ScalarNode and child.tag in _PLAIN_TAGS:
                n, h = 1, 1  # the most common node, counted without a call (start-up time)
                if depth >= self.max_depth:
                    raise self._error(child, f"nested deeper than {self.max_depth} levels")
            else:
                n, h = self.visit(child, depth + 1)
            values, height = values + n, max(height, h + 1)
            if values > self.max_values:
                raise self._error(
                    node,
                    f"more than {self.max_values} values once its aliases are expanded (an alias "
                    "counts its anchor's whole content again)",
                )
        self.open.discard(id(node))
        self.counted[id(node)] = (values, height)
        return values, height

    def _error(self, node: yaml.Node, message: str) -> ConfigError:
        return ConfigError(f"{self.where}, line {node.start_mark.line + 1}: {message}")


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
