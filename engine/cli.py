"""The ``engine`` command line. Wiring only: every command builds what it needs from Settings.

Errors end the command with one line on stderr (``error: ...``) and a non-zero exit code, never a
traceback; set ENGINE_DEBUG=1 to see the traceback of an unexpected failure.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from engine import __version__
from engine.cli_support import open_store, safe_url
from engine.errors import EngineError

__all__ = ["app", "main"]

app = typer.Typer(
    name="engine",
    help="HL7v2 / FHIR R4 / X12 integration engine for medical practices.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

EXIT_ERROR = 1


def _read_input(path: Path) -> bytes:
    if str(path) == "-":
        return sys.stdin.buffer.read()
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise EngineError(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise EngineError(f"{path}: is a directory, not a file") from exc
    except OSError as exc:
        raise EngineError(f"{path}: cannot read ({exc.strerror})") from exc


@app.command()
def version() -> None:
    """Print the engine's version."""
    typer.echo(f"engine {__version__}")


_QUIET_HELP = "no progress bar and no summary (errors and warnings are always shown)"


@app.command()
def validate(
    file: Annotated[
        Path, typer.Argument(help="HL7v2 file (one message, a batch, or many; '-' = stdin)")
    ],
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="no 'valid' lines, progress bar or summary (problems are always shown)",
        ),
    ] = False,
) -> None:
    """Validate every HL7v2 message in FILE against its message structure (via hl7apy).

    Every message is checked, unreadable ones included; the rest go on after a bad one.

    Each problem names the message, the line it starts on, and the segment or field.

    Exit code 1 when any message is invalid.
    """
    from engine.convert import validate_file
    from engine.settings import load_settings

    if validate_file(_read_input(file), str(file), settings=load_settings(), quiet=quiet):
        raise typer.Exit(EXIT_ERROR)


@app.command()
def convert(
    file: Annotated[Path, typer.Argument(help="input file: HL7v2, X12 or FHIR JSON ('-' = stdin)")],
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="target: fhir, hl7v2 or x12 (which input converts to which: see above; "
            "default: the one target of the input)",
        ),
    ] = None,
    mappings: Annotated[
        Path | None, typer.Option(help="site mappings directory (ENGINE_MAPPINGS_DIR)")
    ] = None,
    validate_fhir: Annotated[
        bool | None,
        typer.Option("--validate/--no-validate", help="check FHIR output with fhir.resources"),
    ] = None,
    event: Annotated[
        str | None,
        typer.Option(
            help="FHIR → HL7v2: new, update, reschedule, modify, or a trigger such as A08"
        ),
    ] = None,
    jobs: Annotated[
        int | None,
        typer.Option(
            "--jobs",
            "-j",
            min=1,
            help="worker processes (default: one per core for 2,000+ messages)",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=_QUIET_HELP)] = False,
) -> None:
    """Convert FILE (HL7v2, X12 or FHIR JSON, told apart by its first bytes) to --to.

    HL7v2 (one message, a batch, or many) → fhir: a Bundle; NDJSON for several messages.

    X12 270 or 271 → fhir: a Bundle of CoverageEligibilityRequests or CoverageEligibilityResponses.

    FHIR → hl7v2 (ADT, SIU or DFT, by what it holds) or x12 (CoverageEligibilityRequest → 270).

    Each bad message is reported on stderr ("FILE: message N (line L): reason"); the rest go on.

    Warnings (what no map takes) are reported the same way, then a summary; exit 1 if any failed.
    """
    from engine.convert import convert_file
    from engine.settings import load_settings

    settings = load_settings(mappings_dir=mappings, validate_fhir=validate_fhir)
    failed = convert_file(
        _read_input(file), str(file), to=to, settings=settings, jobs=jobs, event=event, quiet=quiet
    )
    if failed:
        raise typer.Exit(EXIT_ERROR)


mappings_app = typer.Typer(help="Check and test mapping files.", no_args_is_help=True)
app.add_typer(mappings_app, name="mappings")


