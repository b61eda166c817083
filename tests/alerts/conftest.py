"""Real peers for the alerts' channels: an SMTP server (aiosmtpd) and an HTTP receiver, both on
127.0.0.1 at a free port, recording what they were sent; and helpers that make the conditions
through the real store."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from engine.store import Incoming, NewDelivery, Outcome, Processed, SqlMessageStore
from tests.serve_support import free_port


@dataclass
class Mailbox:
    """What the SMTP server received: (envelope recipients, the parsed message)."""

    port: int
    mails: list[tuple[list[str], Message]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)

    def subjects(self) -> list[str]:
        return [str(m["Subject"]) for _, m in self.mails]


class _Handler:
    def __init__(self, box: Mailbox) -> None:
        self.box = box

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        self.box.mails.append((list(envelope.rcpt_tos), message_from_bytes(content)))
        return "250 Message accepted for delivery"


class _Auth:
    """Accepts user ``engine`` with password ``s3cret`` only."""

    def __init__(self, box: Mailbox) -> None:
        self.box = box

    def __call__(
        self, server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and data.login == b"engine"
            and data.password == b"s3cret"
        )
        if ok:
            self.box.logins.append(data.login.decode())
        return AuthResult(success=ok, handled=False)


@pytest.fixture
def smtp() -> Iterator[Mailbox]:
    """A real SMTP server on 127.0.0.1 (AUTH offered without TLS: a test's loopback only)."""
    box = Mailbox(port=free_port())
    controller = Controller(
        _Handler(box),
        hostname="127.0.0.1",
        port=box.port,
        authenticator=_Auth(box),
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


@dataclass
class Hook:
    """What the HTTP receiver was POSTed; ``fail`` answers that many requests 500 first."""

    url: str
    bodies: list[dict[str, Any]] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)
    fail: int = 0

    def texts(self) -> list[str]:
        return [str(b.get("text")) for b in self.bodies]


@pytest.fixture
def webhook() -> Iterator[Hook]:
    """A real HTTP server on 127.0.0.1 taking POSTs as Slack's incoming webhooks do."""
    port = free_port()
    hook = Hook(url=f"http://127.0.0.1:{port}/hooks/alerts")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(min(length, 1 << 20))
            if hook.fail > 0:
                hook.fail -= 1
                self.send_response(500)
                self.end_headers()
                return
            hook.content_types.append(self.headers.get("Content-Type", ""))
            hook.bodies.append(json.loads(body))
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def write_alerts(folder: Path, text: str) -> Path:
    """``folder/alerts.yaml`` holding ``text``; the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "alerts.yaml").write_text(text)
    return folder


def routed(store: SqlMessageStore, patient: str, destination: str = "lab", route: str = "r") -> int:
    """A message routed to ``destination`` for ``patient``; its id."""
    [stored] = store.save_batch([Incoming(raw=b"MSH|", channel="test")])
    delivery = NewDelivery(destination, route, "hl7v2", "text/plain", b"x", patient)
    store.finish_batch([Processed(stored.id, "routed", None, patient, [delivery])])
    return stored.id


def dead_letter(store: SqlMessageStore, patient: str, destination: str = "lab") -> int:
    """A delivery dead-lettered as the dispatcher does it (claimed, refused for good); the
    message's id."""
    mid = routed(store, patient, destination)
    claimed = [d for d in store.claim_due_deliveries(100) if d.message_id == mid]
    assert claimed, "the new delivery is the head of its queue"
    store.record_outcomes([Outcome(claimed[0].id, False, "refused: AR", None)])
    return mid


def deliver_all(store: SqlMessageStore) -> None:
    """Every due delivery delivered."""
    while due := store.claim_due_deliveries(100):
        store.record_outcomes([Outcome(d.id, True) for d in due])
