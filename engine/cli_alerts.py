"""``engine alerts``: the alert rules of ``alerts.yaml`` (in ENGINE_ROUTES_DIR), by hand.

``check`` loads and checks the file (each mistake one line naming the file, the line and the
key; exit 1) and names what a channel lacks to send (a variable unset); ``run`` evaluates every
rule once against the configured database and sends the notices owed, as the worker's schedule
does (the two can run at once: each notice is sent once); ``list`` shows the alerts raised (with
``--all`` the recovered ones too) and, with ``--events``, the recent history.
"""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["alerts_app"]

alerts_app = typer.Typer(
    help="Alert rules (alerts.yaml beside the routes): check, run once, list.",
    no_args_is_help=True,
)

_Directory = Annotated[
    Path | None,
    typer.Argument(help="the routes directory holding alerts.yaml (default: ENGINE_ROUTES_DIR)"),
]


def _when(value: object) -> str:
    from datetime import datetime

    return value.strftime("%Y-%m-%d %H:%M:%S %Z") if isinstance(value, datetime) else "-"


@alerts_app.command("check")
def check(directory: _Directory = None) -> None:
    """Load and check alerts.yaml: its rules, channels and the names they use."""
    from engine.alerts.rules import alerts_path, check_loaded, load_alert_rules
    from engine.settings import load_settings

    site = directory if directory is not None else load_settings().routes_dir
    config = load_alert_rules(site)  # a ConfigError names file, line and key; main() prints it
    if config.file is None:
        where = alerts_path(site)
        typer.echo(f"no alert rules ({where or 'ENGINE_ROUTES_DIR is not set'} does not exist)")
        return
    typer.echo(f"ok: {len(config.rules)} rules, {len(config.channels)} channels from {config.file}")
    for problem in check_loaded(config):
        typer.echo(f"warning: {problem}", err=True)


@alerts_app.command("run")
def run() -> None:
    """Evaluate every rule once and send the notices owed; print what changed and was sent."""
    from engine.alerts.rules import load_alert_rules
    from engine.cli_support import open_store
    from engine.errors import EngineError
    from engine.jobs.alerts import AlertRunner
    from engine.settings import load_settings

    settings = load_settings()
    config = load_alert_rules(settings.routes_dir)
    if not config.rules:
        raise EngineError("no alert rules: add alerts.yaml to ENGINE_ROUTES_DIR")
    store = open_store()
    node = f"cli:{socket.gethostname()[:40]}:{os.getpid()}"
    try:
        report = asyncio.run(AlertRunner(config, store.db_engine, settings, node).run_once())
    finally:
        store.db_engine.dispose()
    for f in report.findings:
        state = {True: "RAISED", False: "ok", None: "unchanged"}[f.raised]
        about = f.rule + (f" ({f.subject})" if f.subject else "")
        typer.echo(f"{state:<9}  {about}: {f.summary}")
    for rule, why in report.errors.items():
        typer.echo(f"error: {rule}: not evaluated ({why})", err=True)
    for rule, subject, event in report.transitions:
        typer.echo(f"{event}: {rule}" + (f" ({subject})" if subject else ""))
    failed = 0
    for rule, subject, notice, channel, error in report.sent:
        about = rule + (f" ({subject})" if subject else "")
        if error is None:
            typer.echo(f"sent: {notice} of {about} to {channel}")
        else:
            failed += 1
            typer.echo(f"error: {notice} of {about} not sent to {channel}: {error}", err=True)
    if failed or report.errors:
        raise typer.Exit(1)


@alerts_app.command("list")
def list_alerts(
    all_: Annotated[bool, typer.Option("--all", help="recovered alerts too")] = False,
    events: Annotated[int, typer.Option(min=0, max=1000, help="the last N events too")] = 0,
) -> None:
    """The alerts raised now (``--all``: every alert), newest first."""
    from engine.alerts.state import alert_rows, recent_events
    from engine.cli_support import open_store

    store = open_store()
    try:
        rows = [r for r in alert_rows(store.db_engine) if all_ or r.state == "raised"]
        history = recent_events(store.db_engine, limit=events) if events else []
    finally:
        store.db_engine.dispose()
    if not rows:
        typer.echo("no alerts raised" if not all_ else "no alerts", err=True)
    for r in rows:
        about = r.rule + (f" ({r.subject})" if r.subject else "")
        line = f"{r.state:<9}  {about:<32}  raised {_when(r.raised_at)}"
        if r.recovered_at is not None and r.state == "recovered":
            line += f"  recovered {_when(r.recovered_at)}"
        if r.notice:
            line += f"  notice owed: {r.notice}"
        typer.echo(line)
        typer.echo(f"           {r.summary}")
        if r.last_error:
            typer.echo(f"           last error: {r.last_error}")
    for e in history:
        about = e.rule + (f" ({e.subject})" if e.subject else "")
        typer.echo(f"{_when(e.at)}  {e.event:<9}  {about}: {e.detail or ''}")
