"""What the CLI's commands share: opening the store, showing a database URL safely, printing a
page of listed rows (a table or JSON lines)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from datetime import tzinfo
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = [
    "ResendDestination",
    "has_engine_tables",
    "open_store",
    "print_deliveries",
    "print_json",
    "print_resent",
    "print_table",
    "safe_url",
    "store_action",
]


#: ``resend``'s option, for messages and documents alike
ResendDestination = Annotated[
    str | None,
    typer.Option(help="resend to this destination only, even if it was delivered"),
]


def open_store() -> Any:
    """The message store of the configured database, at this engine's schema.

    The CLI reads the engine's store; it never makes one. A SQLite file that does not exist, or a
    database without the engine's tables (an empty file, another application's database) is an
    error naming it (an empty database would only answer "no messages"), and so is a database
    that cannot be reached (its host and port, never the password). A schema older or newer
    than this engine's is an error too
    (:meth:`~engine.store.SqlMessageStore.require_current_schema`): a command never migrates,
    since the nodes running on the database may be of another version; `engine serve` does.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from engine.audit.key import audit_key_for
    from engine.errors import ConfigError
    from engine.settings import load_settings
    from engine.store import SqlMessageStore, create_db_engine
    from engine.store.db import connection_problem

    settings = load_settings()
    url = settings.resolved_database_url()
    database = _sqlite_file(url)
    if database is not None and not database.is_file():
        raise ConfigError(
            f"no engine database at {database}: start the engine once with `engine serve`, "
            "or set ENGINE_HOME / ENGINE_DATABASE_URL"
        )
    key = audit_key_for(settings)  # an unfit key file: a ConfigError before the database
    db_engine = create_db_engine(url)
    store = SqlMessageStore(db_engine)
    try:
        if not _has_schema(db_engine):
            shown = database if database is not None else safe_url(url)
            raise ConfigError(
                f"{shown} is not an engine database (it has no engine tables): start the "
                "engine once with `engine serve` on it, or set ENGINE_HOME / ENGINE_DATABASE_URL"
            )
        store.require_current_schema()  # never migrated here: older nodes may be running
        store.use_audit_key(key)
    except SQLAlchemyError as exc:
        db_engine.dispose()
        raise connection_problem(db_engine, exc) from exc
    except BaseException:  # no engine tables, or the migration's own error: said as it is
        db_engine.dispose()
        raise
    return store


@contextlib.contextmanager
def command_store() -> Iterator[Any]:
    """The engine's store for one command (:func:`open_store`), its connections closed after."""
    store = open_store()
    try:
        yield store
    finally:
        store.db_engine.dispose()


def cli_who() -> Any:
    """Who a CLI command acts as, for the audit trail: the OS user, source ``cli``."""
    import getpass

    from engine.store import Who

    try:
        user = getpass.getuser()
    except Exception:  # no user name in the environment nor the password database
        user = "unknown"
    return Who(user, "cli")


def print_json(items: Iterable[Any]) -> None:
    """Each item (a dataclass: a list's line, a view) as one JSON object a line."""
    import dataclasses

    import orjson
    import typer

    for item in items:
        typer.echo(orjson.dumps(dataclasses.asdict(item)).decode())


def print_table(
    columns: Sequence[str], rows: Iterable[Sequence[str]], *, more_before: int | None
) -> None:
    """A page of a list as a table; ``more_before``: the page was full, so the command to see the
    next one (``--before`` the last id) is printed after it. Cells are senders' values: shown as
    text, never read as Rich markup."""
    import typer
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(*columns)
    for cells in rows:
        table.add_row(*(Text(cell) for cell in cells))
    Console(width=200).print(table)
    if more_before is not None:
        typer.echo(f"more: --before {more_before}")


def print_deliveries(deliveries: Iterable[Any], zone: tzinfo | None = None) -> None:
    """A shown message's or document's deliveries, one a line: where, state, attempts, and the
    last error when there is one; under each, its attempts as the console's message page lists
    them (engine/store/attempts.py), times in ``zone`` (None: as stored)."""
    import typer

    for d in deliveries:
        typer.echo(
            f"  → {d.destination}: {d.state} after {d.attempts} attempt(s)"
            + (f", last error: {d.last_error}" if d.last_error else "")
        )
        for a in d.history:
            typer.echo(f"      {_attempt_line(a, zone)}")
        unlisted = max(0, d.attempts - len(d.history))
        if unlisted:
            typer.echo(
                f"      {unlisted} earlier attempt(s) not listed (made before attempts were kept)"
            )


def _attempt_line(a: Any, zone: tzinfo | None = None) -> str:
    """One attempt (an ``AttemptView``): ``#2 2026-03-01T14:30:05+00:00 retry (503,
    ConnectTimeout): <error> in 120 ms``; the error is the store's PHI-free, cleaned text."""
    at = a.at.astimezone(zone) if zone is not None else a.at
    why = ", ".join(str(x) for x in (a.status, a.error_class) if x is not None)
    return (
        f"#{a.attempt} {at.isoformat(timespec='seconds')} {a.outcome}"
        + (f" ({why})" if why else "")
        + (f": {a.error}" if a.error else "")
        + (f" in {a.duration_ms} ms" if a.duration_ms is not None else "")
    )


def print_resent(what: str, done: Any) -> None:
    """What a resend queued (``what``: ``message 7``, ``document 3``), or why nothing."""
    import typer

    if not done.queued:
        typer.echo(f"{what}: nothing resent ({done.note})")
    for dest, new_id, old_id in done.queued:
        typer.echo(f"{what}: {dest} queued again (delivery {new_id} replaces {old_id})")


@contextlib.contextmanager
def store_action(missing: str) -> Iterator[None]:
    """An operator's action on the store: an unknown id (``KeyError``) is the error ``missing``,
    a refused action (``ActionRefused``) the store's own words, both without a traceback."""
    from engine.errors import EngineError
    from engine.store import ActionRefused

    try:
        yield
    except KeyError:
        raise EngineError(missing) from None
    except ActionRefused as exc:
        raise EngineError(str(exc)) from None


def has_engine_tables(url: str) -> bool:
    """Whether the database at ``url`` holds an engine schema (False for a SQLite file that
    does not exist); a database that cannot be reached is said as :func:`open_store` says it."""
    from sqlalchemy.exc import SQLAlchemyError

    from engine.store import create_db_engine
    from engine.store.db import connection_problem

    database = _sqlite_file(url)
    if database is not None and not database.is_file():
        return False
    db_engine = create_db_engine(url)
    try:
        return _has_schema(db_engine)
    except SQLAlchemyError as exc:
        raise connection_problem(db_engine, exc) from exc
    finally:
        db_engine.dispose()


def _has_schema(db_engine: Any) -> bool:
    """Whether the database holds an engine schema (Alembic's version table). A SQLite file is
    opened read-only for this: the check must not write into a file that is not ours."""
    import sqlite3

    from sqlalchemy import inspect

    database = db_engine.url.database
    if db_engine.dialect.name == "sqlite" and database not in (None, "", ":memory:"):
        try:
            with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
                found = db.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
                ).fetchone()
        except sqlite3.OperationalError:  # locked, or cannot be read: no verdict on the file
            return True  # (the store's own connection then says what is wrong)
        except sqlite3.DatabaseError:  # not a SQLite file at all
            return False
        return found is not None
    with db_engine.connect() as conn:
        return bool(inspect(conn).has_table("alembic_version"))


def _sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL (None for other databases and in-memory SQLite)."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # a bad URL is create_db_engine's to word
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def safe_url(url: str) -> str:
    """A database URL without its password, for display."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
