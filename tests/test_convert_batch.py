"""``engine convert`` and ``engine validate`` on files of many messages, some of them bad.

Every good message is converted (in file order) and every bad one reported on stderr with its
number, its line and the reason; warnings are reported the same way; the summary and the exit code
tell a script whether anything was lost. The serial and the fork-pool paths must say the same.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.hl7v2.codec import Message
from engine.mappings import Mappings
from tests.conftest import FIXTURES

ENGINE = [sys.executable, "-m", "engine"]
SUMMARY_RE = re.compile(r"^(\d+) messages: (\d+) converted, (\d+) failed, (\d+) warnings?$")


def adt(i: int) -> bytes:
    """A small synthetic ADT^A04 whose Patient carries MRN{i}, to check the output order."""
    return f"MSH|^~\\&|A|B|C|D|20260101||ADT^A04|C{i}|P|2.5.1\rPID|1||MRN{i}||Doe^Jane\r".encode()


ORU = b"MSH|^~\\&|A|B|C|D|20260101||ORU^R01|X|P|2.5.1\rPID|1||MRNX\r"
BROKEN_MSH = b"MSH|\rPID|1\r"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ENGINE, *args], capture_output=True, text=True, timeout=120)


def mrns(stdout: str) -> list[str]:
    """The MRN of the Patient of each NDJSON Bundle, in output order."""
    out = []
    for line in stdout.splitlines():
        bundle = json.loads(line)
        patient = bundle["entry"][0]["resource"]
        assert patient["resourceType"] == "Patient"
        out.append(patient["identifier"][0]["value"])
    return out


def errors(stderr: str) -> list[str]:
    """The per-message error lines (warnings and the summary left out)."""
    return [
        line for line in stderr.splitlines() if ": message " in line and ": warning: " not in line
    ]


def summary(stderr: str) -> tuple[int, int, int, int]:
    """(messages, converted, failed, warnings) from the summary, the last line of stderr."""
    last = stderr.strip().splitlines()[-1]
    m = SUMMARY_RE.match(re.sub(r"(?<=\d),(?=\d)", "", last))  # 1,000 → 1000
    assert m, f"no summary at the end of stderr: {last!r}"
    total, converted, failed, warnings = map(int, m.groups())
    assert total == converted + failed
    return total, converted, failed, warnings


def test_bad_messages_do_not_stop_the_good_ones(tmp_path: Path) -> None:
    f = tmp_path / "mixed.hl7"
    # two lines each: message 1 at line 1, the ORU at 3, message 3 at 5 with a stray line (7)
    # and a blank one after it, the broken MSH at 9, message 5 at 11
    f.write_bytes(adt(1) + ORU + adt(3) + b"this is not a segment\n\n" + BROKEN_MSH + adt(5))
    proc = run("convert", str(f))
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert mrns(proc.stdout) == ["MRN1", "MRN5"]
    assert errors(proc.stderr) == [
        f"{f}: message 2 (line 3): MSH-9: unsupported message type ORU^R01",
        f"{f}: message 3 (line 5): segment 3 (line 7): 'thi' is not a segment ID followed by "
        "the field separator '|'",
        f"{f}: message 4 (line 9): MSH-2: encoding characters missing",
    ]
    assert summary(proc.stderr)[:3] == (5, 2, 3)


def test_all_good_exits_0_with_a_summary(tmp_path: Path) -> None:
    f = tmp_path / "good.hl7"
    f.write_bytes(b"\r\n".join(adt(i) for i in range(1, 4)))
    proc = run("convert", str(f))
    assert proc.returncode == 0, proc.stderr
    assert mrns(proc.stdout) == ["MRN1", "MRN2", "MRN3"]
    assert errors(proc.stderr) == []
    assert summary(proc.stderr)[:3] == (3, 3, 0)


def test_quiet_drops_the_summary_never_the_errors(tmp_path: Path) -> None:
    f = tmp_path / "mixed.hl7"
    f.write_bytes(adt(1) + ORU + adt(3))
    proc = run("convert", "-q", str(f))
    assert proc.returncode == 1
    assert mrns(proc.stdout) == ["MRN1", "MRN3"]
    assert errors(proc.stderr) == [
        f"{f}: message 2 (line 3): MSH-9: unsupported message type ORU^R01"
    ]
    assert "messages:" not in proc.stderr


def test_garbage_before_the_first_message_of_a_batch_is_reported(tmp_path: Path) -> None:
    f = tmp_path / "batch.hl7"
    f.write_bytes(
        b"FHS|^~\\&|A\rBHS|^~\\&|A\rnot HL7 at all\r" + adt(1) + adt(2) + b"BTS|2\rFTS|1\r"
    )
    proc = run("convert", str(f))
    assert proc.returncode == 1
    assert mrns(proc.stdout) == ["MRN1", "MRN2"]
    assert errors(proc.stderr) == [
        f"{f}: message 1 (line 3): segment 1 (line 3): no MSH segment: a message must start "
        "with MSH"
    ]
    assert summary(proc.stderr)[:3] == (3, 2, 1)


def test_parallel_path_reports_the_same_as_the_serial_one(tmp_path: Path) -> None:
    """600 messages in spans of 250 over two worker processes, failures in the first and last."""
    bad = {4: ORU, 300: BROKEN_MSH, 598: ORU}
    f = tmp_path / "many.hl7"
    f.write_bytes(b"".join(bad.get(i, adt(i)) for i in range(600)))
    serial = run("convert", "--jobs", "1", str(f))
    parallel = run("convert", "--jobs", "2", str(f))
    assert parallel.returncode == serial.returncode == 1
    assert parallel.stdout == serial.stdout
    assert parallel.stderr == serial.stderr
    assert mrns(parallel.stdout) == [f"MRN{i}" for i in range(600) if i not in bad]
    assert [e.split(": ", 2)[1] for e in errors(parallel.stderr)] == [
        "message 5 (line 9)",
        "message 301 (line 601)",
        "message 599 (line 1197)",
    ]
    assert summary(parallel.stderr)[:3] == (600, 597, 3)


def test_a_single_message_keeps_its_one_line_error(tmp_path: Path) -> None:
    f = tmp_path / "one.hl7"
    f.write_bytes(ORU)
    proc = run("convert", str(f))
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"error: {f}: MSH-9: unsupported message type ORU^R01"
    ]


# -- warnings: what a message carries that no map takes ------------------------------------------


@pytest.fixture
def warn_zpi(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mappings that warn once per message about a (made-up) ZPI segment, whatever the maps
    themselves report: the CLI's handling is under test, not the maps'."""
    to_fhir = Mappings.to_fhir
    to_hl7 = Mappings.to_hl7

    def fake_to_fhir(
        self: Mappings, message: Message, warnings: list[str] | None = None
    ) -> dict[str, Any]:
        bundle = to_fhir(self, message, warnings)
        if warnings is not None:
            warnings.append(f"segment ZPI: not mapped (test {message.control_id})")
        return bundle

    def fake_to_hl7(self: Mappings, *args: Any, **kwargs: Any) -> Message:
        message = to_hl7(self, *args, **kwargs)
        kwargs["warnings"].append("Patient.photo: not carried by any segment (test)")
        return message

    monkeypatch.setattr(Mappings, "to_fhir", fake_to_fhir)
    monkeypatch.setattr(Mappings, "to_hl7", fake_to_hl7)


