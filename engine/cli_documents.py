"""``engine documents``: the documents an operator looks after — list them (those waiting for
their patient first of all), show one's metadata and deliveries, match one to its patient, or
resend it once the EHR knows the patient.

A document's metadata names a patient: each list and show is recorded in the audit trail, as are
matches and resends, with the OS user (``getpass.getuser()``) as the actor and ``cli`` as the
source (engine/store/audit.py). The bytes are never printed.
"""

from __future__ import annotations

from typing import Annotated

import typer

from engine.cli_messages import ID_MAX, _zone
from engine.cli_support import (
    ResendDestination,
    cli_who,
    command_store,
    print_deliveries,
    print_json,
    print_resent,
    print_table,
    store_action,
)
from engine.errors import EngineError

__all__ = ["documents_app"]

documents_app = typer.Typer(
    help="Stored documents: list, show, match to a patient, resend.", no_args_is_help=True
)


def _size(n: int) -> str:
    """A size a person reads at a glance (``1.2 MiB``)."""
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1024 * 1024):.1f} MiB"


@documents_app.command("list")
def documents_list(
    state: Annotated[
        str | None,
        typer.Option(help="only documents whose message is in this state (e.g. needs-patient)"),
    ] = None,
    mrn: Annotated[str | None, typer.Option(help="the patient: MRN, or AUTHORITY|MRN")] = None,
    document_type: Annotated[
        str | None, typer.Option("--type", help="the document type (referral, consent, ...)")
    ] = None,
    before: Annotated[
        int | None, typer.Option(help="next page: ids below this", min=1, max=ID_MAX)
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="JSON, one object a line")] = False,
) -> None:
    """Stored documents, newest first (no bytes, no patient: `show` names it), with the state of
    each one's message and the destinations that wait for its patient. Audited."""
    from engine.store import DocumentQuery

    try:
        query = DocumentQuery(
            state=state, mrn=mrn, document_type=document_type, before=before, limit=limit
        )
    except ValueError as exc:
        raise EngineError(str(exc)) from None
    zone = _zone()
    with command_store() as store:
        lines = store.list_documents(query, cli_who())
    if as_json:
        print_json(lines)
        return
    rows = (
        (
            str(d.id),
            d.received_at.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S"),
            d.document_type,
            d.media_type,
            _size(d.size),
            d.sender,
            d.state or "(no message)",
            ", ".join(d.waiting),
        )
        for d in lines
    )
    columns = ("id", "received", "type", "media type", "size", "sender", "state", "waiting")
    print_table(columns, rows, more_before=lines[-1].id if len(lines) == limit else None)


@documents_app.command("show")
def documents_show(
    document_id: Annotated[int, typer.Argument(help="document id", min=1, max=ID_MAX)],
    as_json: Annotated[bool, typer.Option("--json", help="as one JSON object")] = False,
) -> None:
    """One document's metadata, SHA-256 and deliveries (never its bytes). Audited."""
    with command_store() as store:
        view = store.show_document(document_id, cli_who())
    if view is None:
        raise EngineError(f"no document {document_id}")
    if as_json:
        print_json([view])
        return
    patient = f"{view.patient_authority}|{view.patient_mrn}".lstrip("|")
    typer.echo(
        f"document {view.id}: {view.document_type} ({view.media_type}, {_size(view.size)}) "
        f"of {view.document_date}, received {view.received_at.isoformat()} from {view.sender} "
        f"over {view.channel}"
    )
    typer.echo(f"  patient: {patient}")
    for label, value in (
        ("title", view.title),
        ("file name", view.file_name),
        ("author", view.author),
        ("practice", view.practice),
        ("department", view.department),
        ("appointment", view.appointment),
        ("encounter", view.encounter),
        ("document number", view.unique_number),
    ):
        if value:
            typer.echo(f"  {label}: {value}")
    typer.echo(f"  sha256: {view.sha256}")
    if view.message_id is None:
        typer.echo("  message: none (purged)")
        return
    typer.echo(f"  message {view.message_id}: {view.state}")
    print_deliveries(view.deliveries)


@documents_app.command("match")
def documents_match(
    document_id: Annotated[int, typer.Argument(help="document id", min=1, max=ID_MAX)],
    mrn: Annotated[str, typer.Option(help="the patient's MRN as the EHR knows it")],
    authority: Annotated[
        str | None,
        typer.Option(help="the MRN's assigning authority (default: the document's own)"),
    ] = None,
) -> None:
    """Place a document that waits for its patient: record the patient and send the document
    again with the new metadata, to the destinations that have not taken it."""
    with store_action(f"no document {document_id}"), command_store() as store:
        done = store.match_document(document_id, mrn, authority, who=cli_who())
    typer.echo(
        f"document {document_id} matched: message {done.replay_of} replayed as "
        f"{done.message_id} (was waiting at {', '.join(done.resent)})"
    )


@documents_app.command("resend")
def documents_resend(
    document_id: Annotated[int, typer.Argument(help="document id", min=1, max=ID_MAX)],
    destination: ResendDestination = None,
) -> None:
    """Send the document again as it was made, where it failed or waits for its patient (the
    EHR knows the patient now), or to one destination."""
    with store_action(f"no document {document_id}"), command_store() as store:
        done = store.resend_document(document_id, cli_who(), destination)
    print_resent(f"document {document_id}", done)
