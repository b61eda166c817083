"""The running configuration (routes, destinations, mappings) and its reload.

Loaded once at start and again on ``SIGHUP`` or ``POST /api/admin/reload``. A reload reads and
checks every file the way start-up does (each error names the file, line and key); only when all
of it is valid does the engine switch to it. When anything is wrong the running configuration
stays, and the reason is returned (and logged), so a typo in a route file never stops a running
interface.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from engine.errors import EngineError
from engine.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Callable

    from engine.flow.gate import RouteGate
    from engine.mappings import Mappings
    from engine.routes.loader import RouteSet

__all__ = ["LoadedConfig", "ReloadResult", "Reloader", "load_config"]

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
    return LoadedConfig(
        mappings=mappings,
        routes=routes,
        gate=RouteGate(Router(routes), mappings),
        loaded_at=datetime.now(UTC),
    )


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
    """Loads the configuration again and hands it to ``apply`` only when all of it is valid.

    One reload at a time (a second caller waits for the first). ``apply`` runs in the caller's
    thread and must be quick: it swaps references, it does not read files.
    """

    def __init__(
        self,
        settings: Settings,
        current: LoadedConfig,
        apply: Callable[[LoadedConfig], None],
    ) -> None:
        self.settings = settings
        self.current = current
        self._apply = apply
        self._lock = threading.Lock()

    def reload(self) -> ReloadResult:
        """Read every file again; switch to it if valid, else keep the running configuration."""
        with self._lock:
            try:
                new = load_config(self.settings)
            except EngineError as exc:
                log.error("reload refused: running configuration kept", extra={"error": str(exc)})
                return self._result(self.current, applied=False, error=str(exc))
            self._apply(new)
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
