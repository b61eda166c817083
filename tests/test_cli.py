"""The ``engine`` command line as a user runs it: a real subprocess, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from engine.hl7v2.codec import parse_message
from tests.conftest import FIXTURES

ENGINE = [sys.executable, "-m", "engine"]


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ENGINE, *args],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0]


def test_help_and_version() -> None:
    out = run("--help")
    assert out.returncode == 0
    for command in ("version", "validate", "convert", "serve"):
        assert command in out.stdout
    version = run("version")
    assert version.returncode == 0 and version.stdout.startswith("engine 0.")


def test_validate_a_good_file() -> None:
    out = run("validate", str(FIXTURES / "hl7" / "adt_a04.hl7"))
    assert out.returncode == 0, out.stderr
    assert "1 message(s), 1 valid, 0 invalid" in out.stdout


def test_validate_names_the_missing_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.hl7"
    bad.write_text(
        "MSH|^~\\&|A|B|C|D|20260101||ADT^A04^ADT_A01|X1|P|2.5.1\rEVN||20260101\rPID|1\rPV1|1|O\r"
    )
    out = run("validate", str(bad))
    assert out.returncode == 1
    assert "segment 3 (PID)" in out.stdout and "Patient Identifier List" in out.stdout
    assert "1 invalid" in out.stdout


def test_validate_unparseable_file_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.hl7"
    bad.write_text("MSH|\rPID|1\r")
    assert_one_line_error(run("validate", str(bad)), "MSH-2", "missing")


def test_missing_file_is_one_line() -> None:
    assert_one_line_error(run("convert", "/no/such/file.hl7"), "no such file")


def test_convert_unknown_format(tmp_path: Path) -> None:
    f = tmp_path / "x.txt"
    f.write_text("hello")
    assert_one_line_error(run("convert", str(f)), "not HL7v2")


def test_convert_one_message_gives_one_bundle() -> None:
    proc = run("convert", str(FIXTURES / "hl7" / "adt_a04.hl7"))
    assert proc.returncode == 0, proc.stderr
    bundle = json.loads(proc.stdout)
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
    patient = bundle["entry"][0]["resource"]
    assert patient["resourceType"] == "Patient"
    assert patient["name"][0]["family"] == "Okafor"


def test_convert_several_messages_gives_ndjson(tmp_path: Path) -> None:
    one = (FIXTURES / "hl7" / "adt_a04.hl7").read_bytes()
    siu = (FIXTURES / "hl7" / "siu_s12.hl7").read_bytes()
    f = tmp_path / "many.hl7"
    f.write_bytes(one + b"\n" + siu + b"\n" + one)
    proc = run("convert", str(f))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3
    kinds = [{e["resource"]["resourceType"] for e in json.loads(line)["entry"]} for line in lines]
    assert "Appointment" in kinds[1] and "Appointment" not in kinds[0]


def test_convert_unsupported_type_names_it(tmp_path: Path) -> None:
    f = tmp_path / "zzz.hl7"
    f.write_text("MSH|^~\\&|A|B|C|D|20260101||ZZZ^Q99|X|P|2.5.1\rPID|1\r")
    assert_one_line_error(run("convert", str(f)), "ZZZ^Q99")


def test_convert_bad_message_in_a_file_names_its_position(tmp_path: Path) -> None:
    good = (FIXTURES / "hl7" / "adt_a04.hl7").read_bytes()
    f = tmp_path / "mixed.hl7"
    f.write_bytes(good + b"MSH|^~\\&|A|B|C|D|20260101||ADT^A02|X|P|2.5.1\rPID|1\r")
    # issue 9: the good message is still converted; the bad one is reported and exit is 1
    proc = run("convert", str(f))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert [json.loads(line)["resourceType"] for line in proc.stdout.splitlines()] == ["Bundle"]
    line = good.replace(b"\r\n", b"\n").replace(b"\r", b"\n").count(b"\n") + 1  # after `good`
    assert f"{f}: message 2 (line {line}): " in proc.stderr and "ADT^A02" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("2 messages: 1 converted, 1 failed")


def test_convert_fhir_to_hl7v2() -> None:
    proc = run("convert", "--to", "hl7v2", str(FIXTURES / "fhir" / "adt_a28.json"))
    assert proc.returncode == 0, proc.stderr
    message = parse_message(proc.stdout)
    assert message.type.code == "ADT" and message.type.trigger == "A28"
    assert message.get("PID-3.1") == "MRN30007" and message.get("PID-5.1") == "O'Brien-Núñez"
    assert message.get("IN1-36") == "W998877665"


def test_convert_fhir_names_what_is_missing(tmp_path: Path) -> None:
    f = tmp_path / "appointment.json"
    f.write_text('{"resourceType": "Appointment", "status": "booked"}')
    assert_one_line_error(run("convert", "--to", "hl7v2", str(f)), "needs a Patient")
    g = tmp_path / "broken.json"
    g.write_text('{"resourceType": "Patient", "birthDate": "not a date"}')
    assert_one_line_error(run("convert", "--validate", str(g)), "birthDate")


def test_convert_271_to_fhir_and_request_to_270() -> None:
    proc = run("convert", "--validate", str(FIXTURES / "x12" / "271_subscriber_benefits.x12"))
    assert proc.returncode == 0, proc.stderr
    bundle = json.loads(proc.stdout)
    kinds = {e["resource"]["resourceType"] for e in bundle["entry"]}
    assert "CoverageEligibilityResponse" in kinds
    x270 = run(
        "convert", "--to", "x12", str(FIXTURES / "x12" / "coverage_eligibility_request.json")
    )
    assert x270.returncode == 0, x270.stderr
    assert x270.stdout.startswith("ISA*") and "ST*270*" in x270.stdout
    assert "NM1*IL*1*OCONNOR-NUNEZ" in x270.stdout  # transliterated to the X12 basic set


def test_convert_x12_that_is_not_a_271_is_one_line() -> None:
    # since issue 9 a 270 converts too: the error says so
    assert_one_line_error(
        run("convert", str(FIXTURES / "x12" / "ta1_rejected.x12")), "TA1", "only a 270 or 271"
    )


def test_mappings_check_and_test() -> None:
    check = run("mappings", "check")
    assert check.returncode == 0 and check.stdout.startswith("ok: ")
    golden = run("mappings", "test", "--golden", str(FIXTURES))
    assert golden.returncode == 0, golden.stdout + golden.stderr
    assert "golden pairs agree" in golden.stdout


def test_usage_error_exits_2() -> None:
    proc = run("no-such-command")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen[bytes], deadline_s: float = 30) -> bytes:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(
                f"engine exited early: {proc.stderr.read() if proc.stderr else ''!r}"
            )
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                return bytes(resp.read())
        except OSError:
            time.sleep(0.1)
    raise AssertionError("engine did not come up")


def test_serve_end_to_end_then_ctrl_c(tmp_path: Path) -> None:
    """What `make run` does: serve, take an MLLP message, answer health checks, stop on SIGINT."""
    mllp, http = _free_port(), _free_port()
    env = {
        **os.environ,
        "ENGINE_VAR_DIR": str(tmp_path / "var"),
        "ENGINE_MLLP_HOST": "127.0.0.1",
        "ENGINE_HTTP_HOST": "127.0.0.1",
    }
    proc = subprocess.Popen(
        [*ENGINE, "serve", "--mllp-port", str(mllp), "--http-port", str(http)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert b'"ok"' in _wait_http(f"http://127.0.0.1:{http}/healthz", proc)
        assert b'"ready"' in _wait_http(f"http://127.0.0.1:{http}/readyz", proc)
        msg = b"MSH|^~\\&|A|B|ENGINE|HUB|20260101||ADT^A04|E2E-1|P|2.5.1\rPID|1||M1\r"
        with socket.create_connection(("127.0.0.1", mllp), timeout=10) as sock:
            sock.sendall(b"\x0b" + msg + b"\x1c\r")
            buf = b""
            while not buf.endswith(b"\x1c\r"):
                chunk = sock.recv(4096)
                assert chunk, "connection closed before the ACK"
                buf += chunk
        assert parse_message(buf).get("MSA-2") == "E2E-1"
        # the same over HTTP, with a development token minted by `engine token`
        token = subprocess.run(
            [*ENGINE, "token", "--role", "integration"], env=env, capture_output=True, text=True
        ).stdout.strip()
        request = urllib.request.Request(
            f"http://127.0.0.1:{http}/hl7v2",
            data=msg.replace(b"E2E-1", b"E2E-2"),
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "x-application/hl7-v2+er7",
            },
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert parse_message(resp.read()).get("MSA-2") == "E2E-2"
        unauthenticated = urllib.request.Request(
            f"http://127.0.0.1:{http}/hl7v2", data=msg, headers={"Content-Type": "text/plain"}
        )
        try:
            urllib.request.urlopen(unauthenticated, timeout=10)
            raise AssertionError("an unauthenticated POST was accepted")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert b"engine stopped" in err and b"Traceback" not in err
    assert (tmp_path / "var" / "engine.db").exists()


def test_serve_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "ENGINE_VAR_DIR": str(tmp_path), "ENGINE_MLLP_HOST": "127.0.0.1"}
        proc = subprocess.run(
            [*ENGINE, "serve", "--mllp-port", str(port), "--http-port", str(_free_port())],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"cannot listen for MLLP on 127.0.0.1:{port}" in proc.stderr


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "engine"
    proc = subprocess.run([str(script), "version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("engine ")


def test_routes_check_built_ins() -> None:
    check = run("routes", "check")
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith("ok: ") and "(built-in) example.yaml" in check.stdout
    assert "routes" in check.stdout and "destinations" in check.stdout


def test_routes_check_names_a_misspelt_destination_key(tmp_path: Path) -> None:
    (tmp_path / "site.yaml").write_text(
        "destinations:\n  outbox:\n    type: file\n    directroy: /srv/outbox\n"
        "routes:\n  - name: to-outbox\n    match: {message: [ADT]}\n    mapping: none\n"
        "    destinations: [outbox]\n"
    )
    check = run("routes", "check", str(tmp_path))
    assert check.returncode == 1
    assert_one_line_error(check, "site.yaml, line 4", "destinations.outbox.directroy")


def test_routes_check_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    check = run("routes", "check", str(missing))
    assert check.returncode == 1
    assert_one_line_error(check, str(missing), "not found")


def test_routes_check_defaults_to_engine_routes_dir(tmp_path: Path) -> None:
    missing = tmp_path / "from-env"
    env = {**os.environ, "ENGINE_ROUTES_DIR": str(missing)}
    check = subprocess.run(
        [*ENGINE, "routes", "check"], capture_output=True, text=True, timeout=60, env=env
    )
    assert_one_line_error(check, str(missing), "not found")
