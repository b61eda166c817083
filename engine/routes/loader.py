"""Load route files: the built-in ones, with a site directory layered over them.

The built-in files are ``engine/routes/specs/*.yaml``; a site directory (``ENGINE_ROUTES_DIR``)
holds more. As with mapping files, a site file *replaces* the built-in file of the same name (a
site ``example.yaml`` holding ``routes: []`` switches the example off) and other site files add to
the set. Files are read in name order, built-in names first; routes keep that order.

Destinations are shared by every file: a route may deliver to a destination another file defines.
A name defined twice (destinations or routes) is an error naming both files; so is a route that
names a destination nobody defines. Every error names the file, the line and the key:
``site/routes.yaml, line 14, routes[1].destinations[0]: route 'adt-out' names an unknown
destination 'fihr' (defined: dropbox, local-fhir)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from engine.errors import ConfigError
from engine.mappings.loader import parse_file
from engine.routes.spec import DestinationConfig, Route, RouteFile

__all__ = ["RouteSet", "default_routes_dir", "load_routes"]


def default_routes_dir() -> Path:
    """The built-in route files shipped with the engine."""
    return Path(str(resources.files("engine.routes") / "specs"))


@dataclass
class RouteSet:
    """Every route and destination, validated; ``origin`` says which file each came from
    (keys ``route:<name>`` and ``destination:<name>``)."""

    routes: list[Route] = field(default_factory=list)
    destinations: dict[str, DestinationConfig] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)

    def route(self, name: str) -> Route:
        """The route of that name (KeyError if none)."""
        for r in self.routes:
            if r.name == name:
                return r
        raise KeyError(name)


def _line_index(path: Path) -> tuple[dict[tuple[Any, ...], int], list[tuple[tuple[Any, ...], int]]]:
    """Line of every key and item in a YAML file, and the keys written twice in one mapping
    (which YAML loaders silently collapse to the last one)."""
    node = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    lines: dict[tuple[Any, ...], int] = {}
    dupes: list[tuple[tuple[Any, ...], int]] = []

    def walk(n: yaml.Node, at: tuple[Any, ...]) -> None:
        lines.setdefault(at, n.start_mark.line + 1)
        if isinstance(n, yaml.MappingNode):
            seen: set[Any] = set()
            for k, v in n.value:
                here = (*at, k.value)
                if k.value in seen:
                    dupes.append((here, k.start_mark.line + 1))
                seen.add(k.value)
                lines[here] = k.start_mark.line + 1
                walk(v, here)
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                walk(v, (*at, i))

    if node is not None:
        walk(node, ())
    return lines, dupes


class _Raw(BaseModel):
    """Any mapping: :func:`parse_file` reads the YAML (and reports its syntax errors) into it."""

    model_config = ConfigDict(extra="allow")


#: the ``type`` values of the discriminated unions, which pydantic puts into error locations
_TAGS = frozenset({"fhir", "mllp", "file", "none", "bearer", "oauth2"})


def _validate(data: dict[str, Any], lines: dict[tuple[Any, ...], int], where: str) -> RouteFile:
    """Validate a route file; the first error names its line and key as the file writes it."""
    try:
        return RouteFile.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        # a misspelt key gives "extra" and "missing" errors: the extra one points at the typo
        err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        loc: list[Any] = []
        parts = list(err["loc"])
        for n, part in enumerate(parts):
            here = (*loc, part)
            # drop the union tag pydantic adds (destinations.x.fhir.auth -> destinations.x.auth)
            if part in _TAGS and here not in lines and n < len(parts) - 1:
                continue
            if isinstance(part, str) and part.startswith("function"):
                continue
            loc.append(part)
        line = next(
            (lines[tuple(loc[:i])] for i in range(len(loc), -1, -1) if tuple(loc[:i]) in lines), 1
        )
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden" and any(
            w in str(loc[-1]).lower() for w in ("token", "secret", "password")
        ):
            msg += " (a secret never goes in a route file: name the environment variable that "
            msg += "holds it, in token_env or client_secret_env)"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(
            f"{where}, line {line}, {_key_text(loc) or '(file)'}: {msg}{more}"
        ) from exc


def _key_text(key: Iterable[Any]) -> str:
    out = ""
    for part in key:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


def _files(defaults: Path, site_dir: Path | None) -> list[tuple[str, Path]]:
    """(where, path) of every file to read: built-in names first, each replaced by a site file of
    the same name, then the site's other files; each group in name order."""
    chosen: dict[str, tuple[str, Path]] = {}
    if defaults.is_dir():
        for p in sorted(defaults.glob("*.yaml")):
            chosen[p.name] = (f"(built-in) {p.name}", p)
    if site_dir is not None:
        if not site_dir.is_dir():
            raise ConfigError(f"{site_dir}: routes directory not found")
        for p in sorted(site_dir.glob("*.yaml")):
            chosen[p.name] = (f"{site_dir}/{p.name}", p)
    return list(chosen.values())


def load_routes(site_dir: Path | None = None, *, defaults: Path | None = None) -> RouteSet:
    """Load the built-in route files, then the site directory over them.

    Raises :class:`ConfigError` naming the file, line and key of the first problem.
    """
    out = RouteSet()
    pending: list[tuple[str, Path, int, Route]] = []  # where, path, index in file, route
    for where, path in _files(defaults or default_routes_dir(), site_dir):
        raw = parse_file(path, _Raw, where)
        lines, dupes = _line_index(path)
        spec = _validate(dict(raw.model_extra or {}), lines, where)
        if dupes:
            key, line = dupes[0]
            raise ConfigError(f"{where}, line {line}, {_key_text(key)}: written twice in the file")
        for name, dest in spec.destinations.items():
            seen = out.origin.get(f"destination:{name}")
            if seen is not None:
                line = lines.get(("destinations", name), 1)
                raise ConfigError(
                    f"{where}, line {line}, destinations.{name}: destination {name!r} is already "
                    f"defined in {seen}"
                )
            out.destinations[name] = dest
            out.origin[f"destination:{name}"] = where
        for i, route in enumerate(spec.routes):
            seen = out.origin.get(f"route:{route.name}")
            if seen is not None:
                line = lines.get(("routes", i, "name"), 1)
                raise ConfigError(
                    f"{where}, line {line}, routes[{i}].name: route {route.name!r} is already "
                    f"defined in {seen}"
                )
            out.origin[f"route:{route.name}"] = where
            out.routes.append(route)
            pending.append((where, path, i, route))
    for where, path, i, route in pending:
        for j, dest_name in enumerate(route.destinations):
            if dest_name not in out.destinations:
                line = _line_index(path)[0].get(("routes", i, "destinations", j), 1)
                known = ", ".join(sorted(out.destinations)) or "none"
                raise ConfigError(
                    f"{where}, line {line}, routes[{i}].destinations[{j}]: route {route.name!r} "
                    f"names an unknown destination {dest_name!r} (defined: {known})"
                )
    return out