@mappings_app.command("check")
def mappings_check(
    directory: Annotated[
        Path | None, typer.Argument(help="site mappings directory (default: the built-in set)")
    ] = None,
) -> None:
    """Load and validate the mapping files (the built-ins with DIRECTORY layered over them)."""
    from engine.mappings import load_mappings

    m = load_mappings(directory)
    f = m.files
    typer.echo(
        f"ok: {len(f.messages)} message maps, {len(f.segments)} segment maps, "
        f"{len(f.datatypes)} datatype maps, {len(f.tables)} code tables"
        + (f" (site directory {directory})" if directory else "")
    )


@mappings_app.command("test")
def mappings_test(
    directory: Annotated[
        Path | None, typer.Argument(help="site mappings directory (default: the built-in set)")
    ] = None,
    golden: Annotated[
        Path | None,
        typer.Option(
            help="folder with hl7/NAME.hl7 and fhir/NAME.json pairs "
            "(default: DIRECTORY/golden, else ./fixtures)"
        ),
    ] = None,
) -> None:
    """Run golden pairs (an HL7v2 file and its expected FHIR) and show readable differences."""
    from engine.convert import run_golden

    folder = golden or (
        directory / "golden" if directory and (directory / "golden").is_dir() else Path("fixtures")
    )
    failed = run_golden(directory, folder, echo=typer.echo)
    if failed:
        raise typer.Exit(EXIT_ERROR)


routes_app = typer.Typer(help="Check route files.", no_args_is_help=True)
app.add_typer(routes_app, name="routes")


@routes_app.command("check")
def routes_check(
    directory: Annotated[
        Path | None,
        typer.Argument(help="site routes directory (default: ENGINE_ROUTES_DIR, else none)"),
    ] = None,
) -> None:
    """Load and check the route files (the built-ins with DIRECTORY layered over them): every
    destination's keys against its adapter, every route's destinations defined."""
    from engine.adapters.registry import load_routes
    from engine.settings import load_settings

    site = directory if directory is not None else load_settings().routes_dir
    rs = load_routes(site)  # a ConfigError names file, line and key; main() prints it
    files = list(dict.fromkeys(rs.origin.values()))  # first-seen order: the order they were read
    typer.echo(
        f"ok: {len(rs.routes)} routes, {len(rs.destinations)} destinations"
        + (f" from {', '.join(files)}" if files else "")
        + (f" (site directory {site})" if site else "")
    )


@app.command()
def serve(
    mllp_port: Annotated[int | None, typer.Option(help="MLLP port (ENGINE_MLLP_PORT)")] = None,
    http_port: Annotated[int | None, typer.Option(help="HTTP port (ENGINE_HTTP_PORT)")] = None,
    database_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL (ENGINE_DATABASE_URL); default SQLite")
    ] = None,
) -> None:
    """Run the engine: MLLP listener, HTTP API, message store. Ctrl-C stops it.

    Everything is checked first (settings, files, folders, routes, mappings, the database); the
    banner (home, listeners and which are TLS, store) shows once both listeners are open.
    """
    from engine.startup import StartupInterrupted, banner, startup_signals

    try:
        with startup_signals():  # Ctrl-C or SIGTERM while loading stops at once
            from engine.logs import configure_logging
            from engine.service import Engine
            from engine.service import serve as run_engine
            from engine.settings import load_settings

            settings = load_settings(
                mllp_port=mllp_port, http_port=http_port, database_url=database_url
            )
            configure_logging(settings.log_level, settings.log_format)

            def started(engine: Engine) -> None:
                text = banner(
                    settings,
                    version=__version__,
                    mllp_port=engine.mllp.bound_port,
                    store=safe_url(settings.resolved_database_url()),
                )
                typer.echo(text, err=True)

            run_engine(settings, started)
    except StartupInterrupted as exc:
        typer.echo(f"engine stopped during start-up ({exc}); nothing was listening", err=True)
        raise typer.Exit(128 + exc.signum) from None
    typer.echo("engine stopped", err=True)


@app.command()
def worker(
    database_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL (ENGINE_DATABASE_URL); default SQLite")
    ] = None,
) -> None:
    """Run queue workers only (route, map, deliver): add processes, here or on other hosts, to
    an engine that shares this PostgreSQL. Ctrl-C stops."""
    from engine.flow.worker import run_workers
    from engine.logs import configure_logging
    from engine.settings import load_settings

    settings = load_settings(database_url=database_url)
    configure_logging(settings.log_level, settings.log_format)
    os.environ["ENGINE_HOME"] = str(settings.home)  # route-file paths resolve against it
    from engine.startup import open_database

    db_engine, _ = open_database(settings)  # reachable and migrated, or one line naming it
    db_engine.dispose()
    typer.echo(
        f"engine {__version__}: home {settings.home}; queue workers on "
        f"{safe_url(settings.resolved_database_url())}",
        err=True,
    )
    run_workers(settings)
    typer.echo("workers stopped", err=True)


