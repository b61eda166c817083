"""``engine users``: the console's users — add, passwd, disable, enable, roles, list.

A password is read from ``--password-file F`` or ``--password-stdin`` (its first line: how a
script or CI hands one over, with no terminal), or asked twice when stdin is a terminal; never
from the command line (where ``ps`` and the shell history would keep it), never echoed or logged.
Fewer than 12 characters is refused. Every change is audited with the OS user as the actor and
``cli`` as the source (engine/store/users.py). ``add`` on a home where the engine never ran
makes (and migrates) its database, so the first user can exist before the first start; a
database in use is never migrated (a schema older than this engine's is an error).
"""

from __future__ import annotations

import getpass
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from engine.cli_support import cli_who, print_table

__all__ = ["users_app"]

users_app = typer.Typer(
    help="The console's users: add, passwd, disable, enable, roles, list.", no_args_is_help=True
)

#: the most read from a password file or stdin (a password is at most 1024 characters)
_MAX_READ = 8 * 1024

RoleOption = Annotated[
    list[str],
    typer.Option(
        "--role",
        help="admin, integration, viewer or front-desk (repeat for several)",
    ),
]
PasswordFile = Annotated[
    Path | None,
    typer.Option(
        "--password-file", help="read the password from this file's first line", dir_okay=False
    ),
]
PasswordStdin = Annotated[
    bool, typer.Option("--password-stdin", help="read the password from stdin's first line")
]


@contextmanager
def _users() -> Iterator[Any]:
    """The store, closed after: made and migrated where the engine never ran (no engine
    tables yet, so no node runs on it, and the first user can exist before the first
    start); else at this engine's schema, never migrated (``open_store``: the nodes running
    on it may be of an older version)."""
    from engine.cli_support import command_store, has_engine_tables
    from engine.settings import load_settings
    from engine.startup import open_database

    settings = load_settings()
    if has_engine_tables(settings.resolved_database_url()):
        with command_store() as store:
            yield store
        return
    db_engine, store = open_database(settings)
    try:
        yield store
    finally:
        db_engine.dispose()


def _roles(values: list[str]) -> list[str]:
    from engine.api.auth import Role

    known = {role.value for role in Role}
    for value in values:
        if value not in known:
            raise typer.BadParameter(
                f"{value!r} is not a role ({', '.join(sorted(known))})", param_hint="--role"
            )
    return sorted(set(values))


def _first_line(data: str) -> str:
    return data.split("\n", 1)[0].removesuffix("\r")


def _password(file: Path | None, stdin: bool) -> str:
    """The password from the file, stdin or (a terminal only) a prompt; checked for length."""
    from engine.store.users import password_problem

    if file is not None and stdin:
        raise typer.BadParameter("give --password-file or --password-stdin, not both")
    if file is not None:
        try:
            with file.open(encoding="utf-8") as handle:
                password = _first_line(handle.read(_MAX_READ))
        except (OSError, UnicodeDecodeError) as exc:
            raise typer.BadParameter(
                f"cannot read {file}: {getattr(exc, 'strerror', None) or type(exc).__name__}",
                param_hint="--password-file",
            ) from None
    elif stdin:
        password = _first_line(sys.stdin.read(_MAX_READ))
    elif sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            typer.echo("the two passwords differ; nothing changed", err=True)
            raise typer.Exit(1)
    else:
        raise typer.BadParameter(
            "no terminal to ask on: give --password-file F or --password-stdin"
        )
    problem = password_problem(password)
    if problem is not None:
        typer.echo(f"{problem}; nothing changed", err=True)
        raise typer.Exit(1)
    return password


def _refused(exc: Exception) -> typer.Exit:
    typer.echo(str(exc), err=True)
    return typer.Exit(1)


@users_app.command()
def add(
    name: Annotated[str, typer.Argument(help="the user name (letters, digits, . _ @ -)")],
    role: RoleOption,
    password_file: PasswordFile = None,
    password_stdin: PasswordStdin = False,
) -> None:
    """Add a console user with a password and roles."""
    from engine.store.users import UserProblem, hash_password, normal_username

    roles = _roles(role)
    try:
        name = normal_username(name)
    except UserProblem as exc:
        raise _refused(exc) from None
    hashed = hash_password(_password(password_file, password_stdin))
    with _users() as users:
        try:
            users.add_user(name, roles, cli_who(), password_hash=hashed)
        except UserProblem as exc:
            raise _refused(exc) from None
    typer.echo(f"added user {name} ({', '.join(roles)})")


@users_app.command()
def passwd(
    name: Annotated[str, typer.Argument(help="the user name")],
    password_file: PasswordFile = None,
    password_stdin: PasswordStdin = False,
) -> None:
    """Set a user's password (their sessions end; a lock-out is lifted)."""
    from engine.store.users import UserProblem, hash_password

    hashed = hash_password(_password(password_file, password_stdin))
    with _users() as users:
        try:
            users.set_password(name, hashed, cli_who())
        except UserProblem as exc:
            raise _refused(exc) from None
    typer.echo(f"password of {name.lower()} set")


@users_app.command()
def roles(name: Annotated[str, typer.Argument(help="the user name")], role: RoleOption) -> None:
    """Replace a user's roles."""
    from engine.store.users import UserProblem

    chosen = _roles(role)
    with _users() as users:
        try:
            users.set_roles(name, chosen, cli_who())
        except UserProblem as exc:
            raise _refused(exc) from None
    typer.echo(f"roles of {name.lower()}: {', '.join(chosen)}")


def _set_disabled(name: str, disabled: bool) -> None:
    from engine.store.users import UserProblem

    with _users() as users:
        try:
            users.set_disabled(name, disabled, cli_who())
        except UserProblem as exc:
            raise _refused(exc) from None
    typer.echo(f"user {name.lower()} {'disabled' if disabled else 'enabled'}")


@users_app.command()
def disable(name: Annotated[str, typer.Argument(help="the user name")]) -> None:
    """Disable a user: refused at login, logged out everywhere now."""
    _set_disabled(name, True)


@users_app.command()
def enable(name: Annotated[str, typer.Argument(help="the user name")]) -> None:
    """Enable a disabled (or locked-out) user again."""
    _set_disabled(name, False)


@users_app.command("list")
def list_users(
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object a line")] = False,
) -> None:
    """Every user: roles, state, last login."""
    from engine.store.db import utcnow

    now = utcnow()
    with _users() as users:
        records = users.list_users()
    columns = ["username", "roles", "origin", "state", "last_login"]
    rows = [
        [
            r.username,
            " ".join(r.roles),
            r.origin,
            "disabled" if r.disabled else "locked" if r.locked(now) else "active",
            r.last_login_at.isoformat(timespec="seconds") if r.last_login_at else "",
        ]
        for r in records
    ]
    if as_json:
        import orjson

        for row in rows:
            typer.echo(orjson.dumps(dict(zip(columns, row, strict=True))).decode())
    else:
        print_table(columns, rows, more_before=None)
