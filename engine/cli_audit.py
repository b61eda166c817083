"""``engine audit``: read the audit trail, check its hash chain, export it as FHIR AuditEvents.

The CLI reads the local store (whoever can run it on the engine's host is an admin there).
Reading and exporting the trail are recorded in it too (``view-audit``, ``export-audit``) with
the OS user as the actor and ``cli`` as the source.

Exit codes: 0 done (``verify``: the chain is intact), 1 a problem (``verify``: the first broken
record, by id and seq, and what is wrong with it).
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from engine.cli_messages import ID_MAX, parse_when
from engine.cli_support import cli_who, command_store, print_json
from engine.errors import EngineError

__all__ = ["audit_app", "record_view"]

audit_app = typer.Typer(
    help="The audit trail: who viewed, searched, replayed, resent or changed what (admins).",
    no_args_is_help=True,
)


def record_view(
    store: Any,
    action: str,
    detail: str,
    patient_key: str | None = None,
    patients: Sequence[str | None] = (),
) -> None:
    """A CLI command's view of patient data (a worklist, a list) recorded with the OS user;
    with ``patients``, once per patient shown (engine/store/audit.py)."""
    who = cli_who()
    store.record_audit(
        action=action,
        actor=who.actor,
        source=who.source,
        message_id=None,
        outcome="ok",
        detail=detail,
        patient_key=patient_key,
        patients=patients,
    )


def _zone() -> Any:
    from zoneinfo import ZoneInfo

    from engine.settings import load_settings

    return ZoneInfo(load_settings().timezone)


@audit_app.command("list")
def audit_list(
    actor: Annotated[
        str | None, typer.Option(help="only this user's (token subject, OS user)")
    ] = None,
    action: Annotated[str | None, typer.Option(help="only this action, e.g. view-payload")] = None,
    mrn: Annotated[str | None, typer.Option(help="only this patient: MRN or AUTHORITY|MRN")] = None,
    since: Annotated[str | None, typer.Option(help="from this date or ISO time")] = None,
    until: Annotated[str | None, typer.Option(help="up to this date (inclusive) or time")] = None,
    before: Annotated[
        int | None, typer.Option(help="next page: records before this seq", min=1, max=ID_MAX)
    ] = None,
    message_id: Annotated[
        int | None, typer.Option("--message", help="one message's", min=1, max=ID_MAX)
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="JSON, one object a line")] = False,
) -> None:
    """Records newest first: when, who (source, address), what, which message and patient,
    outcome, and the record's place in the chain (seq). The reading is recorded as view-audit."""
    from engine.store.audit import AuditQuery

    zone = _zone()
    try:
        query = AuditQuery(
            actor=actor,
            action=action,
            mrn=mrn,
            since=parse_when(since, zone) if since else None,
            until=parse_when(until, zone, end_of_day=True) if until else None,
            before=before,
            limit=limit,
        )
    except ValueError as exc:
        raise EngineError(str(exc)) from None
    with command_store() as store:
        records = store.audit_page(query, cli_who(), message_id=message_id)
    if as_json:
        print_json(records)
        return
    for r in records:
        typer.echo(
            f"{r.at.astimezone(zone).isoformat(timespec='seconds')}  {r.actor} ({r.source}"
            + (f" from {r.peer}" if r.peer else "")
            + f")  {r.action} message {r.message_id if r.message_id is not None else '-'}"
            + f" patient {r.patient_key or '-'}: {r.outcome}"
            + (f" ({r.detail})" if r.detail else "")
            + f"  [seq {r.seq}]"
        )
    if len(records) == limit:
        typer.echo(f"more: --before {records[-1].seq}", err=True)


@audit_app.command("verify")
def audit_verify() -> None:
    """Walk the hash chain from its anchor: exit 0 with the count verified and the head's hash
    (keep it elsewhere to detect a rewritten chain later), or exit 1 naming the first changed
    record (hash mismatch), a deleted one (a gap, a broken link) or a truncated tail."""
    with command_store() as store:
        verified = store.verify_audit(cli_who())
    if verified.ok:
        typer.echo(verified.describe())
        return
    typer.echo(verified.describe(), err=True)
    raise typer.Exit(1)


@audit_app.command("export")
def audit_export(
    since: Annotated[str, typer.Option(help="records from this date or ISO time")],
    out: Annotated[
        Path | None, typer.Option(help="write to this file (mode 0600) instead of stdout")
    ] = None,
) -> None:
    """The records since a date as FHIR R4 AuditEvent resources (IHE BALP), one JSON object a
    line. The export is recorded (export-audit) before it is read, so it is in it."""
    from engine.audit.export import write_ndjson

    start = parse_when(since, _zone())
    server = socket.gethostname()
    with command_store() as store:
        records = store.export_audit(start, cli_who())
        if out is None:
            n = write_ndjson(records, sys.stdout, server=server)
        else:
            n = _write_file(out, lambda f: write_ndjson(records, f, server=server))
    typer.echo(f"{n} AuditEvents" + (f" written to {out}" if out else ""), err=True)


def _write_file(path: Path, write: Any) -> int:
    """Write through a private temporary file beside ``path``, renamed when complete."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise EngineError(f"--out {path}: no such folder {folder}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            n = int(write(f))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n
