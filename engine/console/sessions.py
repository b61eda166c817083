"""Console sessions: the cookie, the idle and absolute clocks, CSRF, and where to send a stranger.

A login (engine/console/pages_auth.py) makes a random id (256 bits), stores its SHA-256 with the
user, a CSRF token and the clocks in ``console_sessions`` (engine/store/users.py), and hands the
browser the id signed with itsdangerous in the cookie ``engine_session`` (HttpOnly,
SameSite=Lax, Path=/, Secure under TLS). The signing key is a file (``ENGINE_CONSOLE_SECRET_FILE``,
default ``var_dir/console-secret``, made 0600 on first use): a forged or foreign cookie is refused
before the database is asked. Sessions are server-side so every node sharing the database
shares them, and logging out or disabling a user ends them at once.

Each request of a page (:func:`session_user`) finds the session, and ends it (audited
``session-expired``) when it has been idle longer than ``ENGINE_CONSOLE_IDLE_MINUTES`` or lived
longer than ``ENGINE_CONSOLE_SESSION_HOURS``; otherwise its idle clock starts again, except for
a page's own background refresh (:data:`BACKGROUND_PATHS`) (written at
most every ``min(30 s, idle / 4)``, so a busy page does not write on every request; a session may
thus end up to that much early). Not logged in: a page answers 303 to
``/console/login?next=<this path>``, a request for JSON 401.

CSRF: each session has its own token, which every state-changing request carries (form field
``csrf_token`` or header ``X-CSRF-Token``) and :func:`verify_csrf` compares in constant time.
The login form, before any session exists, has its own token: a random value in a signed,
short-lived cookie (``engine_login``) that the form must repeat (:func:`login_token`,
:func:`check_login_token`).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from fastapi import HTTPException, Request, Response
from itsdangerous import BadSignature, Signer, TimestampSigner
from starlette.concurrency import run_in_threadpool

from engine.api.auth import Role
from engine.api.deps import peer_of
from engine.console.user import ConsoleUser
from engine.settings import Settings
from engine.store.db import utcnow
from engine.store.users import LoginPolicy, UserRecord, Users

__all__ = [
    "COOKIE",
    "LOGIN_COOKIE",
    "RoleRequired",
    "check_login_token",
    "console_secret",
    "cookie_secure",
    "end_session",
    "forbidden",
    "login_policy",
    "login_token",
    "read_form_items",
    "read_small_form",
    "safe_next",
    "session_user",
    "set_login_cookie",
    "settings_of",
    "start_session",
    "users_of",
    "verify_csrf",
    "wants_json",
]

COOKIE = "engine_session"
LOGIN_COOKIE = "engine_login"
#: how long a login form stays good (its CSRF cookie's lifetime)
LOGIN_FORM_S = 3600
#: the largest console form body read before the page sees it (a form of a few fields)
MAX_FORM_BYTES = 64 * 1024

_secrets: dict[Path, bytes] = {}
_secrets_lock = threading.Lock()


#: requests a page's script makes by itself (the dashboard's auto-refresh): they need a live
#: session but do not restart its idle clock, so an unattended dashboard still logs off
BACKGROUND_PATHS = frozenset({"/console/dashboard/live"})


def settings_of(request: Request) -> Settings:
    settings = request.app.state.context.settings
    assert isinstance(settings, Settings)
    return settings


def users_of(request: Request) -> Users | None:
    """The users and sessions store (``engine serve`` sets ``app.state.users``); None in an app
    built without one (then nobody is logged in)."""
    users = getattr(request.app.state, "users", None)
    return users if isinstance(users, Users) else None


def console_secret(settings: Settings) -> bytes:
    """The key that signs the console's cookies: the file's content, the file made (0600) with
    a random key on first use. Every node of one database must share the file."""
    path = settings.console_secret_file or settings.var_dir / "console-secret"
    with _secrets_lock:
        if path in _secrets:
            return _secrets[path]
        with contextlib.suppress(FileExistsError):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(32) + "\n")
        for _ in range(50):  # another process may be writing it this moment
            key = path.read_bytes().strip()
            if key:
                break
            time.sleep(0.02)
        if len(key) < 32:
            from engine.errors import ConfigError

            raise ConfigError(f"ENGINE_CONSOLE_SECRET_FILE: {path} holds fewer than 32 bytes")
        _secrets[path] = key
        return key


def _signer(settings: Settings) -> Signer:
    return Signer(console_secret(settings), salt="engine-console-session")


def _login_signer(settings: Settings) -> TimestampSigner:
    return TimestampSigner(console_secret(settings), salt="engine-console-login")


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def login_policy(settings: Settings) -> LoginPolicy:
    return LoginPolicy(
        max_failed=settings.console_max_failed_logins,
        lockout=timedelta(minutes=settings.console_lockout_minutes),
    )


def cookie_secure(request: Request) -> bool:
    """Cookies get ``Secure`` under TLS, or when the console's public address is https (behind a
    TLS proxy whose X-Forwarded-Proto uvicorn does not trust, the request's own scheme is http)."""
    public = settings_of(request).public_base_url or ""
    return request.url.scheme == "https" or public.lower().startswith("https://")


