"""``engine backup PATH`` and ``engine restore PATH``: the SQLite store, copied online.

On SQLite, ``backup`` copies the database (SQLite's online backup API: the engine may run) and
its documents' files into the new folder PATH and checks the copy (built in ``PATH.partial`` and
put in place whole: a failed run leaves nothing in PATH); ``restore`` puts such a folder back in
place of the database once the engine is stopped (engine/store/backup.py). On
PostgreSQL both print the ``pg_dump`` / ``pg_restore`` commands to run (docs/OPERATIONS.md) and
exit 1: the engine does not copy a database that its server backs up better.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["backup", "restore"]


def _database() -> tuple[str, Path | None]:
    """The configured database URL and, for SQLite, its file."""
    from sqlalchemy.engine import make_url

    from engine.errors import ConfigError
    from engine.settings import load_settings

    url = load_settings().resolved_database_url()
    try:
        parsed = make_url(url)
    except Exception:  # ArgumentError or ValueError: the URL is not echoed (a password)
        raise ConfigError("ENGINE_DATABASE_URL: not a database URL") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return url, Path(str(parsed.database))
    if backend != "postgresql":
        raise ConfigError("ENGINE_DATABASE_URL: backups take a SQLite file or PostgreSQL")
    return url, None


def _postgres(url: str, path: Path, *, restoring: bool) -> None:
    from engine.store.backup import pg_commands

    dump, load = pg_commands(url, path)
    what = "restored" if restoring else "backed up"
    typer.echo(
        f"PostgreSQL is {what} with its own tools; run (pg_dump and pg_restore of the "
        "server's major version or newer):"
    )
    for line in load if restoring else dump:
        typer.echo(f"  {line}")
    raise typer.Exit(1)


def backup(
    path: Annotated[Path, typer.Argument(help="a new (or empty) folder for the backup")],
) -> None:
    """Back up the store: SQLite online (the engine may run), with the documents' files;
    PostgreSQL: prints the pg_dump commands."""
    from engine import __version__
    from engine.store.backup import backup_sqlite

    url, database = _database()
    if database is None:
        _postgres(url, path.absolute(), restoring=False)
        return
    done = backup_sqlite(database, path.absolute(), version=__version__)
    for note in done.notes:
        typer.echo(f"note: {note}", err=True)
    typer.echo(
        f"backed up {database} to {done.folder}: database {done.database_bytes} bytes "
        f"(schema {done.revision}, integrity ok), {done.documents} document file(s), "
        f"{done.document_bytes} bytes"
    )


def restore(
    path: Annotated[Path, typer.Argument(help="a folder `engine backup` made")],
) -> None:
    """Restore the store from a backup (the engine must be stopped); the current database is
    moved aside, not deleted. PostgreSQL: prints the pg_restore commands."""
    from engine.store.backup import restore_sqlite

    url, database = _database()
    if database is None:
        _postgres(url, path.absolute(), restoring=True)
        return
    done = restore_sqlite(path.absolute(), database, known_revisions=_known_revisions())
    for note in done.notes:
        typer.echo(f"note: {note}", err=True)
    aside = f"; the database it replaced is in {done.moved_aside}" if done.moved_aside else ""
    typer.echo(
        f"restored {database} from {done.folder}: schema {done.revision}, "
        f"{done.documents} document file(s){aside}. Start the engine (it migrates if needed)."
    )


def _known_revisions() -> set[str]:
    """The schema revisions this engine's migrations know."""
    from alembic.script import ScriptDirectory

    from engine.store.repository import alembic_config

    scripts = ScriptDirectory.from_config(alembic_config())
    return {rev.revision for rev in scripts.walk_revisions()}
