"""``engine serve`` against clients that hold its HTTP port open (the review's finding): the HTTP
port shares its process, and so its file descriptors, with the MLLP listener and the database.

- A flood of connections that never finish their request heads, from several addresses, leaves
  the engine's descriptors alone (they are capped: engine/api/http_limits.py), so MLLP still
  acknowledges and HTTP still answers. The engine runs with 256 descriptors for this: without
  the cap the flood took them all and MLLP went silent.
- Over HTTPS, a request head not finished within ``ENGINE_HTTP_HEAD_TIMEOUT_S`` loses its
  connection, and a ``POST /hl7v2`` body not finished within ``ENGINE_HTTP_BODY_TIMEOUT_S`` is
  answered 408 (JSON, naming the problem) and its connection closed.

Loopback addresses only; every wait is bounded by ``WAIT_S``, many times the limits under test."""

from __future__ import annotations

import json
import resource
import socket
import ssl
import time
from contextlib import ExitStack
from pathlib import Path

from engine.api.auth_settings import DEV_SECRET_NAME, AuthSettings
from engine.api.tokens import mint_dev_token
from engine.hl7v2.codec import parse_message
from tests.console.support import ConsoleEngine, console_engine
from tests.console.test_auth_tls import self_signed
from tests.serve_support import OUTBOX_ROUTES

WAIT_S = 20.0
HALF_HEAD = b"POST /hl7v2 HTTP/1.1\r\nHost: engine\r\nContent-Type: text/plain\r\n"
ADT = (
    b"MSH|^~\\&|FRONTDESK|CLINIC|ENGINE|HUB|20260102030405||ADT^A04|FLOOD-1|P|2.5.1\r"
    b"PID|1||MRN1^^^CLINIC^MR||Testpatient^Alice\r"
)


def descriptor_limit(pid: int, count: int) -> None:
    """The running process ``pid`` may open ``count`` descriptors from now on (Linux's
    prlimit: the test's own process keeps its limit, which a long test run's open files need)."""
    _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (min(count, hard), hard))


def ends(sock: socket.socket) -> bool:
    """Whether the engine ends the connection (within WAIT_S) without answering."""
    try:
        return sock.recv(4096) == b""
    except TimeoutError:
        return False
    except (ConnectionResetError, ssl.SSLError):  # aborted: a reset, or a TLS record cut short
        return True


def mllp_ack(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as sock:
        sock.sendall(b"\x0b" + ADT + b"\x1c\r")
        buf = b""
        while not buf.endswith(b"\x1c\r"):
            chunk = sock.recv(4096)
            assert chunk, "MLLP closed the connection before the ACK"
            buf += chunk
    return buf[1:-2]


def flood(stack: ExitStack, port: int, sources: list[str], each: int) -> None:
    """``each`` connections from every source address, each sending half a request head."""
    for source in sources:
        for _ in range(each):
            sock = stack.enter_context(socket.socket())
            sock.settimeout(WAIT_S)
            sock.bind((source, 0))
            try:
                sock.connect(("127.0.0.1", port))
                sock.sendall(HALF_HEAD)
            except OSError:
                pass  # refused or closed already: what the limits are for


def test_a_flood_of_unfinished_heads_leaves_mllp_its_descriptors(tmp_path: Path) -> None:
    env = {
        "ENGINE_WORKERS": "false",
        "ENGINE_HTTP_HEAD_TIMEOUT_S": "60",  # the flood stays for the test: the cap is tested
        "ENGINE_HTTP_MAX_CONNECTIONS": "100",
        "ENGINE_HTTP_MAX_CONNECTIONS_PER_PEER": "40",
    }
    routes = tmp_path / "routes"
    routes.mkdir()
    (routes / "outbox.yaml").write_text(OUTBOX_ROUTES.format(outbox=tmp_path / "outbox"))
    with ExitStack() as stack:
        engine: ConsoleEngine = stack.enter_context(
            console_engine(tmp_path, env=env, routes=routes)
        )
        assert engine.proc is not None
        descriptor_limit(engine.proc.pid, 256)
        sources = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
        flood(stack, engine.http, sources, each=100)  # 400 connections, more than 256
        time.sleep(1)  # the engine accepts them all (and closes what is over the limits)
        ack = parse_message(mllp_ack(engine.mllp))  # taken and committed: the database works too
        assert ack.get("MSA-1") == "AA" and ack.get("MSA-2") == "FLOOD-1"
        # HTTP answers too: a new connection takes the place of the one waiting longest
        with socket.create_connection(("127.0.0.1", engine.http), timeout=WAIT_S) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: engine\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200")
    log = engine.log.read_text(errors="replace")
    assert "max_connections_per_peer" in log and "Traceback" not in log


def test_over_https_a_late_head_loses_its_connection_and_a_late_body_is_408(
    tmp_path: Path,
) -> None:
    cert, key = self_signed(tmp_path)
    env = {
        "ENGINE_WORKERS": "false",
        "ENGINE_ENV": "development",
        "ENGINE_HTTP_TLS_CERT": str(cert),
        "ENGINE_HTTP_TLS_KEY": str(key),
        "ENGINE_HTTP_HEAD_TIMEOUT_S": "1",
        "ENGINE_HTTP_BODY_TIMEOUT_S": "1",
    }
    trust = ssl.create_default_context(cafile=str(cert))

    def connect(port: int) -> ssl.SSLSocket:
        plain = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
        return trust.wrap_socket(plain, server_hostname="127.0.0.1")

    with console_engine(tmp_path, env=env) as engine:
        # half a head, and nothing more: cut off
        with connect(engine.http) as tls:
            tls.sendall(HALF_HEAD)
            assert ends(tls)
        # a whole head and part of its body: 408 and the connection closed
        auth = AuthSettings(environment="development", dev_secret_file=engine.var / DEV_SECRET_NAME)
        token = mint_dev_token(auth, role="integration", subject="dribbler")
        with connect(engine.http) as tls:
            head = (
                f"POST /hl7v2 HTTP/1.1\r\nHost: engine\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: x-application/hl7-v2+er7\r\nContent-Length: {len(ADT)}\r\n\r\n"
            )
            tls.sendall(head.encode() + ADT[:20])
            answer = b""
            while chunk := tls.recv(4096):
                answer += chunk
        status, _, rest = answer.partition(b"\r\n")
        headers, _, body = rest.partition(b"\r\n\r\n")
        assert status == b"HTTP/1.1 408 Request Timeout"
        assert b"connection: close" in headers.lower()
        assert json.loads(body) == {
            "detail": "body stopped coming: not 64 KiB more within 1 s (20 bytes came)"
        }
        # and HTTPS serves whoever is in time
        with connect(engine.http) as tls:
            tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: engine\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := tls.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200")
