"""The running configuration (routes, destinations, mappings) and its reload.

Loaded once at start and again on ``SIGHUP`` or ``POST /api/admin/reload``. A reload reads and
checks every file the way start-up does (each error names the file, line and key); only when all
of it is valid does the engine switch to it. When anything is wrong the running configuration
stays, and the reason is returned (and logged), so a typo in a route file never stops a running
interface.

What runs is a copy: the site's route and mapping folders (their ``*.yaml``, the only files the
loaders read) are copied to ``var/config/<time>/`` first and loaded from there, and the worker
process is started on that copy. So the worker runs exactly the files that were checked, even
when one is edited (or broken) after the reload, and a worker restarted after a crash starts on
the same files. Errors name the admin's files, not the copy.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import ConfigError, EngineError
from engine.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Callable

    from engine.flow.gate import RouteGate
    from engine.mappings import Mappings
    from engine.routes.loader import RouteSet

__all__ = ["LoadedConfig", "ReloadResult", "Reloader", "load_config", "load_running_config"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedConfig:
    """One consistent set of mappings, routes and the gate built from them."""

    mappings: Mappings
    routes: RouteSet
    gate: RouteGate
    loaded_at: datetime

    @property
    def files(self) -> list[str]:
        """The route files read, in the order they were read."""
        return list(dict.fromkeys(self.routes.origin.values()))


def load_config(settings: Settings) -> LoadedConfig:
    """Read and check the mapping and route files, and every destination's settings.

    Raises :class:`~engine.errors.ConfigError` naming the file, line and key of the first
    problem. Destinations are built to check them (a missing token variable, say) and dropped:
    the worker builds its own. Used by ``engine serve`` at start and by every reload.
    """
    from engine.adapters.registry import build_destination, load_routes
    from engine.flow.gate import RouteGate
    from engine.mappings import load_mappings
    from engine.routes.router import Router
    from engine.startup import check_folders

    mappings = load_mappings(settings.mappings_dir)
    routes = load_routes(settings.routes_dir)
    for name, destination in routes.destinations.items():
        build_destination(name, destination)
    check_folders(routes)  # a file destination's folder exists or can be made, and is writable
    from engine.alerts.rules import load_alert_rules

    load_alert_rules(settings.routes_dir)  # alerts.yaml beside the routes: checked as they are
    return LoadedConfig(
        mappings=mappings,
        routes=routes,
        gate=RouteGate(Router(routes), mappings),
        loaded_at=datetime.now(UTC),
    )


#: snapshots kept under var/config: the running one, and a few before it
KEEP_SNAPSHOTS = 3


def _yaml_only(folder: str, names: list[str]) -> set[str]:
    return {n for n in names if not n.endswith(".yaml") and not (Path(folder) / n).is_dir()}


def snapshot(settings: Settings) -> tuple[Settings, dict[str, str]]:
    """Copy the site's route and mapping folders under ``var/config/<time>-<pid>/``; the
    settings pointing at the copy, and a map from each copy's folder to the original's."""
    base = settings.var_dir / "config"
    target = base / f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{os.getpid()}"
    updates: dict[str, Path] = {}
    origin: dict[str, str] = {}
    for key, name in (("routes_dir", "routes"), ("mappings_dir", "mappings")):
        source: Path | None = getattr(settings, key)
        if source is None or not source.is_dir():
            continue  # absent: the loaders say so, naming the setting's own folder
        copy = target / name
        try:
            shutil.copytree(source, copy, ignore=_yaml_only)
        except OSError as exc:
            raise ConfigError(
                f"cannot copy {source} to {copy} to run it: {exc.strerror or exc}"
            ) from exc
        updates[key] = copy
        origin[str(copy)] = str(source)
    _prune(base, keep=target)
    return settings.model_copy(update=updates), origin


def _prune(base: Path, keep: Path) -> None:
    """Remove all but the newest snapshots (the running worker's is among them)."""
    if not base.is_dir():
        return
    old = sorted((p for p in base.iterdir() if p.is_dir() and p != keep), reverse=True)
    for stale in old[KEEP_SNAPSHOTS - 1 :]:
        shutil.rmtree(stale, ignore_errors=True)


def load_running_config(settings: Settings) -> tuple[LoadedConfig, Settings]:
    """Snapshot the site folders and load the snapshot (:func:`load_config`): the configuration
    and the settings that point at its copy (hand those to the worker process)."""
    running, origin = snapshot(settings)
    try:
        config = load_config(running)
    except EngineError as exc:
        text = str(exc)
        for copy, source in origin.items():
            text = text.replace(copy, source)
        raise ConfigError(text) from exc
    # what the admin sees (the reload's answer, `files`) names their files, not the copy
    for key, where in config.routes.origin.items():
        for copy, source in origin.items():
            where = where.replace(copy, source)
        config.routes.origin[key] = where
    return config, running


@dataclass(frozen=True)
class ReloadResult:
    """What a reload did: ``applied`` or not, and why not."""

    applied: bool
    routes: int
    destinations: int
    files: list[str]
    loaded_at: datetime
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The API's JSON."""
        return {
            "status": "reloaded" if self.applied else "kept",
            "routes": self.routes,
            "destinations": self.destinations,
            "files": self.files,
            "loaded_at": self.loaded_at.isoformat(),
            "error": self.error,
        }


class Reloader:
    """Loads the configuration again and hands it to ``apply`` only when all of it is valid,
    with the settings pointing at its snapshot (the worker process's).

    One reload at a time (a second caller waits for the first). ``apply`` runs in the caller's
    thread and must be quick: it swaps references, it does not read files.
    """

    def __init__(
        self,
        settings: Settings,
        current: LoadedConfig,
        apply: Callable[[LoadedConfig, Settings], None],
    ) -> None:
        self.settings = settings
        self.current = current
        self._apply = apply
        self._lock = threading.Lock()

    def reload(self) -> ReloadResult:
        """Read every file again; switch to it if valid, else keep the running configuration."""
        with self._lock:
            try:
                new, running = load_running_config(self.settings)
            except EngineError as exc:
                log.error("reload refused: running configuration kept", extra={"error": str(exc)})
                return self._result(self.current, applied=False, error=str(exc))
            self._apply(new, running)
            self.current = new
            log.info(
                "configuration reloaded",
                extra={
                    "routes": len(new.routes.routes),
                    "destinations": len(new.routes.destinations),
                },
            )
            return self._result(new, applied=True)

    @staticmethod
    def _result(config: LoadedConfig, *, applied: bool, error: str | None = None) -> ReloadResult:
        return ReloadResult(
            applied=applied,
            routes=len(config.routes.routes),
            destinations=len(config.routes.destinations),
            files=config.files,
            loaded_at=config.loaded_at,
            error=error,
        )
