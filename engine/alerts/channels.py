"""Where notices go: e-mail over SMTP and webhooks, and the notices' words.

E-mail: SMTP (RFC 5321) to the channel's host, STARTTLS (RFC 3207; the server's certificate
checked against the system's CAs, or the channel's ``ca_file``) when ``starttls`` is set, AUTH
with the username and the password read from the variable or file the channel names, when it
names one. One message per notice to every address in ``to``. Webhooks: a POST of
``{"text": "..."}`` — the field Slack's incoming webhooks and Microsoft Teams' incoming-webhook
connectors both show — with the channel's time-out; any answer but 2xx is a failure. No
redirect is followed (a webhook's URL is the place, not a hint).

A failure is a :class:`ChannelError` naming the channel and what went wrong (never the URL, which
may hold a secret, nor a password); the notice stays owed for that channel and is sent again at
the next evaluation.
"""

from __future__ import annotations

import asyncio
import os
import smtplib
import socket
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx

from engine import __version__
from engine.alerts.rules import EmailChannel, WebhookChannel
from engine.alerts.state import Notice
from engine.errors import EngineError

__all__ = ["ChannelError", "notice_text", "send"]

#: the most bytes of a password file read
_MAX_SECRET = 4096
_HEADLINE = {"raise": "ALERT", "repeat": "STILL RAISED", "recover": "RECOVERED"}


class ChannelError(EngineError):
    """A notice could not be sent on a channel (the reason names no secret)."""


def notice_text(notice: Notice, timezone: str, *, host: str | None = None) -> tuple[str, str]:
    """The notice's one-line title and its text (counts, names and ages only)."""
    head = _HEADLINE.get(notice.notice, notice.notice.upper())
    about = f"{notice.rule}" + (f" ({notice.subject})" if notice.subject else "")
    title = f"[engine] {head}: {about}"
    zone = ZoneInfo(timezone)
    lines = [f"{title} — {notice.summary}", "", f"rule: {notice.rule} ({notice.kind})"]
    if notice.subject:
        lines.append(f"subject: {notice.subject}")
    lines.append(f"raised: {notice.raised_at.astimezone(zone):%Y-%m-%d %H:%M %Z}")
    if notice.notice == "recover" and notice.recovered_at is not None:
        lines.append(f"recovered: {notice.recovered_at.astimezone(zone):%Y-%m-%d %H:%M %Z}")
    lines.append(f"engine: {host or socket.gethostname()} (version {__version__})")
    lines.append("details: /console/alerts")
    return title, "\n".join(lines)


def _path(path: Path) -> Path:
    """A file the channel names: a relative path is the engine's home's (ENGINE_HOME)."""
    from engine.settings import engine_home

    return path if path.is_absolute() else engine_home() / path


def _password(channel: EmailChannel) -> str | None:
    if channel.password_env:
        value = os.environ.get(channel.password_env)
        if not value:
            raise ChannelError(f"{channel.password_env} is not set")
        return value
    if channel.password_file:
        try:
            with _path(channel.password_file).open("rb") as f:
                return f.read(_MAX_SECRET).decode("utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ChannelError(f"cannot read the password file ({type(exc).__name__})") from exc
    return None


def _send_mail(channel: EmailChannel, title: str, text: str) -> None:
    message = EmailMessage()
    message["Subject"] = title
    message["From"] = channel.sender
    message["To"] = ", ".join(channel.to)
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=channel.sender.rsplit("@", 1)[-1])
    message.set_content(text)
    password = _password(channel)
    try:
        with smtplib.SMTP(channel.host, channel.port, timeout=channel.timeout_s) as smtp:
            smtp.ehlo()
            if channel.starttls:
                ca = channel.ca_file
                cafile = str(_path(ca)) if ca is not None else None
                smtp.starttls(context=ssl.create_default_context(cafile=cafile))
                smtp.ehlo()
            if channel.username and password is not None:
                smtp.login(channel.username, password)
            refused = smtp.send_message(message)
    except smtplib.SMTPResponseException as exc:
        raise ChannelError(f"SMTP {exc.smtp_code}") from exc
    except (smtplib.SMTPException, OSError) as exc:
        raise ChannelError(f"SMTP {type(exc).__name__}") from exc
    if refused:
        raise ChannelError(f"SMTP refused {len(refused)} of {len(channel.to)} recipients")


async def _post(channel: WebhookChannel, text: str) -> None:
    url = channel.url
    if channel.url_env:
        url = os.environ.get(channel.url_env)
        if not url:
            raise ChannelError(f"{channel.url_env} is not set")
    assert url is not None
    if not url.startswith(("http://", "https://")):
        raise ChannelError("the webhook URL is not http(s)")
    try:
        async with httpx.AsyncClient(timeout=channel.timeout_s, follow_redirects=False) as client:
            answer = await client.post(url, json={"text": text})
    except httpx.HTTPError as exc:
        raise ChannelError(f"webhook {type(exc).__name__}") from exc
    if not 200 <= answer.status_code < 300:
        raise ChannelError(f"webhook answered HTTP {answer.status_code}")


async def send(channel: EmailChannel | WebhookChannel, title: str, text: str) -> None:
    """Send one notice on ``channel``; raises :class:`ChannelError` when it did not go."""
    if isinstance(channel, EmailChannel):
        # smtplib blocks: in a thread, bounded by the channel's time-out per step
        await asyncio.to_thread(_send_mail, channel, title, text)
    else:
        await asyncio.wait_for(_post(channel, text), channel.timeout_s * 2)