def _cookie_clearer() -> str:
    response = Response()
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="lax")
    return response.headers["set-cookie"]


def wants_json(request: Request) -> bool:
    """A JSON client (``Accept`` names JSON and not HTML): it gets JSON answers, a browser pages."""
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def safe_next(value: str | None) -> str:
    """``value`` when it is a path on this site (no scheme, no host, no ``//`` or ``\\`` that
    a browser would read as another host, no control character); ``/console/`` otherwise."""
    default = "/console/"
    if not value or len(value) > 2000 or not value.startswith("/"):
        return default
    if value.startswith(("//", "/\\")) or any(ord(c) < 0x20 or c == "\\" for c in value):
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return default
    return value


def _here(request: Request) -> str:
    """Where to come back after logging in: this page (a GET), or the page that posted."""
    if request.method in ("GET", "HEAD"):
        query = request.url.query
        return request.url.path + (f"?{query}" if query else "")
    referer = request.headers.get("referer", "")
    parts = urlsplit(referer)
    if parts.netloc == request.url.netloc and parts.path.startswith("/console"):
        return parts.path + (f"?{parts.query}" if parts.query else "")
    return "/console/"


def _stranger(request: Request, *, clear: bool) -> HTTPException:
    """Not logged in: 303 to the login page (a page), 401 (JSON)."""
    headers = {"Set-Cookie": _cookie_clearer()} if clear else {}
    if wants_json(request):
        return HTTPException(401, detail="log in first", headers=headers or None)
    location = "/console/login?" + urlencode({"next": safe_next(_here(request))})
    return HTTPException(303, detail="log in first", headers={"Location": location, **headers})


def _to_roles(names: tuple[str, ...]) -> frozenset[Role]:
    known = {role.value: role for role in Role}
    return frozenset(known[name] for name in names if name in known)


async def session_user(request: Request) -> ConsoleUser:
    """The logged-in user of this request, the session's idle clock started again; otherwise
    303 to the login page or 401 (see the module's docstring)."""

    cookie = request.cookies.get(COOKIE)
    users = users_of(request)
    if not cookie or users is None:
        raise _stranger(request, clear=False)
    settings = settings_of(request)
    try:
        session_id = _signer(settings).unsign(cookie.encode()).decode()
    except (BadSignature, UnicodeDecodeError):
        raise _stranger(request, clear=True) from None
    id_hash = _hash(session_id)
    record = await run_in_threadpool(users.session, id_hash)
    if record is None:
        raise _stranger(request, clear=True)
    now = utcnow()
    peer = peer_of(request)
    idle = timedelta(minutes=settings.console_idle_minutes)
    why = ""
    if record.disabled:
        why = "user disabled"
    elif now >= record.expires_at:
        why = f"lifetime of {settings.console_session_hours:g} h reached"
    elif now - record.last_seen_at >= idle:
        why = f"idle for {settings.console_idle_minutes:g} min"
    if why:
        await run_in_threadpool(
            lambda: users.end_session(
                id_hash, action="session-expired", actor=record.username, peer=peer, detail=why
            )
        )
        raise _stranger(request, clear=True)
    background = request.url.path in BACKGROUND_PATHS
    if not background and now - record.last_seen_at >= min(timedelta(seconds=30), idle / 4):
        await run_in_threadpool(users.touch_session, id_hash, now)
    return ConsoleUser(
        username=record.username,
        roles=_to_roles(record.roles),
        session_id=id_hash,
        csrf_token=record.csrf_token,
        peer=peer,
    )


class RoleRequired(HTTPException):
    """403: a logged-in ``user`` lacks the ``role`` a console page needs (``user`` None when the
    caller did not say). A JSON client gets FastAPI's ``{"detail": "requires the X role"}``, a
    browser a page saying so (engine/console/refused.py)."""

    def __init__(self, role: Role, user: ConsoleUser | None = None) -> None:
        super().__init__(403, detail=f"requires the {role.value} role")
        self.role = role
        self.user = user


def forbidden(role: Role, user: ConsoleUser | None = None) -> RoleRequired:
    """The refusal of ``user``, who lacks ``role`` (raise it)."""
    return RoleRequired(role, user)