from engine.cli_alerts import alerts_app  # noqa: E402  (the alert rules' commands)
from engine.cli_audit import audit_app  # noqa: E402  (the audit trail's commands)
from engine.cli_backup import backup, restore  # noqa: E402  (the store's backup and restore)
from engine.cli_documents import documents_app  # noqa: E402  (the documents commands)
from engine.cli_keys import keys_app  # noqa: E402  (the signing-key commands)
from engine.cli_messages import messages_app  # noqa: E402  (the messages commands)
from engine.cli_pull import pull_app  # noqa: E402  (the pull-source commands)
from engine.cli_users import users_app  # noqa: E402  (the console's users)

app.command()(backup)
app.command()(restore)
app.add_typer(messages_app, name="messages")
app.add_typer(documents_app, name="documents")
app.add_typer(audit_app, name="audit")
app.add_typer(keys_app, name="keys")
app.add_typer(pull_app, name="pull")
app.add_typer(alerts_app, name="alerts")
app.add_typer(users_app, name="users")


eligibility_app = typer.Typer(
    help="Insurance eligibility (X12 270/271) for upcoming appointments.", no_args_is_help=True
)
app.add_typer(eligibility_app, name="eligibility")


def _eligibility_service() -> Any:
    from engine.adapters.payer import load_payers
    from engine.jobs.eligibility import EligibilityService
    from engine.settings import load_settings

    settings = load_settings()
    return EligibilityService(open_store(), load_payers(settings.payers_dir), settings)


def _day(value: str | None) -> Any:
    from datetime import date, timedelta

    if value is None:
        return date.today() + timedelta(days=1)
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise EngineError(f"--date {value!r}: use YYYY-MM-DD") from None


@eligibility_app.command("check")
def eligibility_check(
    on: Annotated[
        str | None, typer.Option("--date", help="first day to check (default: tomorrow)")
    ] = None,
    days: Annotated[int, typer.Option(min=1, max=30, help="business days from --date")] = 1,
    force: Annotated[bool, typer.Option(help="ask again even if checked today")] = False,
) -> None:
    """Check the appointments of the coming business days now."""
    import asyncio

    from rich.progress import Progress

    service = _eligibility_service()
    start = _day(on)

    async def run() -> list[Any]:
        try:
            if sys.stderr.isatty():
                with Progress(transient=True) as bar:
                    task = bar.add_task("checking", total=None)
                    return list(
                        await service.check_upcoming(
                            start=start,
                            days=days,
                            force=force,
                            progress=lambda n, t: bar.update(task, completed=n, total=t),
                        )
                    )
            return list(await service.check_upcoming(start=start, days=days, force=force))
        finally:
            await service.close()

    outcomes = asyncio.run(run())
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "nothing to check"
    typer.echo(f"{len(outcomes)} appointment coverage(s) checked: {summary}")


@eligibility_app.command("list")
def eligibility_list(
    on: Annotated[
        str | None,
        typer.Option("--date", help="the day (default: the next business day)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON, one object a line")] = False,
) -> None:
    """The front desk's list: who comes when (in the practice's time zone), who is covered, the
    copay to collect, who needs a call."""
    import orjson
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from engine.cli_audit import record_view
    from engine.jobs.eligibility import worklist
    from engine.settings import load_settings

    tz = load_settings().timezone
    store = open_store()
    try:
        if on is None:  # the day the worklist opens on: Monday after a Friday
            from engine.console.days import next_business_day

            day = next_business_day(tz)
        else:
            day = _day(on)
        rows = worklist(store, day, tz)
        record_view(
            store,
            "view-worklist",
            f"{day.isoformat()}: {len(rows)} appointments",
            patients=[r["mrn"] for r in rows],  # one record per patient listed, as the console's
        )
    finally:
        store.db_engine.dispose()  # its connections closed, not left to the garbage collector
    if as_json:
        for r in rows:
            typer.echo(orjson.dumps(r).decode())
        return
    table = Table(
        f"time ({tz})", "patient", "MRN", "payer", "status", "copay", "deductible left", "note"
    )
    for r in rows:
        cells = (
            r["time"] or "",
            r["patient_name"] or "",
            r["mrn"] or "",
            r["payer_name"] or r["payer_id"],
            r["status"].replace("_", " "),
            r["copay"] or "",
            r["deductible_remaining"] or "",
            (r["reason"] or r["plan"] or "")[:50],
        )
        table.add_row(*(Text(str(cell)) for cell in cells))  # stored values: text, not markup
    Console().print(table)