def _ours(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "(test" in line]


@pytest.mark.parametrize("jobs", ["1", "2"])
@pytest.mark.usefixtures("warn_zpi")
def test_warnings_are_reported_with_their_message(tmp_path: Path, jobs: str) -> None:
    bad = {1: ORU, 260: ORU}
    f = tmp_path / "many.hl7"
    f.write_bytes(b"".join(bad.get(i, adt(i)) for i in range(520)))
    result = CliRunner().invoke(app, ["convert", "--jobs", jobs, str(f)])
    assert result.exit_code == 1, result.stderr
    ours = _ours(result.stderr)
    # one per converted message, none for a failed one, in file order, each with its line
    assert len(ours) == 518
    assert ours[0] == f"{f}: message 1 (line 1): warning: segment ZPI: not mapped (test C0)"
    assert ours[1] == f"{f}: message 3 (line 5): warning: segment ZPI: not mapped (test C2)"
    assert ours[-1] == f"{f}: message 520 (line 1039): warning: segment ZPI: not mapped (test C519)"
    total, converted, failed, warned = summary(result.stderr)
    assert (total, converted, failed) == (520, 518, 2)
    assert warned == len([line for line in result.stderr.splitlines() if ": warning: " in line])
    assert warned >= 518


@pytest.mark.usefixtures("warn_zpi")
def test_warnings_keep_exit_0_and_show_even_when_quiet(tmp_path: Path) -> None:
    one = tmp_path / "one.hl7"
    one.write_bytes(adt(7))
    result = CliRunner().invoke(app, ["convert", "-q", str(one)])
    assert result.exit_code == 0, result.stderr
    assert _ours(result.stderr) == [f"{one}: warning: segment ZPI: not mapped (test C7)"]
    assert json.loads(result.stdout)["resourceType"] == "Bundle"
    fhir = FIXTURES / "fhir" / "adt_a28.json"
    back = CliRunner().invoke(app, ["convert", "--to", "hl7v2", str(fhir)])
    assert back.exit_code == 0, back.stderr
    assert back.stdout.startswith("MSH|")
    assert _ours(back.stderr) == [
        f"{fhir}: warning: Patient.photo: not carried by any segment (test)"
    ]


