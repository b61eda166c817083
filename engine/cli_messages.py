"""``engine messages``: find stored messages and see why they are where they are, show one (its
payload on request), replay it, resend its deliveries, mark it handled (who did which: ``engine
audit``, engine/cli_audit.py).

Lists, shows, payload views, replays, resends and marks are recorded in the audit trail with the
OS user (``getpass.getuser()``) as the actor and ``cli`` as the source (engine/store/audit.py).
A mark cannot be taken back: the store keeps one per message, as the console shows it.
"""

from __future__ import annotations

import re
import sys
from datetime import date, datetime, time, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import typer

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

__all__ = ["ID_MAX", "messages_app", "parse_when"]

#: a message id: 1 .. 2**63 - 1, the range of the store's BIGINT key (typer refuses the rest)
ID_MAX = 2**63 - 1

messages_app = typer.Typer(
    help="Find stored messages, see why, replay them, resend their deliveries, mark them handled.",
    no_args_is_help=True,
)


def _zone() -> ZoneInfo:
    from engine.settings import load_settings

    return ZoneInfo(load_settings().timezone)


def parse_when(value: str, zone: ZoneInfo, *, end_of_day: bool = False) -> datetime:
    """A date (``2026-03-01``: its midnight, or the next one with ``end_of_day``) or an ISO time
    (``2026-03-01T14:30``, in ``zone`` unless it carries an offset)."""
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            start = datetime.combine(day, time(), tzinfo=zone)
            return start + timedelta(days=1) if end_of_day else start
        when = datetime.fromisoformat(value)
    except ValueError:
        raise EngineError(
            f"{value!r} is not a date (2026-03-01) or an ISO time (2026-03-01T14:30)"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=zone)


def _query(**options: Any) -> tuple[Any, ZoneInfo]:
    """The store's query for the list's options (an unknown state is refused by name; ``--type``
    may carry the trigger), and the engine's time zone its times are read and shown in."""
    from engine.store import MessageQuery

    zone = _zone()
    since, until = options.pop("since"), options.pop("until")
    options["since"] = parse_when(since, zone) if since else None
    options["until"] = parse_when(until, zone, end_of_day=True) if until else None
    try:
        query = MessageQuery(**options)
    except ValueError as exc:
        raise EngineError(str(exc)) from None
    return query, zone


def _why(line: Any) -> str:
    """Why a message is where it is: the processing's reason and each failing destination."""
    parts = [line.reason] if line.reason else []
    return "; ".join(parts + list(line.failing))


@messages_app.command("list")
def messages_list(
    state: Annotated[
        str | None, typer.Option(help="only messages in this state (any case)")
    ] = None,
    message_type: Annotated[
        str | None, typer.Option("--type", help="MSH-9.1, e.g. ADT, or with MSH-9.2: ADT^A04")
    ] = None,
    trigger: Annotated[str | None, typer.Option(help="MSH-9.2, e.g. A04")] = None,
    sender: Annotated[str | None, typer.Option(help="MSH-3, MSH-4, or MSH-3^MSH-4")] = None,
    mrn: Annotated[str | None, typer.Option(help="PID-3: MRN, or AUTHORITY|MRN")] = None,
    control_id: Annotated[str | None, typer.Option(help="MSH-10")] = None,
    since: Annotated[str | None, typer.Option(help="from this date or ISO time")] = None,
    until: Annotated[str | None, typer.Option(help="up to this date (inclusive) or time")] = None,
    before: Annotated[
        int | None, typer.Option(help="next page: ids below this", min=1, max=ID_MAX)
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="JSON, one object a line")] = False,
) -> None:
    """Stored messages, newest first (no payloads), with why each error, dead or stuck message
    is so: the processing's reason and each failing destination with its last error."""
    query, zone = _query(
        state=state,
        message_type=message_type,
        trigger=trigger,
        sender=sender,
        mrn=mrn,
        control_id=control_id,
        since=since,
        until=until,
        before=before,
        limit=limit,
    )
    with command_store() as store:
        lines = store.search(query)
        _record_search(store, query, lines)
    if as_json:
        print_json(lines)
        return
    rows = (
        (
            str(v.id),
            v.received_at.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S"),
            _type_of(v),
            v.control_id or "",
            v.sender or "",
            v.state,
            _why(v),
        )
        for v in lines
    )
    columns = ("id", "received", "type", "control id", "sender", "state", "why")
    print_table(columns, rows, more_before=lines[-1].id if len(lines) == limit else None)


