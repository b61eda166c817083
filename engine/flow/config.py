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

Many nodes, one database: every node reads the same directory (a shared mount, or the same
files deployed to each). A reload applied on one node (SIGHUP, ``POST /api/admin/reload``, the
console) bumps the database's configuration generation with the digest of the files it loaded
(``config_generation``, engine/store/nodes.py); every node polls it every
:data:`FOLLOW_EVERY_S` (:func:`follow_reloads`) and, when it changed, reloads from its own copy
of the directory — only when that copy has the same digest: a node whose files differ (a mount
not yet synced, a deploy half done) refuses, keeps running what it ran, logs it and records it in
``config_applied`` (what each node runs, for the admin), and takes the generation as soon as its
files match.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import threading
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from engine.errors import ConfigError, EngineError
from engine.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Callable

    from engine.flow.gate import RouteGate
    from engine.mappings import Mappings
    from engine.routes.loader import RouteSet

__all__ = [
    "FOLLOW_EVERY_S",
    "ConfigGenerations",
    "LoadedConfig",
    "ReloadResult",
    "Reloader",
    "config_digest",
    "follow_reloads",
    "load_config",
    "load_running_config",
    "record_reload",
]

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
    return settings.model_copy(update=updates), origin


def _snapshot_dir(running: Settings) -> Path | None:
    """The ``var/config/<time>-<pid>`` folder ``running`` points into (None: not a snapshot)."""
    base = running.var_dir / "config"
    for key in ("routes_dir", "mappings_dir"):
        folder: Path | None = getattr(running, key)
        if folder is not None and folder.parent.parent == base:
            return folder.parent
    return None


def discard(running: Settings) -> None:
    """Remove a snapshot that was not applied (its files refused): nothing runs on it."""
    folder = _snapshot_dir(running)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def keep_running(running: Settings) -> None:
    """``running``'s snapshot is what runs now: keep it and this process's newest ones before
    it, and every snapshot of another live process (an ``engine serve`` and the ``engine
    worker`` processes beside it may share one var folder: each runs its own); remove the rest
    of this process's, and those of processes that have ended. Only an applied snapshot prunes:
    a reload refused again and again (a broken file, a node whose files differ) never removes
    the one the worker runs, which a worker restarted after a crash starts on (before 7
    December three refusals removed it, as did three ``engine worker`` processes taking a
    reload beside ``engine serve``, and such a restart then failed, "routes directory not
    found", until the engine was restarted)."""
    keep = _snapshot_dir(running)
    if keep is None:
        return
    mine: list[Path] = []
    for folder in keep.parent.iterdir():
        if not folder.is_dir() or folder == keep:
            continue
        pid = _pid_of(folder)
        if pid == os.getpid():
            mine.append(folder)
        elif pid is not None and not _alive(pid):
            shutil.rmtree(folder, ignore_errors=True)
    for stale in sorted(mine, reverse=True)[KEEP_SNAPSHOTS - 1 :]:
        shutil.rmtree(stale, ignore_errors=True)


