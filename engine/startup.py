"""What ``engine serve`` checks before it opens a port or prints its banner, and the banner.

Every check names the setting or the file in one line (a :class:`~engine.errors.ConfigError`):
TLS and key files that are missing or unreadable (``ENGINE_MLLP_TLS_CERT: /x: no such file``),
a var folder or a ``file`` destination's folder that cannot be written (naming the route file and
the destination), a database that cannot be reached (its host and port, never the password). The
database comes last: it is the one check that may wait on the network.

While these run, SIGINT and SIGTERM raise :class:`StartupInterrupted` (:func:`startup_signals`),
so a slow database or a big configuration never holds a stop request: the asyncio loop installs
its own handlers once the engine runs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from engine.errors import ConfigError
from engine.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine as DbEngine

    from engine.api.auth_settings import AuthSettings
    from engine.routes.loader import RouteSet
    from engine.store import SqlMessageStore

__all__ = [
    "StartupInterrupted",
    "banner",
    "check_files",
    "check_folders",
    "check_schedule",
    "listen_http",
    "open_database",
    "startup_signals",
]


class StartupInterrupted(BaseException):
    """SIGINT or SIGTERM arrived while the engine was starting: nothing listens yet.

    A BaseException (like KeyboardInterrupt) so no ``except Exception`` on the way swallows it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def startup_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`StartupInterrupted` in the main thread until the block
    ends (the previous handlers come back then)."""

    def interrupt(signum: int, _frame: FrameType | None) -> None:
        raise StartupInterrupted(signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _readable(setting: str, path: Path) -> None:
    try:
        with path.open("rb"):
            pass
    except FileNotFoundError:
        raise ConfigError(f"{setting}: {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{setting}: {path}: is a folder, not a file") from None
    except OSError as exc:
        raise ConfigError(f"{setting}: {path}: cannot be read ({exc.strerror})") from None


def _writable(folder: Path) -> str | None:
    """Why ``folder`` cannot be created or written to, or None when it can."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".engine-check-", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        code = errno.errorcode.get(exc.errno or 0, "")
        return f"{exc.strerror or exc}{f', {code}' if code else ''}"
    return None


def check_files(settings: Settings, auth: AuthSettings) -> None:
    """The files the settings name: readable (TLS, API keys), writable (the var folder)."""
    from engine.api.auth_settings import AuthMode

    for setting, path in (
        ("ENGINE_MLLP_TLS_CERT", settings.mllp_tls_cert),
        ("ENGINE_MLLP_TLS_KEY", settings.mllp_tls_key),
        ("ENGINE_MLLP_TLS_CLIENT_CA", settings.mllp_tls_client_ca),
        ("ENGINE_HTTP_TLS_CERT", settings.http_tls_cert),
        ("ENGINE_HTTP_TLS_KEY", settings.http_tls_key),
        ("ENGINE_OIDC_CLIENT_SECRET_FILE", settings.oidc_client_secret_file),
    ):
        if path is not None:
            _readable(setting, path)
    if auth.mode is AuthMode.KEYFILE and auth.key_file is not None:
        _readable("ENGINE_AUTH_KEY_FILE", auth.key_file)
    if (problem := _writable(settings.var_dir)) is not None:
        folder = settings.var_dir
        raise ConfigError(f"ENGINE_VAR_DIR: folder {folder} cannot be written ({problem})")
    if auth.mode is AuthMode.DEV:
        secret = auth.dev_secret_file
        if secret.exists():
            _readable("ENGINE_AUTH_DEV_SECRET_FILE", secret)
        elif (problem := _writable(secret.parent)) is not None:
            raise ConfigError(
                f"ENGINE_AUTH_DEV_SECRET_FILE: folder {secret.parent} cannot be written ({problem})"
            )


def listen_http(host: str, port: int, backlog: int = 2048) -> list[socket.socket]:
    """The HTTP port taken now, before MLLP starts, so a busy port stops start-up in one line
    (uvicorn, binding it later, would print its own error after MLLP was already listening).

    One listening socket per address of ``host`` (as asyncio's ``create_server`` binds), with
    ``SO_REUSEADDR`` like uvicorn, non-blocking, for ``uvicorn.Server.serve(sockets=...)``.
    Raises :class:`ConfigError` naming ``host:port``; nothing stays open then."""
    where = f"cannot listen for HTTP on {host}:{port}"
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConfigError(f"{where} (unknown host: {exc.strerror})") from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # as asyncio: the IPv4 address has its own socket
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)  # listening now: a port bound elsewhere fails here, not later
            sock.setblocking(False)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        why = "address in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise ConfigError(f"{where} ({why.lower()})") from None
    return sockets


def check_schedule(settings: Settings) -> None:
    """The worker's schedule, checked here so a mistake stops start-up at once rather than leaving
    a receiver that ACKs messages no worker will ever process."""
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(settings.eligibility_cron, timezone=settings.timezone)
    except ValueError as exc:
        raise ConfigError(f"ENGINE_ELIGIBILITY_CRON {settings.eligibility_cron!r}: {exc}") from exc


def check_folders(routes: RouteSet) -> None:
    """Every ``file`` destination's folder can be created and written to."""
    from engine.adapters.files import FileDestination

    for name, spec in routes.destinations.items():
        if spec.type != "file":
            continue
        folder = FileDestination.model_validate(spec.settings).directory
        if (problem := _writable(folder)) is not None:
            where = routes.origin.get(f"destination:{name}", "routes")
            raise ConfigError(
                f"{where}: destination {name!r}: folder {folder} cannot be written ({problem})"
            )


def open_database(settings: Settings) -> tuple[DbEngine, SqlMessageStore]:
    """The store, reached and migrated; a failure names ENGINE_DATABASE_URL and where it points."""
    from sqlalchemy.exc import SQLAlchemyError

    from engine.audit.key import audit_key_for
    from engine.store import SqlMessageStore, create_db_engine
    from engine.store.db import connection_problem
    from engine.store.nodes import set_dead_after

    # when a node counts as dead, for this process's view of the others (ENGINE_NODE_DEAD_AFTER_S)
    set_dead_after(settings.node_dead_after_s)
    key = audit_key_for(settings)  # an unfit key file stops the start before the database
    db_engine = create_db_engine(settings.resolved_database_url())
    store = SqlMessageStore(db_engine)
    try:
        store.migrate()
        store.use_audit_key(key)
    except SQLAlchemyError as exc:
        db_engine.dispose()
        raise connection_problem(db_engine, exc) from exc
    except BaseException:  # the migration's own error (a table held too long, a step that
        # failed, a newer engine's schema): said as it is, never as a connection problem
        db_engine.dispose()
        raise
    return db_engine, store


def banner(settings: Settings, *, version: str, mllp_port: int, store: str) -> str:
    """The start line: home, listeners (which are TLS) and store."""
    if settings.mllp_tls_cert is None:
        mllp_tls = "no TLS"
    elif settings.mllp_tls_client_ca is None:
        mllp_tls = "TLS"
    else:
        mllp_tls = "mutual TLS: client certificates required"
    http = "https" if settings.http_tls_cert is not None else "http"
    return (
        f"engine {version}: home {settings.home}; "
        f"MLLP on {settings.mllp_host}:{mllp_port} ({mllp_tls}), "
        f"HTTP on {http}://{settings.http_host}:{settings.http_port} "
        f"({'TLS' if http == 'https' else 'no TLS'}; health: /healthz, console: /console); "
        f"store {store}. Ctrl-C stops."
    )