def _record_search(store: Any, query: Any, shown: Any) -> None:
    """The list is a view of patient data: recorded (the MRN asked for as its patient key; not
    asked by MRN, once per patient of the messages shown, as the console and the API do)."""
    from engine.store.audit import search_detail

    who = cli_who()
    store.record_audit(
        action="search-messages",
        actor=who.actor,
        source=who.source,
        message_id=None,
        outcome="ok",
        detail=search_detail(query, len(shown)),
        patient_key=query.mrn,
        messages_shown=[m.id for m in shown] if query.mrn is None else (),
    )


def _type_of(v: Any) -> str:
    """``ADT^A04``, or the type alone (a FHIR ``Bundle``, a message without a trigger)."""
    return f"{v.message_type or ''}^{v.trigger or ''}".strip("^")


@messages_app.command("show")
def messages_show(
    message_id: Annotated[int, typer.Argument(help="message id", min=1, max=ID_MAX)],
    raw: Annotated[
        bool, typer.Option("--raw", help="print the payload as received (recorded as a view)")
    ] = False,
) -> None:
    """One message's metadata, deliveries (each with its attempts: when, outcome, HTTP status or
    error class, error, duration) and history (who viewed, replayed or resent it, from the audit
    trail); with --raw, its bytes as they arrived, one segment
    a line. On a terminal, control characters other than tab and line ends are shown escaped
    (ESC as \\x1b), so a sender's bytes cannot drive the terminal; piped, the bytes are exact."""
    if raw:
        _show_raw(message_id)
        return
    who = cli_who()
    with command_store() as store:
        view = store.get(message_id)
        history = store.audit_entries(limit=10, message_id=message_id)  # before this view
        store.record_audit(
            action="view-message",
            actor=who.actor,
            source=who.source,
            message_id=message_id,
            outcome="ok" if view is not None else "refused",
            detail=None if view is not None else "no such message",
        )
    if view is None:
        raise EngineError(f"no message {message_id}")
    control = f" control id {view.control_id!r}" if view.control_id is not None else ""
    typer.echo(
        f"message {view.id}: {_type_of(view) or '?'}{control}, received "
        f"{view.received_at.isoformat()} over {view.channel}, state {view.state}"
        + (f" ({view.reason})" if view.reason else "")
    )
    for line in view.warnings:
        typer.echo(f"  warning: {line}")
    zone = _zone()
    print_deliveries(view.deliveries, zone)
    for e in history:  # who viewed, replayed or resent it: the latest first
        typer.echo(
            f"  history: {e.at.astimezone(zone).isoformat(timespec='seconds')} {e.actor} "
            f"({e.source}) {e.action}: {e.outcome}"
        )


def _show_raw(message_id: int) -> None:
    """The payload as received, segments on their own lines; the view is audited."""
    who = cli_who()
    with command_store() as store:
        payload = store.read_payload(message_id, who)
    if payload is None:
        raise EngineError(f"no message {message_id}")
    text = payload.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    text = text if text.endswith(b"\n") else text + b"\n"
    if _to_terminal():
        typer.echo(_CONTROL.sub(_escaped, text.decode("utf-8", "backslashreplace")), nl=False)
    else:
        typer.echo(text, nl=False)


