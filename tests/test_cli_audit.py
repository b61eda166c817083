"""``engine audit list | verify | export`` as an admin uses them on the engine's own store, and
the CLI's message list and show recorded in the trail. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import getpass
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from sqlalchemy import delete, select, update
from typer.testing import CliRunner

from engine.cli import app
from engine.store import SqlMessageStore
from engine.store.tables import audit_log
from tests.store.test_operator import _routed

runner = CliRunner()


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


def _actions(store: SqlMessageStore) -> list[tuple[str, str | None, str | None]]:
    with store.db_engine.connect() as conn:
        return [
            (r.action, r.patient_key, r.detail)
            for r in conn.execute(
                select(audit_log.c.action, audit_log.c.patient_key, audit_log.c.detail).order_by(
                    audit_log.c.seq
                )
            )
        ]


def _ids(store: SqlMessageStore) -> list[tuple[int, int]]:
    with store.db_engine.connect() as conn:
        return [
            (r.id, r.seq)
            for r in conn.execute(select(audit_log.c.id, audit_log.c.seq).order_by(audit_log.c.seq))
        ]


def test_messages_list_and_show_are_recorded(store: SqlMessageStore, cli) -> None:  # type: ignore[no-untyped-def]
    mid = _routed(store, "a")
    code, _, err = cli("messages", "list", "--mrn", "CLINIC|MRN1", "--state", "routed")
    assert code == 0, err
    code, _, err = cli("messages", "show", str(mid))
    assert code == 0, err
    code, out, _ = cli("messages", "show", str(mid))
    assert "  history: " in out and f"{getpass.getuser()} (cli) view-message: ok" in out
    [search, show, _] = _actions(store)
    assert search[0] == "search-messages" and search[1] == "CLINIC|MRN1"
    assert search[2] == "1 shown; state routed, one patient"
    assert show == ("view-message", "CLINIC|MRN1", None)


def test_verify_passes_then_finds_a_changed_record(store: SqlMessageStore, cli) -> None:  # type: ignore[no-untyped-def]
    mid = _routed(store, "a")
    for _ in range(3):
        cli("messages", "show", str(mid))
    code, out, err = cli("audit", "verify")
    assert code == 0, err
    assert "audit trail intact: 3 records verified" in out
    rid, seq = _ids(store)[1]
    with store.db_engine.begin() as conn:
        conn.execute(update(audit_log).where(audit_log.c.id == rid).values(outcome="refused"))
    code, out, err = cli("audit", "verify")
    assert code == 1
    assert f"record id {rid} (seq {seq})" in err and "hash mismatch" in err


def test_verify_finds_a_deleted_middle_record(store: SqlMessageStore, cli) -> None:  # type: ignore[no-untyped-def]
    mid = _routed(store, "a")
    for _ in range(4):
        cli("messages", "show", str(mid))
    rid, seq = _ids(store)[1]
    with store.db_engine.begin() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.id == rid))
    code, _, err = cli("audit", "verify")
    assert code == 1 and f"seq {seq}..{seq} missing" in err and "deleted" in err


def test_verify_finds_the_deleted_last_record(store: SqlMessageStore, cli) -> None:  # type: ignore[no-untyped-def]
    mid = _routed(store, "a")
    for _ in range(3):
        cli("messages", "show", str(mid))
    rid, seq = _ids(store)[-1]
    with store.db_engine.begin() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.id == rid))
    code, _, err = cli("audit", "verify")
    assert code == 1 and "truncated" in err and f"head is seq {seq}" in err


def test_verify_is_itself_recorded(store: SqlMessageStore, cli) -> None:  # type: ignore[no-untyped-def]
    cli("audit", "verify")
    [(action, _, detail)] = _actions(store)
    assert action == "view-audit" and detail == "verify: intact, 0 records"


def test_list_filters_pages_and_is_recorded(store: SqlMessageStore, cli) -> None:  # type: ignore[no-untyped-def]
    one = _routed(store, "a", patient="CLINIC|MRN1", control="C1")
    two = _routed(store, "a", patient="OTHER|MRN2", control="C2")
    for mid in (one, two, one):
        cli("messages", "show", str(mid))
    user = getpass.getuser()
    code, out, err = cli("audit", "list", "--mrn", "MRN1")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2 and all("patient CLINIC|MRN1" in line for line in lines)
    assert f"{user} (cli)  view-message message {one}" in lines[0] and "[seq 3]" in lines[0]
    code, out, err = cli("audit", "list", "--limit", "2")
    assert "[seq 4]" in out.splitlines()[0]  # the first list's own record, view-audit
    assert "more: --before 3" in err
    code, out, _ = cli("audit", "list", "--before", "3", "--action", "view-message")
    assert [line.rsplit("[seq ", 1)[1] for line in out.splitlines()] == ["2]", "1]"]
    code, out, _ = cli("audit", "list", "--actor", "nobody-else")
    assert out == ""
    code, _, err = cli("audit", "list", "--action", "peek")
    assert code != 0 and "unknown action 'peek'" in err
    views = [a for a in _actions(store) if a[0] == "view-audit"]
    # the searched patient is the record's key (review13 L5); the detail never names the MRN
    assert views[0][1] == "MRN1" and views[0][2] == "2 shown; one patient"


def test_list_json_carries_the_chain(store: SqlMessageStore, cli) -> None:  # type: ignore[no-untyped-def]
    cli("messages", "show", str(_routed(store, "a")))
    code, out, _ = cli("audit", "list", "--json")
    [line] = [json.loads(x) for x in out.splitlines()]
    assert line["seq"] == 1 and len(line["hash"]) == 64 and line["prev_hash"] == "0" * 64


def test_export_writes_valid_balp_audit_events(
    store: SqlMessageStore,
    cli,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    mid = _routed(store, "a")
    cli("messages", "list", "--mrn", "CLINIC|MRN1")
    cli("messages", "show", str(mid), "--raw")
    store.record_audit(
        action="login-failed", actor="eve", source="console", message_id=None, outcome="refused",
        detail="wrong password", peer="203.0.113.9:5555",
    )  # fmt: skip
    out = tmp_path / "trail.ndjson"
    code, _, err = cli("audit", "export", "--since", "2000-01-01", "--out", str(out))
    assert code == 0, err
    assert "4 AuditEvents written to" in err
    assert out.stat().st_mode & 0o777 == 0o600
    events = [AuditEvent.model_validate_json(line) for line in out.read_text().splitlines()]
    by_action = {e.entity[-1].name: e for e in events}
    assert set(by_action) == {"search-messages", "view-payload", "login-failed", "export-audit"}
    read = by_action["view-payload"]
    assert read.meta.profile[0].endswith("IHE.BasicAudit.PatientRead")
    assert (read.type.code, read.subtype[0].code, read.action, read.outcome) == (
        "rest",
        "read",
        "R",
        "0",
    )
    [patient] = [e for e in read.entity if e.role and e.role.code == "1"]
    assert patient.what.identifier.system == "urn:engine:identifier:CLINIC"
    assert patient.what.identifier.value == "MRN1"
    user = next(a for a in read.agent if a.requestor)
    assert user.who.identifier.value == getpass.getuser()
    query = by_action["search-messages"]
    assert query.meta.profile[0].endswith("IHE.BasicAudit.PatientQuery")
    assert query.subtype[0].code == "search" and query.action == "E"
    failed = by_action["login-failed"]
    assert (failed.type.code, failed.subtype[0].code, failed.outcome) == ("110114", "110122", "4")
    assert failed.meta is None and failed.outcomeDesc == "wrong password"
    client = next(a for a in failed.agent if a.network is not None and a.network.type == "2")
    assert client.network.address == "203.0.113.9"
    assert by_action["export-audit"].type.code == "110101"
    assert _actions(store)[-1][0] == "export-audit"


def test_export_since_leaves_older_records_out(store: SqlMessageStore, cli) -> None:  # type: ignore[no-untyped-def]
    cli("messages", "show", str(_routed(store, "a")))
    code, out, err = cli("audit", "export", "--since", "2999-01-01")
    assert code == 0 and out == "" and "0 AuditEvents" in err
    code, _, err = cli("audit", "export", "--since", "soon")
    assert code != 0 and "'soon' is not a date" in err


def test_the_eligibility_worklist_is_recorded(store: SqlMessageStore, cli) -> None:  # type: ignore[no-untyped-def]
    code, _, err = cli("eligibility", "list", "--date", "2026-11-30")
    assert code == 0, err
    assert _actions(store) == [("view-worklist", None, "2026-11-30: 0 appointments")]


def test_a_view_of_two_patients_is_listed_and_exported_under_each(
    store: SqlMessageStore,
    cli,  # type: ignore[no-untyped-def]
) -> None:
    """A view that showed patients A and B (a worklist, a document list, a search not by MRN)
    is one record per patient (IHE BALP: one AuditEvent per patient): ``engine audit list
    --mrn`` finds it under each, the export has an AuditEvent naming each, the chain verifies."""
    store.record_audit(
        action="view-worklist",
        actor="frida",
        source="console",
        message_id=None,
        outcome="ok",
        detail="day 2026-11-30: 3 appointments shown",
        patients=["DEMO1001", None, "DEMO1002", "DEMO1001"],  # a row without an MRN, a repeat
    )
    for mrn in ("DEMO1001", "DEMO1002"):
        code, out, err = cli("audit", "list", "--mrn", mrn, "--action", "view-worklist")
        assert code == 0, err
        [line] = out.splitlines()
        assert f"frida (console)  view-worklist message - patient {mrn}: ok" in line
    code, out, err = cli("audit", "verify")
    assert code == 0, err
    code, out, err = cli("audit", "export", "--since", "2000-01-01")
    assert code == 0, err
    events = [AuditEvent.model_validate(json.loads(line)) for line in out.splitlines()]
    views = [e for e in events if any(c.code == "search" for c in e.subtype or [])]
    patients = [
        entity.what.identifier.value
        for e in views
        for entity in e.entity or []
        if entity.what is not None and entity.what.type == "Patient"
    ]
    assert patients == ["DEMO1001", "DEMO1002"]
    assert len({e.recorded for e in views}) == 1


def test_cli_lists_of_several_patients_are_recorded_once_per_patient(
    store: SqlMessageStore,
    cli,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    """``engine messages list`` not asked by MRN, and ``engine eligibility list``, record their
    view once per patient shown, as the console and the API do."""
    from tests.console.frontdesk_support import index_demo
    from tests.jobs.conftest import MONDAY

    _routed(store, "a", patient="CLINIC|MRN1", control="C1")
    _routed(store, "a", patient="CLINIC|MRN2", control="C2")
    code, _, err = cli("messages", "list", "--state", "routed")
    assert code == 0, err
    searches = [a for a in _actions(store) if a[0] == "search-messages"]
    assert sorted(p or "" for _, p, _ in searches) == ["CLINIC|MRN1", "CLINIC|MRN2"]
    assert {d for _, _, d in searches} == {"2 shown; state routed"}

    # the demo's Monday appointments, checked (the worklist lists checked appointments)
    asyncio.run(index_demo(store, tmp_path).check_upcoming(start=MONDAY, days=1))
    code, out, err = cli("eligibility", "list", "--date", MONDAY.isoformat(), "--json")
    assert code == 0, err
    listed = {json.loads(line)["mrn"] for line in out.splitlines()}
    views = [a for a in _actions(store) if a[0] == "view-worklist"]
    assert len(listed) >= 2 and {p for _, p, _ in views} == listed
    code, _, err = cli("audit", "verify")
    assert code == 0, err


@pytest.mark.parametrize("today", [27, 29], ids=["friday", "sunday"])
def test_the_eligibility_worklist_defaults_to_the_next_business_day(
    store: SqlMessageStore,
    cli,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
    today: int,
) -> None:
    """After a Friday or a Sunday: Monday, the day the eligibility job checks and the console's
    worklist opens on, not the weekend day after today."""
    from engine.console import days

    monkeypatch.setattr(days, "_now", lambda: datetime(2026, 11, today, 18, tzinfo=UTC))
    code, _, err = cli("eligibility", "list")
    assert code == 0, err
    assert _actions(store) == [("view-worklist", None, "2026-11-30: 0 appointments")]


def test_verify_prints_the_anchor_and_finds_it_moved_by_hand(store: SqlMessageStore, cli) -> None:  # type: ignore[no-untyped-def]
    from tests.store.test_audit_anchor import _move_anchor

    mid = _routed(store, "a")
    for _ in range(5):
        cli("messages", "show", str(mid))
    code, out, err = cli("audit", "verify")
    assert code == 0, err
    assert "anchored at seq 0" in out
    _move_anchor(store, 3)  # review13 M4: the oldest deleted, the anchor moved to match
    code, _, err = cli("audit", "verify")
    assert code == 1
    assert "the chain's anchor" in err and "anchored at seq 3" in err


def test_the_audit_key_never_appears_in_the_cli_output(
    store: SqlMessageStore,
    cli,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    import base64

    mid = _routed(store, "a")
    outputs = [cli("messages", "show", str(mid))]
    secret = (tmp_path / "var" / "audit-key").read_bytes()  # made by the CLI's first command
    assert len(secret) == 32
    outputs += [
        cli("audit", "list"),
        cli("audit", "list", "--json"),
        cli("audit", "verify"),
        cli("audit", "export", "--since", "2000-01-01"),
    ]
    assert all(code == 0 for code, _, _ in outputs), outputs
    shown = "".join(out + err for _, out, err in outputs)
    assert "HMAC-SHA256 with key id" in shown and '"valueString": "HMAC-SHA256"' in shown
    for form in (secret.hex(), secret.hex().upper(), base64.b64encode(secret).decode()):
        assert form not in shown
    assert secret.decode("latin-1") not in shown


def test_verify_with_another_nodes_key_names_both_key_ids(
    store: SqlMessageStore,
    cli,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    from engine.audit.key import key_id_of

    cli("messages", "show", str(_routed(store, "a")))
    path = tmp_path / "var" / "audit-key"
    mine = key_id_of(path.read_bytes())
    other = tmp_path / "other-key"
    other.write_bytes(bytes(range(32)))
    other.chmod(0o600)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ENGINE_AUDIT_KEY_FILE", str(other))
        code, _, err = cli("audit", "verify")
    assert code == 1
    assert (
        f"records from seq 1 were made with key id {mine}, this node's key is "
        f"{key_id_of(bytes(range(32)))}" in err
    )
    assert "ENGINE_AUDIT_KEY_FILE" in err and bytes(range(32)).hex() not in err


def test_an_unfit_key_file_is_one_line_naming_it(
    store: SqlMessageStore, cli, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "var" / "audit-key"
    path.parent.mkdir()
    path.write_bytes(b"short\n")
    path.chmod(0o600)
    code, out, err = cli("audit", "verify")
    assert code != 0 and out == ""
    assert f"ENGINE_AUDIT_KEY_FILE: {path} holds 6 bytes" in err and "short" not in err
    path.chmod(0o644)
    code, _, err = cli("audit", "list")
    assert code != 0 and f"{path} is open to group or others (mode 0644)" in err