# -- the progress bar ----------------------------------------------------------------------------


def _with_stderr_on_a_terminal(tmp_path: Path, *args: str) -> tuple[int, str, bytes]:
    """Run the engine with stderr on a pseudo-terminal and stdout to a file."""
    master, slave = pty.openpty()
    out_path = tmp_path / "out.ndjson"
    with out_path.open("wb") as out:
        proc = subprocess.Popen(
            [*ENGINE, *args], stdout=out, stderr=slave, env={**os.environ, "TERM": "xterm"}
        )
        os.close(slave)
        seen = b""
        deadline = time.monotonic() + 120
        # poll, not select: select() refuses a descriptor numbered 1024 or more, which a test
        # late in a long session can get (a CI run failed on exactly that)
        poller = select.poll()
        poller.register(master, select.POLLIN)
        while True:
            if not poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
                proc.kill()
                raise AssertionError(f"engine {' '.join(args)} still running after 120 s")
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        os.close(master)
        code = proc.wait(timeout=120)
    return code, out_path.read_text(), seen


def test_progress_bar_only_for_long_runs_at_a_terminal_and_never_on_stdout(
    tmp_path: Path,
) -> None:
    long = tmp_path / "long.hl7"
    long.write_bytes(b"".join(adt(i) for i in range(250)))
    code, stdout, terminal = _with_stderr_on_a_terminal(tmp_path, "convert", str(long))
    assert code == 0
    assert b"converting" in terminal and b"250 messages: 250 converted" in terminal
    assert mrns(stdout) == [f"MRN{i}" for i in range(250)]  # nothing of the bar in the data
    code, stdout, terminal = _with_stderr_on_a_terminal(tmp_path, "convert", "-q", str(long))
    assert code == 0 and len(mrns(stdout)) == 250
    assert b"converting" not in terminal and b"messages:" not in terminal
    short = tmp_path / "short.hl7"
    short.write_bytes(b"".join(adt(i) for i in range(20)))
    code, stdout, terminal = _with_stderr_on_a_terminal(tmp_path, "convert", str(short))
    assert code == 0 and len(mrns(stdout)) == 20
    assert b"converting" not in terminal and b"20 messages: 20 converted" in terminal


# -- engine validate -----------------------------------------------------------------------------


def test_validate_reports_every_bad_message_and_goes_on(tmp_path: Path) -> None:
    good = (FIXTURES / "hl7" / "adt_a03.hl7").read_bytes().rstrip(b"\r\n")  # no issue at all
    no_pid3 = (
        b"MSH|^~\\&|A|B|C|D|20260101||ADT^A04^ADT_A01|X1|P|2.5.1\rEVN||20260101\rPID|1\rPV1|1|O"
    )
    f = tmp_path / "mixed.hl7"
    f.write_bytes(b"\r".join([no_pid3, BROKEN_MSH.rstrip(b"\r"), good]) + b"\r")
    proc = run("validate", str(f))
    assert proc.returncode == 1, proc.stderr
    out = proc.stdout.splitlines()
    first = [line for line in out if line.startswith(f"{f}: message 1 (line 1, ADT^A04")]
    assert any("segment 3 (PID)" in line and "Patient Identifier List" in line for line in first)
    assert f"{f}: message 2 (line 5): MSH-2: encoding characters missing (error 100)" in out
    valid = f"{f}: message 3 (line 7, ADT^A03, MSH-10 'ADT-A03-0001'): valid"
    assert valid in out
    assert out[-1] == "3 message(s), 1 valid, 2 invalid"
    quiet = run("validate", "--quiet", str(f))
    assert quiet.returncode == 1
    assert valid not in quiet.stdout.splitlines()
    assert "message(s)" not in quiet.stdout
    assert f"{f}: message 2 (line 5): MSH-2: encoding characters missing (error 100)" in (
        quiet.stdout.splitlines()
    )


# -- X12 ----------------------------------------------------------------------------------------


def test_x12_270_converts_with_its_warnings_and_a_999_is_refused_by_name() -> None:
    x270 = FIXTURES / "x12" / "270_subscriber_and_dependent.x12"
    proc = run("convert", str(x270))
    assert proc.returncode == 0, proc.stderr
    kinds = {e["resource"]["resourceType"] for e in json.loads(proc.stdout)["entry"]}
    assert "CoverageEligibilityRequest" in kinds
    warnings = proc.stderr.splitlines()
    assert warnings and all(line.startswith(f"{x270}: warning: segment ") for line in warnings)
    x999 = FIXTURES / "x12" / "999_accepted.x12"
    refused = run("convert", str(x999))
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.splitlines() == [
        f"error: {x999}: segment 3 (ST): X12 999: only a 270 or 271 converts to FHIR"
    ]


