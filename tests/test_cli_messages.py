"""``engine messages`` and ``engine audit`` as an admin uses them, on a store the real flow filled:
replay and resend never multiply copies at a destination, the list says why, the payload view
is audited. On SQLite and PostgreSQL."""

from __future__ import annotations

import getpass
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.adapters.memory import MemoryDestination
from engine.cli import app
from engine.errors import EngineError
from engine.mappings import Mappings, load_mappings
from engine.routes.loader import RouteSet
from engine.store import MessageQuery, SqlMessageStore
from tests.flow.test_queue import msg, run_all
from tests.flow.test_queue import routes as routes  # noqa: F401  (the fixture)

runner = CliRunner()


@pytest.fixture(scope="module")
def mappings() -> Mappings:
    return load_mappings()


@pytest.fixture
def cli(store: SqlMessageStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Run ``engine ...`` on the test's store; returns (exit code, stdout, stderr)."""
    monkeypatch.setenv("ENGINE_DATABASE_URL", store.db_engine.url.render_as_string(False))
    monkeypatch.setenv("ENGINE_HOME", str(tmp_path))
    monkeypatch.setenv("ENGINE_TIMEZONE", "UTC")

    def run(*args: str) -> tuple[int, str, str]:
        result = runner.invoke(app, list(args))
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            return 1, result.stdout, str(result.exception)
        return result.exit_code, result.stdout, result.stderr

    return run


def _dead_on_raw(
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings
) -> tuple[int, MemoryDestination, MemoryDestination]:
    """One message delivered to fhir and dead on raw (refused): its id and the destinations."""
    fhir, raw = MemoryDestination("fhir"), MemoryDestination("raw")
    raw.fail_next(1, retryable=False, detail="400 refused")
    run_all(store, routes, mappings, {"fhir": fhir, "raw": raw}, [msg(1)])
    [line] = store.search(MessageQuery())
    assert line.state == "dead"
    return line.id, fhir, raw


def test_three_replays_of_the_dead_set_do_not_multiply_copies(  # the figure
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings, cli
) -> None:
    mid, fhir, raw = _dead_on_raw(store, routes, mappings)
    dests = {"fhir": fhir, "raw": raw}
    outputs = []
    for _ in range(3):
        code, out, err = cli("messages", "replay", "--state", "dead")
        assert code == 0, err
        outputs.append(out)
        run_all(store, routes, mappings, dests, [])
    assert outputs[0].startswith(f"message {mid} (dead) replayed as ")
    assert outputs[1:] == ["no message in state dead\n"] * 2
    # before: the original stayed dead and each run replayed it again (4 copies after 3 runs),
    # and the replay went to fhir too, which had it
    assert [p.control_id for p in raw.delivered] == ["C1"]  # the replay kept its control id
    assert [p.control_id for p in fhir.delivered] == ["C1"]  # the original's, not again
    lines = store.search(MessageQuery())
    assert sorted(line.state for line in lines) == ["delivered", "replayed"]
    copy = store.get(max(line.id for line in lines))
    assert copy is not None and [d.destination for d in copy.deliveries] == ["raw"]
    assert f"destination fhir skipped: message {mid} was delivered there" in "\n".join(
        copy.warnings
    )


def test_replay_all_destinations_sends_to_those_that_had_it_too(
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings, cli
) -> None:
    mid, fhir, raw = _dead_on_raw(store, routes, mappings)
    code, out, err = cli("messages", "replay", str(mid), "--all-destinations")
    assert code == 0, err
    run_all(store, routes, mappings, {"fhir": fhir, "raw": raw}, [])
    assert [p.control_id for p in raw.delivered] == ["C1"]
    assert [p.control_id for p in fhir.delivered] == ["C1", "C1"]  # the original, the replay


def test_a_replay_every_destination_had_is_delivered_at_once(
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings, cli
) -> None:
    """A replay of a delivered message (by mistake, or to re-run the mapping): with nothing left
    to send it is settled, the skips on it, instead of sending duplicates."""
    mid, fhir, raw = _dead_on_raw(store, routes, mappings)
    assert cli("messages", "resend", str(mid))[0] == 0
    run_all(store, routes, mappings, {"fhir": fhir, "raw": raw}, [])
    code, _, err = cli("messages", "replay", str(mid))
    assert code == 0, err
    run_all(store, routes, mappings, {"fhir": fhir, "raw": raw}, [])
    assert len(fhir.delivered) == 1 and len(raw.delivered) == 1
    copy = store.get(max(line.id for line in store.search(MessageQuery())))
    assert copy is not None and copy.state == "delivered" and copy.deliveries == ()
    assert len(copy.warnings) == 2


def test_resend_goes_where_it_failed_once_however_often_asked(
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings, cli
) -> None:
    mid, fhir, raw = _dead_on_raw(store, routes, mappings)
    code, out, err = cli("messages", "resend", str(mid))
    assert code == 0, err
    assert out.startswith(f"message {mid}: raw queued again (delivery ")
    code, out, _ = cli("messages", "resend", str(mid))  # again, while the first is queued
    assert code == 0 and "nothing resent (nothing dead; still queued: raw)" in out
    run_all(store, routes, mappings, {"fhir": fhir, "raw": raw}, [])
    code, out, _ = cli("messages", "resend", str(mid))  # again, once it is delivered
    assert "nothing resent (nothing dead" in out
    run_all(store, routes, mappings, {"fhir": fhir, "raw": raw}, [])
    assert [p.control_id for p in raw.delivered] == ["C1"]
    assert [p.control_id for p in fhir.delivered] == ["C1"]  # the one that had it: untouched
    view = store.get(mid)
    assert view is not None and view.state == "delivered"
    assert [(d.destination, d.state) for d in view.deliveries] == [
        ("fhir", "delivered"),
        ("raw", "resent"),
        ("raw", "delivered"),
    ]
    # one destination by name, even delivered; an unknown one is named with the known ones
    code, out, _ = cli("messages", "resend", str(mid), "--destination", "fhir")
    assert code == 0 and "fhir queued again" in out
    code, _, err = cli("messages", "resend", str(mid), "--destination", "epic")
    assert code != 0 and "no destination 'epic' (it has: fhir, raw)" in err
    code, _, err = cli("messages", "resend", "999999")
    assert code != 0 and "no message 999999" in err


def test_list_says_why_and_filters(
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings, cli
) -> None:
    mid, _, _ = _dead_on_raw(store, routes, mappings)
    code, out, err = cli("messages", "list", "--state", "dead", "--json")
    assert code == 0, err
    assert f'"id":{mid}' in out and '"failing":["raw (dead): 400 refused"]' in out
    code, out, _ = cli("messages", "list", "--type", "ADT", "--trigger", "A08", "--mrn", "MRN1")
    assert code == 0 and "raw (dead): 400 refused" in out and "FRONTDESK^CLINIC" in out
    code, out, _ = cli("messages", "list", "--sender", "ELSEWHERE", "--json")
    assert code == 0 and out == ""
    code, out, _ = cli("messages", "list", "--since", "2000-01-01", "--until", "2000-01-02")
    assert code == 0 and str(mid) not in out
    code, out, _ = cli("messages", "list", "--json", "--since", "2000-01-01")
    assert code == 0 and f'"id":{mid}' in out
    code, _, err = cli("messages", "list", "--state", "deadd")
    assert code != 0 and "unknown state 'deadd'" in err and "replayed" in err
    code, _, err = cli("messages", "list", "--since", "yesterday")
    assert code != 0 and "'yesterday' is not a date" in err


def test_show_raw_prints_the_payload_and_is_audited(
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings, cli
) -> None:
    mid, _, _ = _dead_on_raw(store, routes, mappings)
    code, out, err = cli("messages", "show", str(mid), "--raw")
    assert code == 0, err
    assert out.splitlines()[0].startswith("MSH|^~\\&|FRONTDESK|CLINIC|")
    assert out.splitlines()[2].startswith("PID|1||MRN1^^^CLINIC^MR")
    cli("messages", "resend", str(mid))
    cli("messages", "show", "999999", "--raw")
    code, out, _ = cli("audit", "list", "--limit", "5")
    lines = out.splitlines()
    user = getpass.getuser()
    assert code == 0 and len(lines) == 3
    assert f"{user} (cli)  view-payload message 999999" in lines[0] and "refused" in lines[0]
    assert " from " not in out  # the CLI has no caller address; the API's rows show theirs
    assert f"{user} (cli)  resend message {mid} patient CLINIC|MRN1: ok" in lines[1]
    assert f"{user} (cli)  view-payload message {mid} patient CLINIC|MRN1: ok" in lines[2]


def test_a_replayed_message_is_not_replayed_or_resent_again(
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings, cli
) -> None:
    """Before: `replay 3` twice made a second copy; a resend of the original put it back to dead
    and `replay --state dead` made a third."""
    mid, fhir, raw = _dead_on_raw(store, routes, mappings)
    dests = {"fhir": fhir, "raw": raw}
    code, out, err = cli("messages", "replay", str(mid))
    assert code == 0, err
    copy = int(out.split()[-1])
    refusal = f"message {mid} was already replayed as message {copy}: replay or resend that one"
    code, out, err = cli("messages", "replay", str(mid))
    assert (code, out, err) == (1, "", refusal)
    code, out, err = cli("messages", "resend", str(mid))
    assert (code, out, err) == (1, "", refusal)
    run_all(store, routes, mappings, dests, [])
    code, out, err = cli("messages", "replay", "--state", "dead")
    assert (code, out) == (0, "no message in state dead\n"), err
    assert [p.control_id for p in raw.delivered] == ["C1"]  # the copy, once
    assert [p.control_id for p in fhir.delivered] == ["C1"]  # the original; the copy skips it
    assert sorted(line.state for line in store.search(MessageQuery())) == [
        "delivered",
        "replayed",
    ]


def _stored(store: SqlMessageStore, raw: bytes, **fields: object) -> int:
    """One message stored as received, with the header columns given."""
    from engine.store import Incoming

    [stored] = store.save_batch([Incoming(raw=raw, channel="mllp", **fields)])  # type: ignore[arg-type]
    return stored.id


def test_stored_values_are_shown_as_text_not_rich_markup(
    store: SqlMessageStore, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: MSH-3 ``[/bold]`` made every page with it fail (internal error (MarkupError)),
    and ``[bold red]EVIL[/bold red]`` showed as ``EVIL``."""
    _stored(store, b"MSH|^~\\&|[/bold]|X\r", sending_application="[/bold]", control_id="[/]")
    _stored(
        store,
        b"MSH|^~\\&|EVIL|X\r",
        sending_application="[bold red]EVIL[/bold red]",
        state="error",
        reason="bad [i]segment[/i]",
    )
    code, out, err = cli("messages", "list")
    assert code == 0, err
    assert "[/bold]^X" not in out  # no facility stored: the sender is MSH-3 alone
    assert "[/bold]" in out and "[/]" in out
    assert "[bold red]EVIL[/bold red]" in out and "bad [i]segment[/i]" in out
    # engine eligibility list: payer, patient and note come from outside too
    import engine.jobs.eligibility as eligibility

    row = {
        "time": "09:00",
        "patient_name": "[bold]Doe[/bold]",
        "mrn": "[/]",
        "payer_name": "[red]ACME[/red]",
        "payer_id": "1",
        "status": "active",
        "copay": "",
        "deductible_remaining": "",
        "reason": None,
        "plan": "[/plan]",
    }
    monkeypatch.setattr(eligibility, "worklist", lambda *args: [row])
    monkeypatch.setenv("COLUMNS", "200")  # rich's width: no cell cut short
    code, out, err = cli("eligibility", "list", "--date", "2026-03-01")
    assert code == 0, err
    for value in ("[bold]Doe[/bold]", "[/]", "[red]ACME[/red]", "[/plan]"):
        assert value in out


@pytest.mark.parametrize(
    ("args", "name"),
    [
        (("messages", "show", "{}", "--raw"), "'message_id'"),
        (("messages", "show", "{}"), "'message_id'"),
        (("messages", "resend", "{}"), "'message_id'"),
        (("messages", "replay", "{}"), "'message_id'"),
        (("audit", "list", "--message", "{}"), "'--message'"),
        (("messages", "list", "--before", "{}"), "'--before'"),
    ],
)
@pytest.mark.parametrize(
    ("value", "bound"),
    [("99999999999999999999", "less than or equal to 9223372036854775807"), ("0", "greater")],
)
def test_ids_out_of_range_are_a_usage_error_naming_the_argument(
    cli, args: tuple[str, ...], name: str, value: str, bound: str
) -> None:
    """Before: ``internal error (OverflowError)``, exit 70 (the API already answers 422)."""
    code, _, err = cli(*(a.format(value) for a in args))
    assert code == 2, err
    assert f"Invalid value for {name}: Input should be " in err
    assert bound in " ".join(err.replace("│", " ").split())


def test_show_raw_escapes_control_characters_on_a_terminal_only(
    store: SqlMessageStore, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: ESC sequences from a sender's MSH-4 or PID-5 went straight to the terminal."""
    import engine.cli_messages as cli_messages

    raw = b"MSH|^~\\&|APP|\x1b]0;pwned\x07\x1b[2J|\rPID|1||M1||DOE\x9b\tJOHN\x7f\r\n"
    mid = _stored(store, raw)
    code, out, err = cli("messages", "show", str(mid), "--raw")  # piped: the exact bytes
    assert code == 0, err
    assert out == raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").decode("utf-8", "replace")
    monkeypatch.setattr(cli_messages, "_to_terminal", lambda: True)
    code, out, err = cli("messages", "show", str(mid), "--raw")
    assert code == 0, err
    assert out == ("MSH|^~\\&|APP|\\x1b]0;pwned\\x07\\x1b[2J|\nPID|1||M1||DOE\\x9b\tJOHN\\x7f\n")
    code, out, _ = cli("messages", "show", "--help")
    assert "escaped" in out and "terminal" in out


def test_replay_names_what_is_missing_and_refuses_the_replayed_state(
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings, cli
) -> None:
    """Before: neither id nor --state said 'not both'; ``--state replayed`` replayed the
    originals again, a copy more each time."""
    mid, _, _ = _dead_on_raw(store, routes, mappings)
    code, _, err = cli("messages", "replay")
    assert code == 1 and err.strip().endswith("give a message id or --state")
    code, _, err = cli("messages", "replay", str(mid), "--state", "dead")
    assert code == 1 and err.strip().endswith("give a message id or --state, not both")
    assert cli("messages", "replay", "--state", "DEAD")[0] == 0  # any case
    code, out, err = cli("messages", "replay", "--state", "replayed")
    assert code == 1 and out == ""
    assert "--state replayed is refused" in err and "already replayed" in err
    assert sorted(line.state for line in store.search(MessageQuery())) == ["received", "replayed"]


def test_type_takes_type_and_trigger_and_state_any_case(
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings, cli
) -> None:
    """Before: ``--type ADT^A08`` (what the type column shows) found nothing, ``--state DEAD``
    was refused."""
    mid, _, _ = _dead_on_raw(store, routes, mappings)
    for args in (
        ("--type", "ADT^A08"),
        ("--type", "adt^a08", "--trigger", "A08"),
        ("--type", "ADT", "--trigger", "a08"),
        ("--state", "DEAD"),
        ("--state", "Dead", "--type", "adt"),
    ):
        code, out, err = cli("messages", "list", "--json", *args)
        assert code == 0, (args, err)
        assert f'"id":{mid}' in out, args
    code, out, err = cli("messages", "list", "--json", "--type", "ADT^A04")
    assert (code, out) == (0, ""), err
    code, out, err = cli("messages", "list", "--type", "ADT^A08", "--trigger", "A04")
    assert code == 1 and "type ADT^A08 and trigger A04 disagree" in err


def test_show_of_a_fhir_message_says_what_it_is(store: SqlMessageStore, cli) -> None:
    """Before: ``Bundle^ control id None``."""
    mid = _stored(store, b'{"resourceType":"Bundle"}', kind="fhir", message_type="Bundle")
    code, out, err = cli("messages", "show", str(mid))
    assert code == 0, err
    first = out.splitlines()[0]
    assert first.startswith(f"message {mid}: Bundle, received ")
    assert "None" not in first and "^" not in first and "control id" not in first
    hl7 = _stored(store, b"MSH|^~\\&|A|B\r", message_type="ADT", trigger="A01", control_id="C9")
    code, out, _ = cli("messages", "show", str(hl7))
    assert out.startswith(f"message {hl7}: ADT^A01 control id 'C9', received ")


def test_since_and_until_are_read_in_the_engine_zone_on_every_database(
    store: SqlMessageStore, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: on SQLite a New York time (or one with -05:00) was compared with the stored UTC
    as if it were UTC: ``--since`` 02:11:40 New York listed messages from 23:00 the day before."""
    from datetime import UTC, datetime

    from sqlalchemy import update

    from engine.store import Incoming
    from engine.store.tables import messages

    received = [
        datetime(2026, 12, 3, 4, 0, tzinfo=UTC),  # 23:00 the day before in New York
        datetime(2026, 12, 3, 7, 11, 40, tzinfo=UTC),  # 02:11:40 in New York
        datetime(2026, 12, 3, 10, 30, tzinfo=UTC),  # 05:30 in New York
    ]
    ids = [s.id for s in store.save_batch([Incoming(raw=b"MSH|", channel="mllp")] * 3)]
    with store.db_engine.begin() as conn:
        for id_, at in zip(ids, received, strict=True):
            conn.execute(update(messages).where(messages.c.id == id_).values(received_at=at))
    early, mid, late = ids
    monkeypatch.setenv("ENGINE_TIMEZONE", "America/New_York")

    def listed(*args: str) -> list[int]:
        code, out, err = cli("messages", "list", "--json", *args)
        assert code == 0, err
        return [int(line.split('"id":')[1].split(",")[0]) for line in out.splitlines()]

    for since in ("2026-12-03T02:11:40", "2026-12-03T02:11:40-05:00", "2026-12-03T07:11:40Z"):
        assert listed("--since", since) == [late, mid], since
        assert listed("--until", since) == [early], since
    assert listed("--since", "2026-12-03") == [late, mid]  # New York's midnight is 05:00Z
    assert listed("--until", "2026-12-02") == [early]  # through the end of that day


def test_show_lists_each_deliverys_attempts_as_the_console_does(
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings, cli
) -> None:
    """Before: one line a delivery (its state and last error); the attempts the console's
    message page and ``GET /api/messages/{id}`` list were not shown. The view stays audited."""
    fhir, raw = MemoryDestination("fhir"), MemoryDestination("raw")
    fhir.fail_next(1, retryable=True, detail="fhir: transaction -> 503")
    fhir.fail_next(1, retryable=True, detail="fhir: timeout (ReadTimeout)")
    raw.fail_next(1, retryable=False, detail="400 refused")
    run_all(store, routes, mappings, {"fhir": fhir, "raw": raw}, [msg(1)])
    [line] = store.search(MessageQuery())
    code, out, err = cli("messages", "show", str(line.id))
    assert code == 0, err
    lines = out.splitlines()
    at = lines.index("  → fhir: delivered after 3 attempt(s)")
    attempts = lines[at + 1 : at + 4]
    assert (
        attempts[0].startswith("      #1 ")
        and " retry (503): fhir: transaction -> 503 in " in (attempts[0])
    )
    assert " retry (ReadTimeout): fhir: timeout (ReadTimeout) in " in attempts[1]
    assert attempts[2].startswith("      #3 ") and " delivered in " in attempts[2]
    assert all(a.endswith(" ms") and "+00:00 " in a for a in attempts)  # ENGINE_TIMEZONE=UTC
    at = lines.index("  → raw: dead after 1 attempt(s), last error: 400 refused")
    assert lines[at + 1].startswith("      #1 ") and lines[at + 1].endswith(" ms")
    assert " dead: 400 refused in " in lines[at + 1]
    view = store.get(line.id)
    assert view is not None
    assert [a.attempt for d in view.deliveries for a in d.history] == [1, 2, 3, 1]
    entries = store.audit_entries(limit=5, message_id=line.id)
    assert [(e.action, e.outcome) for e in entries] == [("view-message", "ok")]


def test_show_says_how_many_attempts_were_made_before_they_were_kept(
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings, cli
) -> None:
    """A delivery whose attempts predate the attempts' table (migration 0020) says so, as the
    console does, rather than listing fewer attempts than it counts."""
    from sqlalchemy import delete

    from engine.store.tables import delivery_attempts

    mid, _, _ = _dead_on_raw(store, routes, mappings)
    with store.db_engine.begin() as conn:
        conn.execute(delete(delivery_attempts))
    code, out, err = cli("messages", "show", str(mid))
    assert code == 0, err
    lines = out.splitlines()
    at = lines.index("  → raw: dead after 1 attempt(s), last error: 400 refused")
    assert lines[at + 1] == (
        "      1 earlier attempt(s) not listed (made before attempts were kept)"
    )
    at = lines.index("  → fhir: delivered after 1 attempt(s)")
    assert lines[at + 1].startswith("      #1 ") and lines[at + 1].endswith(" delivered")


def test_handle_marks_a_dead_message_once_and_is_audited_as_the_console_does(
    store: SqlMessageStore, routes: RouteSet, mappings: Mappings, cli
) -> None:
    """``engine messages handle`` is the console's "mark handled": the same store action and
    audit record (``mark-handled``), the CLI's user as actor; the message keeps its state."""
    mid, _, _ = _dead_on_raw(store, routes, mappings)
    user = getpass.getuser()
    code, out, err = cli("messages", "handle", str(mid), "--note", "  called the lab  ")
    assert (code, out) == (0, f"message {mid} marked handled by {user}\n"), err
    mark = store.handled_marks([mid])[mid]
    assert (mark.handled_by, mark.note) == (user, "called the lab")
    view = store.get(mid)
    assert view is not None and view.state == "dead"
    code, out, err = cli("messages", "handle", str(mid))
    assert code == 1 and out == ""
    assert err.startswith(f"message {mid} was marked handled by {user} at ")
    assert store.handled_marks([mid])[mid] == mark  # the first mark stays
    trail = [
        (e.action, e.actor, e.source, e.message_id, e.outcome, e.detail)
        for e in store.audit_entries(limit=2)
    ]
    assert trail == [
        ("mark-handled", user, "cli", mid, "refused", err),
        ("mark-handled", user, "cli", mid, "ok", "was dead"),
    ]
    code, out, _ = cli("messages", "--help")
    assert code == 0 and "handle" in out


def test_handle_refuses_a_message_in_another_state_in_one_line_without_a_traceback(
    store: SqlMessageStore, cli
) -> None:
    """As a user runs it (a subprocess, ``cli`` put the store's URL in the environment): a
    message that needs no one is refused naming its state, on stderr, exit 1; so is an
    unknown id. Both refusals are audited."""
    mid = _stored(
        store, b"MSH|^~\\&|A|B|||20260102||ADT^A08|H1|P|2.5.1\r", control_id="H1", trigger="A08"
    )
    for args, needle in (
        (str(mid), f"message {mid} is received: only a message that is error, dead, unrouted"),
        ("999999", "no message 999999"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "engine", "messages", "handle", args, "--note", "n"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1 and done.stdout == "", done.stderr
        assert "Traceback" not in done.stderr
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {needle}"), done.stderr
    assert store.handled_marks([mid]) == {}
    trail = [(e.action, e.message_id, e.outcome) for e in store.audit_entries(limit=2)]
    assert trail == [("mark-handled", None, "refused"), ("mark-handled", mid, "refused")]


def test_replay_of_a_state_goes_on_past_a_refusal(store: SqlMessageStore, cli) -> None:
    """``--state routed`` with a patient's two messages queued at a destination that is down:
    the first is refused (its copy would go after the second), the second is replayed all
    the same, and the command says so and exits with an error. Before, it stopped at the
    refusal and the second was never tried."""
    from tests.store.test_operator import _routed

    first = _routed(store, "ehr")
    second = _routed(store, "ehr", control="C2")
    cli("messages", "list")  # the fixture's environment, set
    result = runner.invoke(app, ["messages", "replay", "--state", "routed"])
    assert isinstance(result.exception, EngineError)  # engine/cli.py prints it, exit 1
    assert "1 of 2 messages in state routed not replayed" in str(result.exception)
    assert f"message {first} not replayed: " in result.stderr
    assert "ahead of later messages for the same patient" in result.stderr
    assert result.stdout.startswith(f"message {second} (routed) replayed as ")
    assert store.get(first).state == "routed"  # type: ignore[union-attr]
    assert store.get(second).state == "replayed"  # type: ignore[union-attr]


def test_replay_of_a_state_stops_at_a_database_failure_saying_how_far_it_got(
    store: SqlMessageStore, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database failing mid-way (not a refusal: the rest would fail too) stops the run
    with what was replayed before it, not a traceback."""
    from sqlalchemy.exc import OperationalError

    from tests.store.test_operator import _routed

    ids = [_routed(store, "ehr", patient=f"CLINIC|MRN{n}", control=f"C{n}") for n in (1, 2, 3)]
    real = SqlMessageStore.replay_message
    calls: list[int] = []

    def failing(self: SqlMessageStore, mid: int, *args: object, **kwargs: object) -> object:
        calls.append(mid)
        if len(calls) == 2:
            raise OperationalError("SELECT", {}, Exception("server closed the connection"))
        return real(self, mid, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(SqlMessageStore, "replay_message", failing)
    cli("messages", "list")  # the fixture's environment, set
    result = runner.invoke(app, ["messages", "replay", "--state", "routed"])
    assert isinstance(result.exception, EngineError)
    assert str(result.exception) == (
        f"stopped at message {ids[1]}: the database failed (OperationalError); 1 "
        "replayed before it, 0 refused; run the command again once the database answers"
    )
    assert calls == ids[:2]
    assert result.stdout.startswith(f"message {ids[0]} (routed) replayed as ")


def test_replay_of_a_state_takes_them_all_a_page_at_a_time_but_not_its_own_copies(
    store: SqlMessageStore, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages of 2 here: all three are replayed in one run (before, one run took the oldest
    10,000 and said nothing of the rest). A copy that joins the state while the run goes on
    (here each copy is put in it at once, as a copy that dies at once would be) is not
    replayed again by the same run."""
    from sqlalchemy import update

    import engine.cli_messages as cli_messages
    from engine.store.tables import messages
    from tests.store.test_operator import _routed

    monkeypatch.setattr(cli_messages, "REPLAY_PAGE", 2)
    ids = [_routed(store, "ehr", patient=f"CLINIC|MRN{n}", control=f"C{n}") for n in (1, 2, 3)]
    real = SqlMessageStore.replay_message
    calls: list[int] = []

    def copy_joins_the_state(self: SqlMessageStore, mid: int, *args: object, **kw: object):  # type: ignore[no-untyped-def]
        calls.append(mid)
        assert len(calls) <= len(ids), f"the run replayed its own copies: {calls}"
        done = real(self, mid, *args, **kw)  # type: ignore[arg-type]
        with self.db_engine.begin() as conn:
            conn.execute(
                update(messages).where(messages.c.id == done.message_id).values(state="routed")
            )
        return done

    monkeypatch.setattr(SqlMessageStore, "replay_message", copy_joins_the_state)
    code, out, err = cli("messages", "replay", "--state", "routed")
    assert code == 0, err
    assert [line.split()[1] for line in out.splitlines()] == [str(i) for i in ids]
