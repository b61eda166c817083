"""The ``engine`` command line. Wiring only: every command builds what it needs from Settings.

Errors end the command with one line on stderr (``error: ...``) and a non-zero exit code, never a
traceback; set ENGINE_DEBUG=1 to see the traceback of an unexpected failure.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from engine import __version__
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


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(help="HL7v2 file (one message, a batch, or many)")],
) -> None:
    """Validate every HL7v2 message in FILE against its message structure (via hl7apy)."""
    from engine.hl7v2.batch import iter_messages
    from engine.hl7v2.validate import validate as validate_message

    data = _read_input(file)
    total = bad = 0
    for message in iter_messages(data):
        total += 1
        issues = validate_message(message)
        label = f"message {total} ({message.type}, MSH-10 {message.control_id!r})"
        errors = [i for i in issues if i.severity == "E"]
        if errors:
            bad += 1
        if not issues:
            typer.echo(f"{label}: valid")
        for issue in issues:
            typer.echo(f"{label}: {issue}")
    if total == 0:
        raise EngineError(f"{file}: no HL7v2 message found")
    typer.echo(f"{total} message(s), {total - bad} valid, {bad} invalid")
    if bad:
        raise typer.Exit(EXIT_ERROR)


@app.command()
def convert(
    file: Annotated[Path, typer.Argument(help="input file: HL7v2, X12 or FHIR JSON ('-' = stdin)")],
    to: Annotated[
        str | None, typer.Option("--to", help="target format: fhir (default for HL7v2), hl7v2")
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
) -> None:
    """Convert FILE: HL7v2 → FHIR Bundle (JSON; NDJSON for several messages), FHIR → HL7v2."""
    from engine.convert import convert_file
    from engine.settings import load_settings

    settings = load_settings(mappings_dir=mappings, validate_fhir=validate_fhir)
    convert_file(_read_input(file), str(file), to=to, settings=settings, jobs=jobs, event=event)


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


@app.command()
def serve(
    mllp_port: Annotated[int | None, typer.Option(help="MLLP port (ENGINE_MLLP_PORT)")] = None,
    http_port: Annotated[int | None, typer.Option(help="HTTP port (ENGINE_HTTP_PORT)")] = None,
    database_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL (ENGINE_DATABASE_URL); default SQLite")
    ] = None,
) -> None:
    """Run the engine: MLLP listener, HTTP API, message store. Ctrl-C stops it."""
    from engine.service import serve as run_engine
    from engine.settings import load_settings

    settings = load_settings(mllp_port=mllp_port, http_port=http_port, database_url=database_url)
    _configure_logging(settings.log_level)
    typer.echo(
        f"engine {__version__}: MLLP on {settings.mllp_host}:{settings.mllp_port}, "
        f"HTTP on http://{settings.http_host}:{settings.http_port} (health: /healthz), "
        f"store {_safe_url(settings.resolved_database_url())}. Ctrl-C stops.",
        err=True,
    )
    run_engine(settings)
    typer.echo("engine stopped", err=True)


def _safe_url(url: str) -> str:
    """A database URL without its password, for display."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
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
