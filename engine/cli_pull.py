"""``engine pull``: the route files' pull sources (engine/jobs/pull.py), by hand.

``run`` pulls one source (or every one) now, from today to ``--days`` days ahead (default: the
source's ``days``), stores what is new into the running engine's database and prints the counts;
the worker processes what was stored as it would a pushed message. ``list`` shows every source,
its type, schedule and window. A source that fails is one line naming it and why (no PHI), and
the command exits 1.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from engine.errors import EngineError

__all__ = ["pull_app"]

pull_app = typer.Typer(
    help="Pull sources: booked appointments read from an EHR (route files' sources:).",
    no_args_is_help=True,
)


@pull_app.command("run")
def run(
    source: Annotated[
        str | None, typer.Argument(help="the source's name (default: every source)")
    ] = None,
    days: Annotated[
        int | None,
        typer.Option(min=1, max=31, help="days from today to read (default: the source's days)"),
    ] = None,
) -> None:
    """Pull now and print, per source, the appointments pulled, new and unchanged."""
    from engine.adapters.registry import load_routes
    from engine.cli_support import open_store
    from engine.jobs.pull import PullCounts, build_pull_jobs
    from engine.settings import load_settings

    settings = load_settings()
    routes = load_routes(settings.routes_dir)
    if not routes.sources:
        raise EngineError("no pull sources: add a sources: block to a route file")
    names = [source] if source is not None else list(routes.sources)
    store = open_store()

    async def main() -> list[PullCounts]:
        try:
            return [await jobs.run(name, days=days) for name in names]
        finally:
            await jobs.close()

    try:
        jobs = build_pull_jobs(routes, settings, store, names=names, strict=True)
        done = asyncio.run(main())
    finally:
        store.db_engine.dispose()  # its connections closed, not left to the garbage collector
    failed = 0
    for counts in done:
        start, end = jobs.window(counts.source, days)
        typer.echo(
            f"{counts.source}: {start.isoformat()} to {end.isoformat()}: pulled {counts.pulled}, "
            f"new {counts.new}, unchanged {counts.unchanged}"
        )
        if counts.error:
            failed += 1
            typer.echo(f"error: {counts.error}", err=True)
    if failed:
        raise typer.Exit(1)


@pull_app.command("list")
def list_sources() -> None:
    """Every pull source: name, type, schedule, days ahead, and the route file it is in."""
    from engine.adapters.registry import load_routes
    from engine.settings import load_settings

    settings = load_settings()
    routes = load_routes(settings.routes_dir)
    if not routes.sources:
        typer.echo("no pull sources", err=True)
        return
    typer.echo(f"{'SOURCE':<24}  {'TYPE':<14}  {'SCHEDULE':<24}  {'DAYS':>4}  FILE")
    for name, spec in routes.sources.items():
        if spec.cron is not None:
            when = f"cron {spec.cron} ({settings.timezone})"
        elif spec.every_minutes is not None:
            when = f"every {spec.every_minutes} min"
        else:
            when = "by hand only"
        origin = routes.origin[f"source:{name}"]
        typer.echo(f"{name:<24}  {spec.type:<14}  {when:<24}  {spec.days:>4}  {origin}")