async def read_form_items(request: Request, limit: int = MAX_FORM_BYTES) -> list[tuple[str, str]]:
    """A url-encoded form body of at most ``limit`` bytes (413 beyond), every field in order.
    Read once: later calls (and ``request.form()``) see the same body."""
    if getattr(request, "_form", None) is None and not hasattr(request, "_body"):
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise HTTPException(413, detail=f"form larger than {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPException(413, detail=f"form larger than {limit} bytes")
            chunks.append(chunk)
        request._body = b"".join(chunks)
    form = getattr(request, "_form", None)
    if form is not None:
        return [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
    body: bytes = await request.body()
    return parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)


async def read_small_form(request: Request, limit: int = MAX_FORM_BYTES) -> dict[str, str]:
    """:func:`read_form_items`, the first value of each field."""
    fields: dict[str, str] = {}
    for key, value in await read_form_items(request, limit):
        fields.setdefault(key, value)
    return fields


async def verify_csrf(request: Request, user: ConsoleUser) -> None:
    """The request carries the session's CSRF token (header ``X-CSRF-Token`` or form field
    ``csrf_token``); 403 otherwise. A url-encoded body is read here, capped at
    ``MAX_FORM_BYTES``; a multipart one through Starlette's parser (its own part limits)."""
    token = request.headers.get("x-csrf-token")
    if token is None:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            value: Any = (await request.form()).get("csrf_token")
            token = value if isinstance(value, str) else None
        elif content_type.startswith("application/x-www-form-urlencoded"):
            token = (await read_small_form(request)).get("csrf_token")
    if not token or not hmac.compare_digest(token.encode(), user.csrf_token.encode()):
        raise HTTPException(403, detail="CSRF token missing or wrong: reload the page")


# -- logging in and out (engine/console/pages_auth.py) ------------------------------------


def login_token(request: Request) -> tuple[str, str | None]:
    """The login form's CSRF token, and the cookie to set (None: the browser's still holds it)."""
    settings = settings_of(request)
    held = request.cookies.get(LOGIN_COOKIE)
    if held:
        with contextlib.suppress(BadSignature, UnicodeDecodeError):
            token = _login_signer(settings).unsign(held, max_age=LOGIN_FORM_S // 2).decode()
            return token, None
    token = secrets.token_urlsafe(32)
    return token, _login_signer(settings).sign(token).decode()


def set_login_cookie(request: Request, response: Response, cookie: str | None) -> None:
    if cookie is not None:
        response.set_cookie(
            LOGIN_COOKIE,
            cookie,
            max_age=LOGIN_FORM_S,
            path="/console/login",
            httponly=True,
            samesite="lax",
            secure=cookie_secure(request),
        )


def check_login_token(request: Request, submitted: str | None) -> bool:
    """The login form's token is the one its cookie holds (signed, at most an hour old)."""
    held = request.cookies.get(LOGIN_COOKIE)
    if not held or not submitted:
        return False
    try:
        token = _login_signer(settings_of(request)).unsign(held, max_age=LOGIN_FORM_S).decode()
    except (BadSignature, UnicodeDecodeError):
        return False
    return hmac.compare_digest(token.encode(), submitted.encode())


async def start_session(
    request: Request, response: Response, user: UserRecord, *, method: str
) -> None:
    """A new session for ``user`` on ``response`` (always a new id: the one the browser held
    before, if any, ends), the login audited, the login form's cookie dropped."""
    users = users_of(request)
    assert users is not None
    settings = settings_of(request)
    replaces = None
    held = request.cookies.get(COOKIE)
    if held:
        with contextlib.suppress(BadSignature, UnicodeDecodeError):
            replaces = _hash(_signer(settings).unsign(held.encode()).decode())
    session_id = secrets.token_urlsafe(32)
    lifetime = timedelta(hours=settings.console_session_hours)
    await run_in_threadpool(
        lambda: users.create_session(
            user,
            _hash(session_id),
            secrets.token_urlsafe(32),
            method=method,
            peer=peer_of(request),
            lifetime=lifetime,
            replaces=replaces,
        )
    )
    response.set_cookie(
        COOKIE,
        _signer(settings).sign(session_id.encode()).decode(),
        path="/",
        httponly=True,
        samesite="lax",
        secure=cookie_secure(request),
    )
    response.delete_cookie(LOGIN_COOKIE, path="/console/login")


async def end_session(request: Request, response: Response, user: ConsoleUser) -> None:
    """Log out: the session deleted (audited ``logout``) and the cookie cleared."""
    users = users_of(request)
    if users is not None:
        await run_in_threadpool(
            lambda: users.end_session(
                user.session_id, action="logout", actor=user.username, peer=user.peer
            )
        )
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="lax")
