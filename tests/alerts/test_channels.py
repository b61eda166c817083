"""The e-mail channel against a real SMTP server: STARTTLS with the server's certificate checked
(a private CA named by ca_file; refused without it), AUTH with a password from a file, a wrong
password refused; and the notices' words."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from engine.alerts.channels import ChannelError, notice_text, send
from engine.alerts.rules import EmailChannel, WebhookChannel
from engine.alerts.state import Notice
from tests.adapters.conftest import pki as pki  # noqa: F401  (the fixture)
from tests.alerts.conftest import Hook, Mailbox, _Auth, _Handler
from tests.serve_support import free_port


@pytest.fixture
def tls_smtp(pki: Path) -> Iterator[Mailbox]:  # noqa: F811
    """A real SMTP server on 127.0.0.1 that requires STARTTLS (its certificate: localhost,
    signed by the test's CA) before anything else, AUTH included."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki / "server.crt", pki / "server.key")
    box = Mailbox(port=free_port())
    controller = Controller(
        _Handler(box),
        hostname="127.0.0.1",
        port=box.port,
        authenticator=_Auth(box),
        tls_context=context,
        require_starttls=True,
    )
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


def _channel(port: int, **more: object) -> EmailChannel:
    return EmailChannel.model_validate(
        {
            "type": "email",
            "host": "localhost",
            "port": port,
            "from": "engine@clinic.example",
            "to": ["it@clinic.example"],
            **more,
        }
    )


def test_starttls_with_a_private_ca_and_a_password_from_a_file(
    tls_smtp: Mailbox,
    pki: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "smtp-password").write_text("s3cret\n")
    monkeypatch.setenv("ENGINE_HOME", str(tmp_path))  # a relative path is the home's
    secret = Path("smtp-password")
    channel = _channel(
        tls_smtp.port,
        starttls=True,
        ca_file=str(pki / "ca.crt"),
        username="engine",
        password_file=str(secret),
    )
    asyncio.run(send(channel, "[engine] ALERT: x", "body text"))
    assert tls_smtp.logins == ["engine"]
    [(rcpts, mail)] = tls_smtp.mails
    assert rcpts == ["it@clinic.example"] and mail["Subject"] == "[engine] ALERT: x"


def test_starttls_refuses_a_certificate_it_cannot_check(
    tls_smtp: Mailbox,
    pki: Path,  # noqa: F811
) -> None:
    with pytest.raises(ChannelError, match="SMTP SSLCertVerificationError"):
        asyncio.run(send(_channel(tls_smtp.port, starttls=True), "t", "b"))
    assert tls_smtp.mails == []


def test_no_starttls_where_the_server_requires_it_and_a_wrong_password(
    tls_smtp: Mailbox,
    smtp: Mailbox,
    pki: Path,
    monkeypatch: pytest.MonkeyPatch,  # noqa: F811
) -> None:
    with pytest.raises(ChannelError, match=r"^SMTP 530$"):  # "must issue STARTTLS first"
        asyncio.run(send(_channel(tls_smtp.port), "t", "b"))
    monkeypatch.setenv("WRONG_PASSWORD", "not-it")
    wrong = _channel(smtp.port, username="engine", password_env="WRONG_PASSWORD")
    with pytest.raises(ChannelError, match=r"^SMTP 535$"):
        asyncio.run(send(wrong, "t", "b"))
    monkeypatch.delenv("WRONG_PASSWORD")
    with pytest.raises(ChannelError, match=r"^WRONG_PASSWORD is not set$"):
        asyncio.run(send(wrong, "t", "b"))
    assert smtp.mails == [] and tls_smtp.mails == []


def test_a_webhook_that_does_not_answer_in_time(webhook: Hook) -> None:
    silent = free_port()
    import socket

    with socket.socket() as listener:  # accepts, never answers
        listener.bind(("127.0.0.1", silent))
        listener.listen()
        channel = WebhookChannel.model_validate(
            {"type": "webhook", "url": f"http://127.0.0.1:{silent}/", "timeout_s": 0.5}
        )
        with pytest.raises(ChannelError, match="webhook ReadTimeout"):
            asyncio.run(send(channel, "t", "b"))


def test_the_notice_names_rule_subject_and_times_in_the_zone() -> None:
    raised = datetime(2026, 12, 2, 15, 4, tzinfo=UTC)
    recovered = datetime(2026, 12, 2, 16, 30, tzinfo=UTC)
    notice = Notice(
        "fhir-backlog",
        "local-fhir",
        "queue-age",
        "recover",
        "ok now",
        raised,
        recovered,
        frozenset(),
    )
    title, text = notice_text(notice, "America/New_York", host="engine-1")
    assert title == "[engine] RECOVERED: fhir-backlog (local-fhir)"
    assert text.splitlines() == [
        "[engine] RECOVERED: fhir-backlog (local-fhir) — ok now",
        "",
        "rule: fhir-backlog (queue-age)",
        "subject: local-fhir",
        "raised: 2026-12-02 10:04 EST",
        "recovered: 2026-12-02 11:30 EST",
        text.splitlines()[6],
        "details: /console/alerts",
    ]
    assert text.splitlines()[6].startswith("engine: engine-1 (version ")