@app.command("payer-stub")
def payer_stub(
    port: Annotated[int, typer.Option(help="port to listen on")] = 8091,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
) -> None:
    """Run the stub payer over HTTP: answers 270s with 271s from a YAML roster."""
    from engine.sim.payer.http_server import run_payer_stub

    typer.echo(f"stub payer on http://{host}:{port} (Ctrl-C stops)", err=True)
    run_payer_stub(host, port)


@app.command()
def demo(
    host: Annotated[str, typer.Option(help="the engine's MLLP host")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="the engine's MLLP port")] = 2575,
    documents: Annotated[
        bool,
        typer.Option(help="also drop scanned documents in the folder and upload one over HTTP"),
    ] = True,
    http_url: Annotated[
        str | None,
        typer.Option(help="the engine's HTTP API (default: http://127.0.0.1:ENGINE_HTTP_PORT)"),
    ] = None,
) -> None:
    """Send synthetic patients with appointments the next business day to a running engine,
    then their scanned documents: three into the watched folder, one over POST /documents."""
    from engine.sim.demo import send

    try:
        results = send(host, port)
    except OSError as exc:
        raise EngineError(f"cannot reach the engine at {host}:{port} ({exc})") from exc
    for label, code in results:
        typer.echo(f"{code}  {label}")
    if documents:
        _demo_documents(http_url)
    typer.echo(
        "then: engine eligibility check && engine eligibility list   (or wait for the schedule)"
    )


def _demo_documents(http_url: str | None) -> None:
    """The demo's documents: the folder's (ENGINE_DOCUMENTS_INBOX) and one upload, with a
    development token minted here as ``engine token`` mints one."""
    import httpx

    from engine.api.auth_settings import auth_settings_for
    from engine.api.tokens import mint_dev_token
    from engine.settings import load_settings
    from engine.sim.demo import drop_documents, upload_document

    settings = load_settings()
    inbox = settings.resolved_documents_inbox()
    if inbox is None:
        typer.echo("documents: no watched folder (ENGINE_DOCUMENTS_INBOX is empty); skipped")
    else:
        for path in drop_documents(inbox):
            typer.echo(f"dropped  {path}")
    url = http_url or f"http://127.0.0.1:{settings.http_port}"
    token = mint_dev_token(
        auth_settings_for(settings), role="integration", ttl_s=300, subject="engine-demo"
    )
    try:
        status, body = upload_document(url, token)
    except httpx.HTTPError as exc:
        raise EngineError(f"cannot reach the engine's API at {url} ({exc})") from exc
    if status >= 300:
        raise EngineError(f"POST {url}/documents answered {status}: {body.get('detail', body)}")
    typer.echo(f"{status}  uploaded  document {body.get('document_id')} over POST /documents")


@app.command()
def token(
    role: Annotated[str, typer.Option(help="admin, integration or viewer")] = "integration",
    ttl: Annotated[int, typer.Option(help="seconds the token is valid", min=60)] = 3600,
    subject: Annotated[
        str | None,
        typer.Option(help="who the token is for, as the audit trail names them (default: you)"),
    ] = None,
) -> None:
    """Mint a development token (HS256, local secret) for `make run` users."""
    import getpass

    from engine.api.auth_settings import auth_settings_for
    from engine.api.tokens import mint_dev_token
    from engine.settings import load_settings

    who = subject or getpass.getuser()
    typer.echo(
        mint_dev_token(auth_settings_for(load_settings()), role=role, ttl_s=ttl, subject=who)
    )


