"""Start-up (issue 11): every error names the setting or the file in one line, before any port
opens or the banner shows; the banner says where the engine lives and which listeners are TLS;
SIGTERM during start-up stops it promptly."""

from __future__ import annotations

import datetime as dt
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from engine.api.auth_settings import auth_settings_for
from engine.errors import ConfigError
from engine.settings import Settings, load_settings
from engine.store import create_db_engine

ENGINE = [sys.executable, "-m", "engine"]


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("ENGINE_MLLP_PORT", "abc", "ENGINE_MLLP_PORT: 'abc' is not a port number (0-65535)"),
        ("ENGINE_HTTP_PORT", "70000", "ENGINE_HTTP_PORT: '70000' is not a port number"),
        ("ENGINE_MAX_CONNECTIONS", "lots", "ENGINE_MAX_CONNECTIONS: 'lots' is not a whole number"),
        ("ENGINE_MAX_CONNECTIONS", "0", "ENGINE_MAX_CONNECTIONS: '0' should be greater than"),
        ("ENGINE_IDLE_TIMEOUT_S", "soon", "ENGINE_IDLE_TIMEOUT_S: 'soon' is not a number"),
        ("ENGINE_WORKERS", "perhaps", "ENGINE_WORKERS: 'perhaps' is not true or false"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value).startswith(expected), str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_flag_is_named_as_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"^--mllp-port: 70000 is not a port number"):
        load_settings(mllp_port=70000)


