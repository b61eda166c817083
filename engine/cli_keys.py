"""``engine keys``: the engine's own signing keys (SMART Backend Services client assertions).

``create`` makes the first active key, ``rotate`` a new active key (the old one stays published as
*previous* until ``retire KID`` unpublishes it and deletes its private key), ``list`` shows every
key. Keys live in ``VAR_DIR/keys`` under the engine home (engine/keys). No command prints or logs
key material: only the ``kid``, algorithm, state, times and file path.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

__all__ = ["keys_app"]

keys_app = typer.Typer(
    help="The engine's signing keys for client assertions (published at /.well-known/jwks.json).",
    no_args_is_help=True,
)

_ALG_HELP = "RS384 (RSA 3072 bits) or ES384 (EC P-384)"


def _keyring() -> Any:
    from engine.keys import keyring_for
    from engine.settings import load_settings

    return keyring_for(load_settings())


def _alg(value: str | None) -> str | None:
    from engine.keys import ALGORITHMS

    if value is not None and value.upper() not in ALGORITHMS:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(ALGORITHMS)}")
    return value.upper() if value is not None else None


@keys_app.command()
def create(
    alg: Annotated[str, typer.Option("--alg", help=_ALG_HELP, callback=_alg)] = "RS384",
) -> None:
    """Make the first signing key (refused when one is active: use rotate)."""
    keyring = _keyring()
    record = keyring.create(alg)
    typer.echo(f"created {record.alg} key {record.kid} (active) in {keyring.folder / record.file}")


@keys_app.command()
def rotate(
    alg: Annotated[
        str | None,
        typer.Option("--alg", help=f"{_ALG_HELP}; default: the active key's", callback=_alg),
    ] = None,
) -> None:
    """Make a new active key; the old one stays published (previous) until retired."""
    new, old = _keyring().rotate(alg)
    typer.echo(f"active: {new.alg} key {new.kid}; previous: {old.kid} (retire it when unused)")


@keys_app.command("list")
def list_keys() -> None:
    """Every key: kid, algorithm, state, when made, its private key file."""
    keyring = _keyring()
    records = keyring.records()
    if not records:
        typer.echo(f"no signing keys in {keyring.folder}; run 'engine keys create'", err=True)
        return
    typer.echo(f"{'KID':<43}  {'ALG':<5}  {'STATE':<8}  {'CREATED':<25}  FILE")
    for record in records:
        path = str(keyring.folder / record.file) if record.file else "-"
        typer.echo(
            f"{record.kid:<43}  {record.alg:<5}  {record.state:<8}  {record.created:<25}  {path}"
        )


# A kid is a base64url thumbprint, so one in 64 begins with "-": click would take it for an
# option. Unknown options pass through as the argument instead (retire has none of its own).
@keys_app.command(context_settings={"ignore_unknown_options": True})
def retire(kid: Annotated[str, typer.Argument(help="the kid of a previous key")]) -> None:
    """Stop publishing a previous key and delete its private key file."""
    record = _keyring().retire(kid)
    typer.echo(f"retired {record.kid}: no longer published, private key deleted")