@app.command("stub-fhir")
def stub_fhir(
    port: Annotated[int, typer.Option(help="port to listen on")] = 8090,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    access_log: Annotated[
        bool, typer.Option(help="log each request's line (its URL may carry identifiers)")
    ] = False,
) -> None:
    """Run a stub FHIR server (in memory) for demos and tests: base URL http://HOST:PORT/fhir."""
    from engine.sim.fhir_server import run_stub_fhir

    typer.echo(f"stub FHIR server on http://{host}:{port}/fhir (Ctrl-C stops)", err=True)
    run_stub_fhir(host, port, access_log=access_log)


@app.command("stub-athena")
def stub_athena(
    port: Annotated[int, typer.Option(help="port to listen on")] = 8093,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    client_id: Annotated[str, typer.Option(help="the client id it accepts")] = "engine-demo",
    token_limit: Annotated[
        int, typer.Option(min=0, max=10_000, help="token requests a client may make a minute")
    ] = 5,
    token_lifetime: Annotated[
        int, typer.Option(min=1, max=86_400, help="tokens' expires_in, seconds (benches)")
    ] = 3600,
    admin: Annotated[
        bool, typer.Option(help="open /admin/stats and /admin/expire (tests and benches only)")
    ] = False,
    load_patients: Annotated[
        int, typer.Option(min=0, max=100_000, help="synthetic patients LOAD00001... (benches)")
    ] = 0,
) -> None:
    """Run a stub athenahealth (in memory) for demos and tests: token endpoint, practice 195900.

    The client secret is ENGINE_STUB_ATHENA_SECRET when set, else a new one made at start;
    either way it is printed once for the engine's environment.
    """
    import os
    import secrets

    from engine.sim.athena import DEMO_DEPARTMENT, DEMO_PRACTICE, run_stub_athena

    secret = os.environ.get("ENGINE_STUB_ATHENA_SECRET") or secrets.token_urlsafe(24)
    typer.echo(
        f"stub athenahealth on http://{host}:{port} (Ctrl-C stops)\n"
        f"  token URL     http://{host}:{port}/oauth2/v1/token\n"
        f"  practice id   {DEMO_PRACTICE}, department id {DEMO_DEPARTMENT}\n"
        f"  client id     {client_id}\n"
        f"  client secret {secret}  (set it in the variable your route's client_secret_env names)",
        err=True,
    )
    run_stub_athena(
        host,
        port,
        client_id=client_id,
        client_secret=secret,
        token_limit_per_minute=token_limit,
        token_lifetime_s=token_lifetime,
        admin=admin,
        load_patients=load_patients,
    )


@app.command("stub-epic")
def stub_epic(
    port: Annotated[int, typer.Option(help="port to listen on")] = 8091,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    jwks_url: Annotated[
        str, typer.Option(help="the client's JWKS URL (the engine's /.well-known/jwks.json)")
    ] = "http://127.0.0.1:8080/.well-known/jwks.json",
    client_id: Annotated[str, typer.Option(help="the backend app's client id")] = "engine-demo",
    admin: Annotated[
        bool, typer.Option(help="open /admin/fail and /admin/stats (tests and demos only)")
    ] = False,
    load_patients: Annotated[
        int, typer.Option(min=0, max=100_000, help="synthetic patients LOAD00001... (benches)")
    ] = 0,
) -> None:
    """Run a stub Epic (SMART Backend Services, FHIR R4 at /api/FHIR/R4, demo data seeded)."""
    from engine.sim.epic import FHIR_BASE, run_stub_epic

    typer.echo(f"stub Epic on http://{host}:{port}{FHIR_BASE} (Ctrl-C stops)", err=True)
    run_stub_epic(
        host,
        port,
        jwks_url=jwks_url,
        client_id=client_id,
        admin=admin,
        load_patients=load_patients,
    )


def main() -> None:
    """Console-script entry point: run the CLI, turning errors into one line on stderr.

    Usage errors are Typer's own (exit 2, with the usage line).
    """
    try:
        app()
    except EngineError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # a bug: one line for users, the traceback on request
        if os.environ.get("ENGINE_DEBUG"):
            raise
        typer.echo(
            f"error: internal error ({type(exc).__name__}); set ENGINE_DEBUG=1 for details",
            err=True,
        )
        sys.exit(70)