def test_auth_settings_name_their_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENGINE_AUTH_MODE", "magic")
    with pytest.raises(ConfigError, match=r"^ENGINE_AUTH_MODE: 'magic' should be"):
        auth_settings_for(Settings())
    monkeypatch.setenv("ENGINE_AUTH_MODE", "keyfile")
    with pytest.raises(ConfigError, match=r"^mode keyfile needs ENGINE_AUTH_KEY_FILE"):
        auth_settings_for(Settings())
    monkeypatch.setenv("ENGINE_AUTH_MODE", "dev")
    monkeypatch.setenv("ENGINE_AUTH_ROLE_ALIASES", "{not json")
    with pytest.raises(ConfigError, match=r"^ENGINE_AUTH_ROLE_ALIASES: not valid JSON"):
        auth_settings_for(Settings())


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("not a url", "ENGINE_DATABASE_URL: not a database URL"),
        ("mysql://u:hunter2@db/engine", "ENGINE_DATABASE_URL: database 'mysql' is not supported"),
        ("postgresql+nosuch://u:hunter2@db/e", "ENGINE_DATABASE_URL: driver 'postgresql+nosuch'"),
    ],
)
def test_a_bad_database_url_names_the_setting_not_the_password(url: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        create_db_engine(url)
    assert str(caught.value).startswith(expected) and "hunter2" not in str(caught.value)


# --- engine serve, as an admin starts it -------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(home: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """``engine serve`` started in ``home`` (its default home) on free local ports."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    return subprocess.Popen(
        [*ENGINE, "serve"],
        cwd=home,
        env={
            **clean,
            "ENGINE_MLLP_HOST": "127.0.0.1",
            "ENGINE_HTTP_HOST": "127.0.0.1",
            "ENGINE_MLLP_PORT": str(_free_port()),
            "ENGINE_HTTP_PORT": str(_free_port()),
            "ENGINE_WORKERS": "false",
            **env,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the block ends


def _route_file(home: Path, name: str, text: str) -> dict[str, str]:
    (home / "routes").mkdir(exist_ok=True)
    (home / "routes" / name).write_text(text)
    return {"ENGINE_ROUTES_DIR": "routes"}


_DROP = """destinations:
  drop:
    type: file
    directory: {folder}
routes:
  - name: to-drop
    match: {{message: [ADT]}}
    mapping: none
    destinations: [drop]
"""


def _case(name: str, home: Path) -> tuple[dict[str, str], list[str]]:
    """(environment, what the one error line must say) for each kind of start-up mistake."""
    if name == "port":
        return {"ENGINE_MLLP_PORT": "abc"}, ["ENGINE_MLLP_PORT: 'abc' is not a port number"]
    if name == "unreachable-database":
        port = _closed_port()
        url = f"postgresql://engine:hunter2@127.0.0.1:{port}/engine"
        return {"ENGINE_DATABASE_URL": url}, ["ENGINE_DATABASE_URL", f"127.0.0.1:{port}"]
    if name == "unknown-database":
        return {"ENGINE_DATABASE_URL": "mysql://u@db/e"}, ["ENGINE_DATABASE_URL", "'mysql'"]
    if name == "tls-file":
        env = {"ENGINE_MLLP_TLS_CERT": "tls/server.crt", "ENGINE_MLLP_TLS_KEY": "tls/server.key"}
        return env, [f"ENGINE_MLLP_TLS_CERT: {home}/tls/server.crt: no such file"]
    if name == "key-file":
        env = {"ENGINE_AUTH_MODE": "keyfile", "ENGINE_AUTH_KEY_FILE": "keys/idp.pem"}
        return env, [f"ENGINE_AUTH_KEY_FILE: {home}/keys/idp.pem: no such file"]
    if name.startswith("garbage-"):  # a file that exists and reads, but is not what it should be
        return _garbage(home, name.removeprefix("garbage-"))
    if name == "python-tag":
        text = "destinations: !!python/object/apply:os.system ['true']\n"
        return _route_file(home, "evil.yaml", text), ["routes/evil.yaml", "line 1"]
    if name == "var-folder":
        (home / "a-file").write_text("not a folder")
        return {"ENGINE_VAR_DIR": "a-file/var"}, ["ENGINE_VAR_DIR: folder", "a-file/var"]
    assert name == "destination-folder"
    (home / "a-file").write_text("not a folder")
    env = _route_file(home, "drop.yaml", _DROP.format(folder="a-file/outbox"))
    return env, ["routes/drop.yaml: destination 'drop': folder", f"{home}/a-file/outbox"]


def _garbage(home: Path, which: str) -> tuple[dict[str, str], list[str]]:
    """A TLS or key file with garbage in it (the others good): the setting and path named."""
    (home / "junk.pem").write_text("this is not PEM\n")
    if which == "key-file":
        env = {"ENGINE_AUTH_MODE": "keyfile", "ENGINE_AUTH_KEY_FILE": "junk.pem"}
        return env, [f"ENGINE_AUTH_KEY_FILE: {home}/junk.pem: not a PEM public key"]
    _cert(home / "tls")
    env = {
        "ENGINE_MLLP_TLS_CERT": "tls/server.crt",
        "ENGINE_MLLP_TLS_KEY": "tls/server.key",
        "ENGINE_MLLP_TLS_CLIENT_CA": "tls/server.crt",
    }
    if which == "tls-key-mismatch":  # a good key, but not the certificate's
        _cert(home / "tls2")
        env["ENGINE_MLLP_TLS_CERT"] = "tls2/server.crt"
        needle = f"ENGINE_MLLP_TLS_KEY: {home}/tls/server.key: cannot load the MLLP TLS private key"
        return env, [needle, "does not match the certificate in ENGINE_MLLP_TLS_CERT"]
    if which == "tls-key-password":  # would be OpenSSL's prompt on the terminal
        key = serialization.load_pem_private_key((home / "tls" / "server.key").read_bytes(), None)
        encrypted = serialization.BestAvailableEncryption(b"secret")
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encrypted
        )
        (home / "tls" / "server.key").write_bytes(pem)
        return env, [f"ENGINE_MLLP_TLS_KEY: {home}/tls/server.key: ", "protected by a password"]
    setting = {"tls-cert": "CERT", "tls-key": "KEY", "tls-client-ca": "CLIENT_CA"}[which]
    env[f"ENGINE_MLLP_TLS_{setting}"] = "junk.pem"
    return env, [f"ENGINE_MLLP_TLS_{setting}: {home}/junk.pem: cannot load"]


@pytest.mark.parametrize(
    "case",
    [
        "port",
        "unreachable-database",
        "unknown-database",
        "tls-file",
        "key-file",
        "garbage-tls-cert",
        "garbage-tls-key",
        "garbage-tls-client-ca",
        "garbage-tls-key-mismatch",
        "garbage-tls-key-password",
        "garbage-key-file",
        "python-tag",
        "var-folder",
        "destination-folder",
    ],
)
def test_serve_refuses_a_mistake_in_one_line_before_anything_listens(
    tmp_path: Path, case: str
) -> None:
    env, needles = _case(case, tmp_path)
    proc = _serve(tmp_path, env)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: "), err
    for needle in needles:
        assert needle in last, last
    assert "hunter2" not in err
    assert "MLLP on" not in err  # no banner: nothing was started


def _cert(folder: Path) -> None:
    """A self-signed server certificate and key (it also serves as the client CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir()
    (folder / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _lines(proc: subprocess.Popen[str]) -> tuple[queue.Queue[str], threading.Thread]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return lines, thread


def test_the_banner_comes_once_listening_and_names_home_tls_and_store(tmp_path: Path) -> None:
    _cert(tmp_path / "tls")
    proc = _serve(
        tmp_path,
        {
            "ENGINE_MLLP_TLS_CERT": "tls/server.crt",  # relative: the home's
            "ENGINE_MLLP_TLS_KEY": "tls/server.key",
            "ENGINE_MLLP_TLS_CLIENT_CA": "tls/server.crt",
        },
    )
    lines, pump = _lines(proc)
    try:
        banner = ""
        while "MLLP on" not in banner:
            banner = lines.get(timeout=30)
        assert proc.returncode is None
        mllp = int(banner.split("MLLP on 127.0.0.1:")[1].split(" ")[0])
        http = int(banner.split("HTTP on http://127.0.0.1:")[1].split(" ")[0])
        assert f"home {tmp_path};" in banner
        assert f"MLLP on 127.0.0.1:{mllp} (mutual TLS: client certificates required)" in banner
        assert f"HTTP on http://127.0.0.1:{http} (no TLS" in banner
        assert f"store sqlite:///{tmp_path}/var/engine.db" in banner
        # both listen by the time the banner shows
        socket.create_connection(("127.0.0.1", mllp), timeout=5).close()
        socket.create_connection(("127.0.0.1", http), timeout=5).close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        pump.join(timeout=5)
        for pipe in (proc.stdout, proc.stderr):
            assert pipe is not None
            pipe.close()
    assert proc.returncode == 0
    assert "engine stopped" in list(lines.queue)[-1]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_start_up_stops_the_engine_promptly(
    tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    """A database that accepts the connection and never answers holds start-up; SIGTERM (or
    Ctrl-C) then stops the engine within seconds, with one clean line."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        url = f"postgresql://engine@127.0.0.1:{port}/engine"
        proc = _serve(tmp_path, {"ENGINE_DATABASE_URL": url})
        silent.settimeout(30)
        conn, _ = silent.accept()  # the engine is connecting now
        with conn:
            started = time.monotonic()
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=10)
            took = time.monotonic() - started
    assert took < 5, took
    assert proc.returncode == code, err
    assert "Traceback" not in err and "MLLP on" not in err
    assert f"engine stopped during start-up ({sig.name})" in err