# -- help ----------------------------------------------------------------------------------------


def test_to_help_lists_every_target_and_an_unknown_one_names_them(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["convert", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.stdout.replace("│", " ").split())
    for needle in (
        "--to",
        "fhir, hl7v2 or x12",
        "HL7v2 (one message, a batch, or many) → fhir",
        "X12 270 or 271 → fhir",
        "FHIR → hl7v2",
        "or x12 (CoverageEligibilityRequest → 270)",
        "errors and warnings are always shown",
    ):
        assert needle in text, needle
    f = tmp_path / "one.hl7"
    f.write_bytes(adt(1))
    proc = run("convert", "--to", "xml", str(f))
    assert proc.returncode == 1
    assert "choose fhir, hl7v2 or x12" in proc.stderr


def test_validate_shows_progress_at_a_terminal_and_keeps_stdout_clean(tmp_path: Path) -> None:
    f = tmp_path / "long.hl7"
    f.write_bytes(
        b"".join(
            f"MSH|^~\\&|A|B|C|D|20260101||ADT^A04^ADT_A01|C{i}|P|2.5.1\rEVN||20260101\r"
            f"PID|1||MRN{i}||Doe^Jane\rPV1|1|O\r".encode()
            for i in range(200)
        )
    )
    code, stdout, terminal = _with_stderr_on_a_terminal(tmp_path, "validate", str(f))
    assert code == 0
    assert b"validating" in terminal
    lines = stdout.splitlines()
    assert len(lines) == 201 and lines[-1] == "200 message(s), 200 valid, 0 invalid"
    assert lines[199] == f"{f}: message 200 (line 797, ADT^A04, MSH-10 'C199'): valid"


def test_a_bug_on_one_message_is_reported_by_class_and_the_rest_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import engine.hl7v2.validate as checker

    to_fhir = Mappings.to_fhir
    check = checker.validate

    def fragile_to_fhir(
        self: Mappings, message: Message, warnings: list[str] | None = None
    ) -> dict[str, Any]:
        if message.control_id == "C2":
            raise KeyError("MRN2")  # a value: must not reach the report
        return to_fhir(self, message, warnings)

    def fragile_check(message: Message, **kwargs: Any) -> Any:
        if message.control_id == "C2":
            raise KeyError("MRN2")
        return check(message, **kwargs)

    monkeypatch.setattr(Mappings, "to_fhir", fragile_to_fhir)
    monkeypatch.setattr(checker, "validate", fragile_check)
    f = tmp_path / "three.hl7"
    f.write_bytes(adt(1) + adt(2) + adt(3))
    internal = "internal error (KeyError); set ENGINE_DEBUG=1 for details"
    result = CliRunner().invoke(app, ["convert", str(f)])
    assert result.exit_code == 1
    assert mrns(result.stdout) == ["MRN1", "MRN3"]
    assert errors(result.stderr) == [f"{f}: message 2 (line 3): {internal}"]
    assert "MRN2" not in result.stderr
    checked = CliRunner().invoke(app, ["validate", str(f)])
    assert checked.exit_code == 1
    assert f"{f}: message 2 (line 3): {internal}" in checked.stdout.splitlines()
    out = checked.stdout.splitlines()
    assert any(line.startswith(f"{f}: message 3 (line 5, ADT^A04, MSH-10 'C3')") for line in out)
    assert out[-1] == "3 message(s), 0 valid, 3 invalid"


def test_a_finished_parallel_conversion_stops_its_workers_without_a_signal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Done, the pool is closed and joined, not terminated: ``terminate`` takes the task
    queue's lock and relies on SIGTERM to end a worker waiting for it, which a handler the
    process inherited can swallow (the suite hung so once)."""
    import multiprocessing.pool

    def no_terminate(self: object) -> None:
        raise AssertionError("a finished conversion terminated its pool")

    monkeypatch.setattr(multiprocessing.pool.Pool, "terminate", no_terminate)
    f = tmp_path / "many.hl7"
    f.write_bytes(b"".join(adt(i) for i in range(600)))
    result = CliRunner().invoke(app, ["convert", "--jobs", "2", str(f)])
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.splitlines()) == 600


_IGNORING_SIGTERM = """
import signal
from engine.convert import _fork_pool
signal.signal(signal.SIGTERM, lambda *_: None)  # as an event loop's handler does: only noted
with _fork_pool(2) as pool:
    print(pool.apply(signal.getsignal, (signal.SIGTERM,)) == signal.SIG_DFL)
    print(pool.apply(signal.getsignal, (signal.SIGINT,)) == signal.SIG_IGN)
"""


def test_the_pools_workers_die_on_sigterm_whatever_handler_their_parent_had() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _IGNORING_SIGTERM],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout.split() == ["True", "True"]
