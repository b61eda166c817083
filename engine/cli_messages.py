"""``engine messages``: look at stored messages and replay them."""

from __future__ import annotations

from typing import Annotated

import typer

from engine.cli_support import open_store
from engine.errors import EngineError

__all__ = ["messages_app"]

messages_app = typer.Typer(help="Look at stored messages and replay them.", no_args_is_help=True)


@messages_app.command("list")
def messages_list(
    state: Annotated[str | None, typer.Option(help="only messages in this state")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="JSON, one object a line")] = False,
) -> None:
    """The newest stored messages (no payloads): id, control ID, type, state, time."""
    import orjson

    views = open_store().list(state=state, limit=limit)
    if as_json:
        for v in views:
            typer.echo(
                orjson.dumps(
                    {
                        "id": v.id,
                        "control_id": v.control_id,
                        "message_type": v.message_type,
                        "trigger": v.trigger,
                        "state": v.state,
                        "received_at": v.received_at.isoformat(),
                        "channel": v.channel,
                        "reason": v.reason,
                    }
                ).decode()
            )
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "received", "channel", "control id", "type", "state", "reason")
    for v in views:
        table.add_row(
            str(v.id),
            v.received_at.strftime("%Y-%m-%d %H:%M:%S"),
            v.channel,
            v.control_id or "",
            f"{v.message_type or ''}^{v.trigger or ''}".strip("^"),
            v.state,
            (v.reason or "")[:60],
        )
    Console().print(table)


@messages_app.command("show")
def messages_show(message_id: Annotated[int, typer.Argument(help="message id")]) -> None:
    """One message's metadata and deliveries (no payload)."""
    view = open_store().get(message_id)
    if view is None:
        raise EngineError(f"no message {message_id}")
    typer.echo(
        f"message {view.id}: {view.message_type or '?'}^{view.trigger or ''} "
        f"control id {view.control_id!r}, received {view.received_at.isoformat()} "
        f"over {view.channel}, state {view.state}" + (f" ({view.reason})" if view.reason else "")
    )
    for line in view.warnings:
        typer.echo(f"  warning: {line}")
    for d in view.deliveries:
        typer.echo(
            f"  → {d.destination}: {d.state} after {d.attempts} attempt(s)"
            + (f", last error: {d.last_error}" if d.last_error else "")
        )


@messages_app.command("replay")
def messages_replay(
    message_id: Annotated[int | None, typer.Argument(help="message id")] = None,
    state: Annotated[
        str | None, typer.Option(help="replay every message in this state (e.g. error, dead)")
    ] = None,
) -> None:
    """Receive stored messages again (an operator's replay is never taken for a duplicate)."""
    if (message_id is None) == (state is None):
        raise EngineError("give a message id or --state, not both")
    store = open_store()
    ids = [message_id] if message_id is not None else store.ids_in_state(state or "")
    for mid in ids:
        try:
            new = store.replay(mid)
        except KeyError:
            raise EngineError(f"no message {mid}") from None
        typer.echo(f"message {mid} replayed as {new}")
    if not ids:
        typer.echo(f"no message in state {state}")
