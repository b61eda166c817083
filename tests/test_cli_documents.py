"""``engine documents`` as an operator uses it: the documents waiting for their patient are listed
(and ``engine messages list --state needs-patient`` finds their messages), one is shown without
its bytes, matched to the right patient and delivered, or resent once the EHR knows the patient;
each action is in ``engine audit list``. On SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from engine.adapters.memory import MemoryDestination
from engine.cli import app
from engine.documents.model import DocumentEnvelope
from engine.store import SqlMessageStore
from tests.store.test_needs_patient import KnowsOnePatient
from tests.store.test_needs_patient_match import SHA, _dispatch, _document, _process
from tests.store.test_needs_patient_match import routes as routes  # noqa: F401  (the fixture)

runner = CliRunner()


@pytest.fixture
def cli(store: SqlMessageStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Run ``engine ...`` on the test's store; returns (exit code, stdout, error)."""
    monkeypatch.setenv("ENGINE_DATABASE_URL", store.db_engine.url.render_as_string(False))
    monkeypatch.setenv("ENGINE_HOME", str(tmp_path))
    monkeypatch.setenv("ENGINE_TIMEZONE", "UTC")
    monkeypatch.setenv("USER", "alice")

    def run(*args: str) -> tuple[int, str, str]:
        result = runner.invoke(app, list(args))
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            return 1, result.stdout, str(result.exception)
        return result.exit_code, result.stdout, result.stderr

    return run


def _waiting(store: SqlMessageStore, routes) -> tuple[int, KnowsOnePatient, MemoryDestination]:  # type: ignore[no-untyped-def]  # noqa: F811
    doc_id = _document(store)
    _process(store, "epic", "files")
    epic, files = KnowsOnePatient("epic", "MRN1"), MemoryDestination("files")
    _dispatch(store, routes, {"epic": epic, "files": files})
    return doc_id, epic, files


def test_list_show_match_deliver(store: SqlMessageStore, routes, cli) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    doc_id, epic, files = _waiting(store, routes)
    done = _document(store, mrn="MRN7", doc_type="consent")  # not processed: state received
    code, out, err = cli("documents", "list", "--state", "needs-patient")
    assert code == 0, err
    assert f"│ {doc_id} " in out and "referral" in out and "1.2 KiB" in out
    assert "needs-patient" in out and "epic" in out and "MRN404" not in out
    assert f"│ {done} " not in out
    code, out, err = cli("documents", "list", "--json")
    rows = [orjson.loads(line) for line in out.splitlines()]
    assert [r["id"] for r in rows] == [done, doc_id]
    assert rows[1]["waiting"] == ["epic"] and rows[1]["state"] == "needs-patient"
    code, out, err = cli("documents", "list", "--mrn", "CLINIC|MRN7", "--json")
    assert [orjson.loads(line)["id"] for line in out.splitlines()] == [done]
    code, out, err = cli("documents", "list", "--type", "consent", "--json")
    assert [orjson.loads(line)["id"] for line in out.splitlines()] == [done]
    # the messages list finds the same, by state
    code, out, err = cli("messages", "list", "--state", "needs-patient", "--json")
    [line] = [orjson.loads(x) for x in out.splitlines()]
    assert line["failing"] == ["epic (needs patient): Patient?identifier: no match"]
    # shown: the patient, the hash, the deliveries; never the bytes
    code, out, err = cli("documents", "show", str(doc_id))
    assert code == 0, err
    assert "patient: CLINIC|MRN404" in out and f"sha256: {SHA}" in out
    assert "→ epic: needs-patient after 1 attempt(s), last error: Patient?identifier" in out
    assert "→ files: delivered" in out
    # matched to the patient the EHR knows: sent again to epic only
    code, out, err = cli("documents", "match", str(doc_id), "--mrn", "MRN1")
    assert code == 0, err
    assert out.startswith(f"document {doc_id} matched: message ") and "waiting at epic" in out
    _process(store, "epic", "files")
    _dispatch(store, routes, {"epic": epic, "files": files})
    [sent] = epic.delivered
    assert DocumentEnvelope.from_bytes(sent.body).document.patient_mrn == "MRN1"
    to_files = [DocumentEnvelope.from_bytes(p.body).document for p in files.delivered]
    assert [d.patient_mrn for d in to_files if d.document_id == doc_id] == ["MRN404"]  # once
    code, out, err = cli("documents", "show", str(doc_id), "--json")
    shown = orjson.loads(out)
    assert (shown["patient_mrn"], shown["state"], shown["waiting"]) == ("MRN1", "delivered", [])
    code, out, err = cli("audit", "list")
    actions = [line.split()[3] for line in out.splitlines()]
    assert actions.count("match-document") == 1
    assert actions.count("view-document") == 2 and actions.count("list-documents") == 4


def test_resend_once_the_ehr_knows_the_patient(store: SqlMessageStore, routes, cli) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    doc_id, epic, files = _waiting(store, routes)
    epic.mrn = b"MRN404"
    code, out, err = cli("documents", "resend", str(doc_id))
    assert code == 0, err
    assert out.startswith(f"document {doc_id}: epic queued again (delivery ")
    _dispatch(store, routes, {"epic": epic, "files": files})
    code, out, err = cli("documents", "list", "--json")
    assert orjson.loads(out)["state"] == "delivered"
    code, out, err = cli("documents", "resend", str(doc_id))
    assert code == 0 and "nothing resent" in out


def test_refusals_name_the_problem(store: SqlMessageStore, routes, cli) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    assert cli("documents", "show", "999") == (1, "", "no document 999")
    assert cli("documents", "match", "999", "--mrn", "MRN1")[2] == "no document 999"
    assert cli("documents", "resend", "999")[2] == "no document 999"
    code, _, err = cli("documents", "list", "--state", "lost")
    assert code == 1 and "unknown state 'lost'" in err
    doc_id = _document(store)
    code, _, err = cli("documents", "match", str(doc_id), "--mrn", "MRN1")
    assert code == 1 and "has not been processed yet" in err
    code, _, err = cli("documents", "match", str(doc_id), "--mrn", "A|B")
    assert code == 1 and "printable characters" in err