#: C0 controls but tab and line feed, DEL, and C1 controls (U+0080-U+009F: U+009B is a CSI)
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _escaped(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def _to_terminal() -> bool:
    """Is standard output a terminal (a person reading), not a pipe or a file?"""
    return sys.stdout.isatty()


@messages_app.command("replay")
def messages_replay(
    message_id: Annotated[int | None, typer.Argument(help="message id", min=1, max=ID_MAX)] = None,
    state: Annotated[
        str | None,
        typer.Option(help="replay every message in this state (e.g. error, dead; not replayed)"),
    ] = None,
    all_destinations: Annotated[
        bool,
        typer.Option(
            "--all-destinations",
            help="also to destinations the original was delivered to (after a mapping fix)",
        ),
    ] = False,
) -> None:
    """Receive stored messages again: routed and mapped anew with today's routes and mappings,
    to the destinations the original was not delivered to (--all-destinations: to every route
    that takes them). The original becomes 'replayed', so replaying a state twice replays
    nothing the second time. To send the same payload again, use `engine messages resend`."""
    from engine.store import MESSAGE_STATES

    if message_id is None and state is None:
        raise EngineError("give a message id or --state")
    if message_id is not None and state is not None:
        raise EngineError("give a message id or --state, not both")
    state = state.lower() if state is not None else None
    if state == "replayed":
        raise EngineError(
            "--state replayed is refused: those messages were already replayed, and replaying "
            "them again would send another copy each time (replay or resend their replays)"
        )
    if state is not None and state not in MESSAGE_STATES:
        raise EngineError(f"unknown state {state!r} (states: {', '.join(MESSAGE_STATES)})")
    who = cli_who()
    with command_store() as store:
        if message_id is not None:
            with store_action(f"no message {message_id}"):
                done = store.replay_message(message_id, who, everywhere=all_destinations)
            typer.echo(
                f"message {message_id} ({done.original_state}) replayed as {done.message_id}"
            )
            return
        seen, refused = _replay_state(store, state or "", who, everywhere=all_destinations)
    if not seen:
        typer.echo(f"no message in state {state}")
    elif refused:
        raise EngineError(
            f"{refused} of {seen} messages in state {state} not replayed (each said above); "
            "the others were"
        )


#: messages read a statement by ``replay --state``, oldest first
REPLAY_PAGE = 1_000


def _replay_state(store: Any, state: str, who: Any, *, everywhere: bool) -> tuple[int, int]:
    """Replay every message in ``state``, a page at a time, oldest first; how many were taken
    and how many refused. One refused (a patient's later message waiting behind it, a send
    under way, purged since it was listed) is said on stderr, and the rest go on; the
    database failing stops the run (the rest would fail too), saying how far it got. The
    run's own copies (stored after its first, so with higher ids: a copy may die and join the
    state) and messages received since are not taken: the run ends at the first copy's id."""
    from sqlalchemy.exc import DBAPIError

    from engine.store.db import failure_name

    seen = refused = 0
    after, bound = 0, None
    while True:
        page = store.ids_in_state(state, limit=REPLAY_PAGE, after=after)
        taken = [i for i in page if bound is None or i < bound]
        if not taken:
            return seen, refused
        for mid in taken:
            try:
                copy = _replay_one(store, mid, who, everywhere=everywhere)
            except DBAPIError as exc:
                raise EngineError(
                    f"stopped at message {mid}: the database failed ({failure_name(exc)}); "
                    f"{seen - refused} replayed before it, {refused} refused; "
                    "run the command again once the database answers"
                ) from None
            seen += 1
            refused += copy is None
            bound = bound or copy
        after = taken[-1]


def _replay_one(store: Any, mid: int, who: Any, *, everywhere: bool) -> int | None:
    """Replay one message of a state, said on stdout; refused, said on stderr (None)."""
    from engine.store import ActionRefused

    try:
        done = store.replay_message(mid, who, everywhere=everywhere)
    except KeyError:
        typer.echo(f"message {mid} not replayed: it is gone (purged)", err=True)
        return None
    except ActionRefused as exc:
        typer.echo(f"message {mid} not replayed: {exc}", err=True)
        return None
    typer.echo(f"message {mid} ({done.original_state}) replayed as {done.message_id}")
    return int(done.message_id)


@messages_app.command("resend")
def messages_resend(
    message_id: Annotated[int, typer.Argument(help="message id", min=1, max=ID_MAX)],
    destination: ResendDestination = None,
) -> None:
    """Send a message's dead deliveries again (or its delivery to one destination), with the
    payload made the first time: nothing goes to the destinations that had it."""
    with store_action(f"no message {message_id}"), command_store() as store:
        done = store.resend(message_id, cli_who(), destination)
    print_resent(f"message {message_id}", done)


@messages_app.command("handle")
def messages_handle(
    message_id: Annotated[int, typer.Argument(help="message id", min=1, max=ID_MAX)],
    note: Annotated[
        str | None, typer.Option(help="what was done (at most 500 characters kept)")
    ] = None,
) -> None:
    """Mark an error, dead, unrouted or needs-patient message handled: someone dealt with it.
    It keeps its state; the console's list shows the mark (and the dashboard no longer counts a
    dead letter so marked). A message in another state, or marked already, is refused."""
    with store_action(f"no message {message_id}"), command_store() as store:
        mark = store.mark_handled(message_id, cli_who(), note)
    typer.echo(f"message {message_id} marked handled by {mark.handled_by}")
