"""``engine messages`` and ``engine audit`` as an admin uses them, on a store the real flow filled:
replay and resend never multiply copies at a destination, the list says why, the payload view
is audited. On SQLite and PostgreSQL."""

from __future__ import annotations

import getpass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.adapters.memory import MemoryDestination
from engine.cli import app
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
    # before: the original stayed dead and each run replayed it again (4 copies after 3 runs)
    assert [p.control_id for p in raw.delivered] == ["C1"]  # the replay kept its control id
    assert [p.control_id for p in fhir.delivered] == ["C1", "C1"]  # the original, the replay
    states = sorted(line.state for line in store.search(MessageQuery()))
    assert states == ["delivered", "replayed"]


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
    assert f"{user} (cli)  resend message {mid} patient CLINIC|MRN1: ok" in lines[1]
    assert f"{user} (cli)  view-payload message {mid} patient CLINIC|MRN1: ok" in lines[2]
