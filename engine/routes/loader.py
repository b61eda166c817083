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

Routes know no adapter, so a destination's own keys (``base_url``, ``port``, ...) are checked by
the ``check_destination`` the caller passes: :func:`engine.adapters.registry.load_routes` passes
the check of each destination type's adapter, and its errors name file, line and key the same way.

Pull sources (``sources:``, engine/jobs/pull.py) are read the same way: shared by every file, a
name defined in two files is an error naming both, and each source's keys are checked by the
``check_source`` the caller passes (its type's config model, and its ``cron``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from pydantic import ValidationError

from engine.errors import ConfigError
from engine.routes.spec import DestinationSpec, Route, RouteFile, SourceSpec
from engine.yamlfile import YamlFile, key_text, read_yaml

__all__ = ["DestinationCheck", "RouteSet", "SourceCheck", "default_routes_dir", "read_routes"]

#: checks one destination's adapter settings, raising pydantic's ValidationError located from the
#: destination (``("port",)``: the destination's ``port`` key); what it returns is not kept
DestinationCheck = Callable[[DestinationSpec], object]
#: checks one pull source's settings the same way (``("base_url",)``: the source's key)
SourceCheck = Callable[[SourceSpec], object]

_SECRET_HINT = (
    "a secret never goes in a route file: name the environment variable that holds it, "
    "in token_env or client_secret_env"
)


#: files of a routes directory that are not route files: the alert rules (engine/alerts/rules.py)
NOT_ROUTE_FILES = frozenset({"alerts.yaml"})


def default_routes_dir() -> Path:
    """The built-in route files shipped with the engine."""
    return Path(str(resources.files("engine.routes") / "specs"))


@dataclass
class RouteSet:
    """Every route, destination and pull source, validated; ``origin`` says which file each
    came from (keys ``route:<name>``, ``destination:<name>`` and ``source:<name>``)."""

    routes: list[Route] = field(default_factory=list)
    destinations: dict[str, DestinationSpec] = field(default_factory=dict)
    sources: dict[str, SourceSpec] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)

    def route(self, name: str) -> Route:
        """The route of that name (KeyError if none)."""
        for r in self.routes:
            if r.name == name:
                return r
        raise KeyError(name)


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
            if p.name in NOT_ROUTE_FILES:
                continue
            chosen[p.name] = (f"{site_dir}/{p.name}", p)
    return list(chosen.values())


def _read(
    path: Path, where: str, check: DestinationCheck | None, check_source: SourceCheck | None = None
) -> tuple[YamlFile, RouteFile]:
    """One route file, validated (its destinations by ``check``, its sources by
    ``check_source``)."""
    doc = read_yaml(path, where)
    spec = doc.validate(RouteFile, secret_hint=_SECRET_HINT)
    if check is not None:
        for name, dest in spec.destinations.items():
            try:
                check(dest)
            except ValidationError as exc:
                at = ("destinations", name)
                raise doc.validation_error(exc, at=at, secret_hint=_SECRET_HINT) from exc
    if check_source is not None:
        for name, source in spec.sources.items():
            try:
                check_source(source)
            except ValidationError as exc:
                at = ("sources", name)
                raise doc.validation_error(exc, at=at, secret_hint=_SECRET_HINT) from exc
    if doc.duplicates:
        key, line = doc.duplicates[0]
        raise ConfigError(f"{where}, line {line}, {key_text(key)}: written twice in the file")
    return doc, spec


def read_routes(
    site_dir: Path | None = None,
    *,
    defaults: Path | None = None,
    check_destination: DestinationCheck | None = None,
    check_source: SourceCheck | None = None,
) -> RouteSet:
    """Read the built-in route files, then the site directory over them.

    ``check_destination`` checks each destination's adapter settings (None: only what every
    destination has, ``type`` and ``retry``: the routes alone, as the router's tests want them).
    The engine reads routes through :func:`engine.adapters.registry.load_routes`, which passes
    the adapters' check (and ``check_source``, the pull sources' check); this core package
    cannot know the adapters. Raises
    :class:`ConfigError` naming the file, line and key of the first problem.
    """
    out = RouteSet()
    pending: list[tuple[YamlFile, int, Route]] = []  # the file, index in it, route
    for where, path in _files(defaults or default_routes_dir(), site_dir):
        doc, spec = _read(path, where, check_destination, check_source)
        for name, source in spec.sources.items():
            seen = out.origin.get(f"source:{name}")
            if seen is not None:
                raise doc.error(("sources", name), f"source {name!r} is already defined in {seen}")
            out.sources[name] = source
            out.origin[f"source:{name}"] = where
        for name, dest in spec.destinations.items():
            seen = out.origin.get(f"destination:{name}")
            if seen is not None:
                raise doc.error(
                    ("destinations", name), f"destination {name!r} is already defined in {seen}"
                )
            out.destinations[name] = dest
            out.origin[f"destination:{name}"] = where
        for i, route in enumerate(spec.routes):
            seen = out.origin.get(f"route:{route.name}")
            if seen is not None:
                raise doc.error(
                    ("routes", i, "name"), f"route {route.name!r} is already defined in {seen}"
                )
            out.origin[f"route:{route.name}"] = where
            out.routes.append(route)
            pending.append((doc, i, route))
    for doc, i, route in pending:
        for j, dest_name in enumerate(route.destinations):
            if dest_name not in out.destinations:
                known = ", ".join(sorted(out.destinations)) or "none"
                raise doc.error(
                    ("routes", i, "destinations", j),
                    f"route {route.name!r} names an unknown destination {dest_name!r} "
                    f"(defined: {known})",
                )
    return out