def test_worker_names_an_unreachable_database(tmp_path: Path) -> None:
    port = _closed_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    url = f"postgresql://engine:hunter2@127.0.0.1:{port}/engine"
    proc = subprocess.run(
        [*ENGINE, "worker"],
        cwd=tmp_path,
        env={**clean, "ENGINE_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ENGINE_DATABASE_URL") and f"127.0.0.1:{port}" in last
    assert "hunter2" not in proc.stderr


def test_a_busy_http_port_is_one_line_and_nothing_listens(tmp_path: Path) -> None:
    """The HTTP port is taken before MLLP starts: the start-up error, not uvicorn's."""
    mllp = _free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        http = taken.getsockname()[1]
        proc = _serve(tmp_path, {"ENGINE_HTTP_PORT": str(http), "ENGINE_MLLP_PORT": str(mllp)})
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (
        f"error: cannot listen for HTTP on 127.0.0.1:{http} (address in use)"
    ), err
    assert "ERROR" not in err and "Errno" not in err, err  # no second line from uvicorn
    assert "mllp listening" not in err and "MLLP on" not in err, err  # MLLP never started


_MLLP_BUSY = """
import asyncio, socket, sys
from pathlib import Path
from engine.errors import ConfigError
from engine.service import Engine
from engine.settings import load_settings

mllp, http = int(sys.argv[1]), int(sys.argv[2])
engine = Engine(load_settings(
    home=Path.cwd(), mllp_host="127.0.0.1", mllp_port=mllp, http_host="127.0.0.1",
    http_port=http, workers=False,
))
try:
    asyncio.run(engine.run(asyncio.Event()))
except ConfigError as exc:
    print(exc)
with socket.socket() as again:  # no SO_REUSEADDR: fails while the engine's socket is open
    again.bind(("127.0.0.1", http))
    print("http port free")
"""


def test_a_busy_mllp_port_closes_the_http_socket_it_had_opened(tmp_path: Path) -> None:
    """In its own process (the engine's metrics switch the process to multiprocess mode)."""
    http = _free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        mllp = taken.getsockname()[1]
        clean = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
        proc = subprocess.run(
            [sys.executable, "-c", _MLLP_BUSY, str(mllp), str(http)],
            cwd=tmp_path,
            env=clean,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"cannot listen for MLLP on 127.0.0.1:{mllp}: Address already in use",
        "http port free",  # the HTTP socket taken first was closed when MLLP failed
    ], proc.stdout