def _pid_of(folder: Path) -> int | None:
    """The process a snapshot folder (``<time>-<pid>``) belongs to; None: not one of ours."""
    _, _, pid = folder.name.rpartition("-")
    return int(pid) if pid.isdigit() else None


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (the var folder is the host's own)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: alive
        return True
    return True


def config_digest(settings: Settings) -> str:
    """SHA-256 over the files a reload reads (the ``*.yaml`` under the route and mapping
    folders, as :func:`snapshot` copies them): each file's folder, relative path and bytes, in
    order. A snapshot and the folder it was copied from have the same digest."""
    digest = hashlib.sha256()
    for key in ("routes_dir", "mappings_dir"):
        folder: Path | None = getattr(settings, key)
        digest.update(f"{key}\n".encode())
        if folder is None or not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*.yaml")):
            if not path.is_file():
                continue
            digest.update(f"{path.relative_to(folder).as_posix()}\n".encode())
            data = path.read_bytes()
            digest.update(f"{len(data)}\n".encode())
            digest.update(data)
    return digest.hexdigest()


def load_running_config(settings: Settings) -> tuple[LoadedConfig, Settings]:
    """Snapshot the site folders and load the snapshot (:func:`load_config`): the configuration
    and the settings that point at its copy (hand those to the worker process). A copy that
    fails is removed; one that succeeds is kept until :func:`keep_running` prunes others."""
    running, origin = snapshot(settings)
    try:
        config = load_config(running)
    except EngineError as exc:
        discard(running)
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
    #: applied here, but something the admin must know (not yet published to the other nodes)
    warning: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The API's JSON."""
        return {
            "status": "reloaded" if self.applied else "kept",
            "routes": self.routes,
            "destinations": self.destinations,
            "files": self.files,
            "loaded_at": self.loaded_at.isoformat(),
            "error": self.error,
            "warning": self.warning,
        }

    def audit(self) -> tuple[str, str]:
        """The audit trail's outcome and detail of this reload (the API's and the console's)."""
        if not self.applied:
            return "refused", f"kept the running files: {self.error}"
        detail = f"applied: {self.routes} routes, {self.destinations} destinations"
        return "ok", f"{detail}; {self.warning}" if self.warning else detail


def record_reload(port: Any, who: Any, outcome: str, detail: str) -> None:
    """A reload's record in the audit trail (action ``reload``), asked from the API or the
    console: ``port`` records (the store), ``who`` asked (``actor``, ``source``, ``peer``)."""
    port.record_audit(
        action="reload",
        actor=who.actor,
        source=who.source,
        peer=who.peer,
        message_id=None,
        outcome=outcome,
        detail=detail[:2000],
    )


#: how often a node looks at the database's configuration generation
FOLLOW_EVERY_S = 3.0


class ConfigGenerations(Protocol):
    """Where the configuration's generation is kept (the store, engine/store/nodes.py)."""

    def config_generation(self) -> tuple[int, str] | None: ...

    def publish_config(self, digest: str, node: str) -> int: ...

    def record_config(
        self, node: str, generation: int, digest: str, status: str, detail: str | None = None
    ) -> None: ...


class Reloader:
    """Loads the configuration again and hands it to ``apply`` only when all of it is valid,
    with the settings pointing at its snapshot (the worker process's).

    One reload at a time (a second caller waits for the first). ``apply`` runs in the caller's
    thread and must be quick: it swaps references, it does not read files.

    Shared (:meth:`share`, on a database several nodes use): a reload applied here is published
    as the next generation, and :meth:`follow` takes the generations other nodes published.
    """

    def __init__(
        self,
        settings: Settings,
        current: LoadedConfig,
        apply: Callable[[LoadedConfig, Settings], None],
        *,
        digest: str | None = None,
    ) -> None:
        self.settings = settings
        self.current = current
        self._apply = apply
        self._lock = threading.Lock()
        self.generations: ConfigGenerations | None = None
        self.node = ""
        #: the digest of the files ``current`` was loaded from (its snapshot's: the site's files
        #: may change while they are read; "" when not known, which no generation matches); the
        #: generation this node has taken (None: not looked yet), and the last generation
        #: refused with the digest of the files then
        self.digest = config_digest(settings) if digest is None else digest
        self.generation: int | None = None
        self._refused: tuple[int, str] | None = None
        #: a reload applied here whose publication failed (the database away): published by the
        #: next :meth:`follow` that finds no newer generation; a record of this node's
        #: configuration that failed, written again by the next one
        self._unpublished = False
        self._unrecorded: tuple[int, str, str, str | None] | None = None

    @classmethod
    def on_snapshot(
        cls,
        settings: Settings,
        current: LoadedConfig,
        running: Settings,
        apply: Callable[[LoadedConfig, Settings], None],
    ) -> Reloader:
        """The reloader of ``current``, loaded from the snapshot ``running`` points at
        (:func:`load_running_config`): its digest is the snapshot's, not the site's files,
        which may have changed since they were copied (before 7 December a node started so
        took a generation of the changed files for what it ran, and never loaded it); earlier
        runs' snapshots beyond the newest few are removed."""
        keep_running(running)
        return cls(settings, current, apply, digest=config_digest(running))

    def share(self, generations: ConfigGenerations, node: str) -> None:
        """Publish this node's reloads in ``generations`` and follow the others' (as ``node``)."""
        self.generations, self.node = generations, node

    def reload(self) -> ReloadResult:
        """Read every file again; switch to it if valid, else keep the running configuration.
        Applied and shared: published as the next generation, for every node to follow; when
        that fails the answer says so, and it is published again every :data:`FOLLOW_EVERY_S`
        until it is (or another node's newer reload is taken instead)."""
        with self._lock:
            result = self._load()
            if not result.applied:
                log.error(
                    "reload refused: running configuration kept", extra={"error": result.error}
                )
                return result
            if self.generations is None:
                return result
            self._unpublished = True
            failure = self._publish()
            if failure is None:
                return result
            return replace(
                result,
                warning=(
                    f"applied on this node but not published to the other nodes ({failure}): "
                    f"tried again every {FOLLOW_EVERY_S:.0f} s until the database answers"
                ),
            )

    def _publish(self) -> str | None:
        """Publish the running files' digest as the next generation (the caller holds the lock)
        and record it as this node's: None, or the type of the error that stopped it."""
        assert self.generations is not None
        try:
            generation = self.generations.publish_config(self.digest, self.node)
        except Exception as exc:
            log.error(
                "configuration generation not published: other nodes keep theirs until it is",
                extra={"error": type(exc).__name__},
            )
            return type(exc).__name__
        self.generation, self._unpublished = generation, False
        log.info(
            "configuration generation published",
            extra={"generation": generation, "digest": self.digest[:12]},
        )
        self._record(generation, self.digest, "applied")
        return None

    def _record(self, generation: int, digest: str, status: str, why: str | None = None) -> None:
        """Record what this node runs (``config_applied``, for the admin's dashboard); when the
        database does not take it, the next :meth:`follow` writes it again."""
        assert self.generations is not None
        self._unrecorded = (generation, digest, status, why)
        try:
            self.generations.record_config(self.node, generation, digest, status, why)
        except Exception as exc:
            log.warning(
                "node's configuration not recorded: tried again",
                extra={"generation": generation, "error": type(exc).__name__},
            )
            return
        self._unrecorded = None

    def _load(self, expect: str | None = None) -> ReloadResult:
        """Load, check and apply (the caller holds the lock); with ``expect``, only files of
        that digest are applied."""
        try:
            new, running = load_running_config(self.settings)
        except EngineError as exc:
            return self._result(self.current, applied=False, error=str(exc))
        digest = config_digest(running)
        if expect is not None and digest != expect:
            discard(running)
            why = "this node's route and mapping files changed while they were read"
            return self._result(self.current, applied=False, error=why)
        self._apply(new, running)
        keep_running(running)
        self.current, self.digest = new, digest
        log.info(
            "configuration reloaded",
            extra={
                "routes": len(new.routes.routes),
                "destinations": len(new.routes.destinations),
            },
        )
        return self._result(new, applied=True)

    def follow(self) -> ReloadResult | None:
        """Take the generation another node published, if there is a newer one: reloaded from
        this node's own files when their digest is the generation's; refused (and recorded)
        when it is not. None when there was nothing to do."""
        assert self.generations is not None
        # read under the lock: a reload here publishes before it lets go, so a generation read
        # just before a reload here cannot be taken for another node's after it (before 7
        # December that race recorded this node "refused" for the generation it had made)
        with self._lock:
            if self._unrecorded is not None:
                self._record(*self._unrecorded)
            published = self.generations.config_generation()
            if self._unpublished:
                mine = self.generation
                if published is None or mine is None or published[0] == mine:
                    self._publish()  # no newer reload elsewhere since this one
                    return None
                self._unpublished = False  # another node's reload came after: taken below
            if published is None or published[0] == self.generation:
                return None
            generation, digest = published
            if self.generation is None and digest == self.digest:  # at start: the same files
                self.generation = generation
                self._record(generation, digest, "applied")
                return None
            here = config_digest(self.settings)
            if here != digest:
                return self._refuse(generation, digest, here)
            result = self._load(expect=digest)
            if not result.applied:
                return self._refuse(generation, digest, here, result.error)
            self.generation, self._refused = generation, None
            self._record(generation, digest, "applied")
            log.warning(
                "configuration generation taken from another node's reload",
                extra={"generation": generation, "digest": digest[:12]},
            )
            return result

    def _refuse(
        self, generation: int, digest: str, here: str, error: str | None = None
    ) -> ReloadResult | None:
        """Files that are not the generation's: the running configuration kept, and said once
        per generation and state of the files (the next look tries again: a mount catching up
        is taken when it has)."""
        if self._refused == (generation, here):
            return None
        self._refused = (generation, here)
        why = error or (
            f"this node's route and mapping files (digest {here[:12]}) are not those of "
            f"generation {generation} (digest {digest[:12]}): copy them here; the running "
            "configuration is kept"
        )
        log.error(
            "configuration generation refused",
            extra={"generation": generation, "node": self.node, "error": why},
        )
        self._record(generation, digest, "refused", why)
        return self._result(self.current, applied=False, error=why)

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


async def follow_reloads(
    reloader: Reloader, stop: asyncio.Event, every_s: float = FOLLOW_EVERY_S
) -> None:
    """Every ``every_s`` until ``stop``: take the configuration generation another node
    published (:meth:`Reloader.follow`). A database that does not answer is tried again."""
    while not stop.is_set():
        try:
            await asyncio.to_thread(reloader.follow)
        except Exception as exc:
            log.warning("configuration generation not read", extra={"error": type(exc).__name__})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
