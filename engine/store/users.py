"""The console's users and sessions: who may log in, with which roles, and who is logged in.

Passwords are kept as argon2id hashes (RFC 9106; argon2-cffi's defaults: 64 MiB, 3 passes, 4
lanes) and re-hashed at the next login when those parameters change. A login that fails counts
against the user; ``LoginPolicy.max_failed`` failures in a row lock the account for
``LoginPolicy.lockout``, during which even the right password is refused. An unknown user name
costs the same hash as a known one, and every refusal looks the same to the caller (the reason
goes to the audit trail only), so a login form does not tell which names exist.

Sessions live here, not in the cookie: the cookie holds a random id and this table its SHA-256
(a copy of the table does not log anyone in). Every node reads the same table, and logging out,
disabling a user or resetting their password deletes their rows, which ends them everywhere.

Every change to a user, every login, failed login, logout and expired session is written to the
audit trail in the same transaction as the change (engine/store/audit.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import ColumnElement, Connection, and_, case, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from engine.store.audit import audit
from engine.store.db import Repository, aware, utcnow
from engine.store.operator import Who
from engine.store.tables import console_sessions, console_users

__all__ = [
    "MAX_PASSWORD_CHARS",
    "MIN_PASSWORD_CHARS",
    "LoginPolicy",
    "LoginResult",
    "SessionRecord",
    "UserProblem",
    "UserRecord",
    "Users",
    "hash_password",
    "normal_username",
    "password_problem",
]

MIN_PASSWORD_CHARS = 12
#: a longer "password" is someone pasting a file: refused before it costs a hash
MAX_PASSWORD_CHARS = 1024
_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")

_HASHER = PasswordHasher()
_dummy_hash: str | None = None


class UserProblem(Exception):
    """A change to a user that cannot be made (unknown user, name taken, bad name); the text is
    safe to show."""


def normal_username(name: str) -> str:
    """The name as stored (lower case, trimmed); UserProblem when it is not one we take."""
    value = name.strip().lower()
    if not _USERNAME.match(value):
        raise UserProblem(
            "a user name is 1-64 characters: letters, digits and . _ @ - (starting with a letter "
            "or digit)"
        )
    return value


def password_problem(password: str) -> str | None:
    """Why ``password`` is refused (too short, too long), or None."""
    if len(password) < MIN_PASSWORD_CHARS:
        return f"a password needs at least {MIN_PASSWORD_CHARS} characters"
    if len(password) > MAX_PASSWORD_CHARS:
        return f"a password has at most {MAX_PASSWORD_CHARS} characters"
    return None


def hash_password(password: str) -> str:
    """The argon2id hash of ``password`` (its salt and parameters inside)."""
    return _HASHER.hash(password)


def _verify(hashed: str | None, password: str) -> bool:
    """True when ``password`` matches; an unknown user is checked against a dummy hash so both
    cost the same."""
    global _dummy_hash
    if hashed is None:
        if _dummy_hash is None:
            _dummy_hash = _HASHER.hash("not anyone's password, only for timing")
        hashed = _dummy_hash
        real = False
    else:
        real = True
    try:
        return (
            _HASHER.verify(hashed, password if len(password) <= MAX_PASSWORD_CHARS else "") and real
        )
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


@dataclass(frozen=True)
class UserRecord:
    """A console user as listed (never the hash)."""

    id: int
    username: str
    roles: tuple[str, ...]
    origin: str  # local, oidc
    disabled: bool
    failed_logins: int
    locked_until: datetime | None
    last_login_at: datetime | None
    created_at: datetime
    has_password: bool

    def locked(self, now: datetime) -> bool:
        return self.locked_until is not None and self.locked_until > now


@dataclass(frozen=True)
class SessionRecord:
    """A session with its user's current name, roles and state."""

    id_hash: str
    user_id: int
    username: str
    roles: tuple[str, ...]
    disabled: bool
    csrf_token: str
    method: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class LoginPolicy:
    """How many failures in a row lock an account, and for how long."""

    max_failed: int = 5
    lockout: timedelta = timedelta(minutes=15)


@dataclass(frozen=True)
class LoginResult:
    """A login's outcome: ``user`` when it succeeded; ``reason`` for the audit trail only."""

    user: UserRecord | None
    reason: str  # ok, unknown user, wrong password, locked, disabled, no password


_USER_COLUMNS = (
    console_users.c.id,
    console_users.c.username,
    console_users.c.roles,
    console_users.c.origin,
    console_users.c.disabled_at,
    console_users.c.failed_logins,
    console_users.c.locked_until,
    console_users.c.last_login_at,
    console_users.c.created_at,
    console_users.c.password_hash,
)


def _roles(text: str) -> tuple[str, ...]:
    return tuple(sorted(set(text.split())))


def _opt(value: datetime | None) -> datetime | None:
    return aware(value) if value is not None else None


def _record(row: Any) -> UserRecord:
    return UserRecord(
        id=int(row.id),
        username=row.username,
        roles=_roles(row.roles),
        origin=row.origin,
        disabled=row.disabled_at is not None,
        failed_logins=int(row.failed_logins),
        locked_until=_opt(row.locked_until),
        last_login_at=_opt(row.last_login_at),
        created_at=aware(row.created_at),
        has_password=row.password_hash is not None,
    )


def _unlocked(now: datetime) -> ColumnElement[bool]:
    return or_(console_users.c.locked_until.is_(None), console_users.c.locked_until <= now)


def _audit(conn: Connection, who: Who, action: str, detail: str, outcome: str = "ok") -> None:
    audit(
        conn,
        action=action,
        actor=who.actor,
        source=who.source,
        message_id=None,
        outcome=outcome,
        detail=detail,
        peer=who.peer,
    )


class Users(Repository):
    """The console's users and sessions."""

    # -- users ---------------------------------------------------------------------------

    def get_user(self, username: str) -> UserRecord | None:
        query = select(*_USER_COLUMNS).where(console_users.c.username == username.lower())
        with self.db_engine.connect() as conn:
            row = conn.execute(query).first()
        return _record(row) if row is not None else None

    def list_users(self) -> list[UserRecord]:
        query = select(*_USER_COLUMNS).order_by(console_users.c.username)
        with self.db_engine.connect() as conn:
            return [_record(row) for row in conn.execute(query)]

    def add_user(
        self,
        username: str,
        roles: Iterable[str],
        who: Who,
        *,
        password_hash: str | None,
        origin: str = "local",
    ) -> UserRecord:
        """A new user; UserProblem when the name is taken or not one we take."""
        name = normal_username(username)
        role_text = " ".join(sorted(set(roles)))
        now = utcnow()
        try:
            with self._tx() as conn:
                conn.execute(
                    insert(console_users).values(
                        username=name,
                        password_hash=password_hash,
                        roles=role_text,
                        origin=origin,
                        failed_logins=0,
                        created_at=now,
                        updated_at=now,
                    )
                )
                _audit(conn, who, "user-add", f"user {name} roles {role_text} ({origin})")
        except IntegrityError:
            raise UserProblem(f"user {name} exists already") from None
        user = self.get_user(name)
        assert user is not None
        return user

    def _change(
        self,
        conn: Connection,
        username: str,
        values: dict[str, Any],
    ) -> int:
        """Update one user; its id, UserProblem when unknown."""
        name = username.strip().lower()
        user_id = conn.execute(
            select(console_users.c.id).where(console_users.c.username == name)
        ).scalar_one_or_none()
        if user_id is None:
            raise UserProblem(f"no user {name}")
        conn.execute(
            update(console_users)
            .where(console_users.c.id == user_id)
            .values(updated_at=utcnow(), **values)
        )
        return int(user_id)

    @staticmethod
    def _keep_an_admin(conn: Connection, username: str) -> None:
        """UserProblem when ``username`` is the last enabled admin (the enabled users' rows are
        locked, so two admins demoting each other at once cannot both pass)."""
        name = username.strip().lower()
        rows = conn.execute(
            select(console_users.c.username, console_users.c.roles)
            .where(console_users.c.disabled_at.is_(None))
            .with_for_update()
        ).all()
        admins = {row.username for row in rows if "admin" in row.roles.split()}
        if admins == {name}:
            raise UserProblem(f"user {name} is the last enabled admin")

    def set_password(self, username: str, password_hash: str, who: Who) -> None:
        """A new password; the user's sessions end (whoever knew the old one is logged out) and
        a lock-out is lifted."""
        with self._tx() as conn:
            user_id = self._change(
                conn,
                username,
                {"password_hash": password_hash, "failed_logins": 0, "locked_until": None},
            )
            conn.execute(delete(console_sessions).where(console_sessions.c.user_id == user_id))
            _audit(conn, who, "user-change", f"user {username.lower()} password set")

    def set_roles(
        self, username: str, roles: Iterable[str], who: Who, *, keep_admin: bool = False
    ) -> None:
        """New roles; they apply to the user's open sessions at their next request.
        ``keep_admin`` (the console's users page): UserProblem when this would leave no enabled
        admin (the command line, run on the engine's host, may; it is how one recovers)."""
        role_text = " ".join(sorted(set(roles)))
        with self._tx() as conn:
            if keep_admin and "admin" not in role_text.split():
                self._keep_an_admin(conn, username)
            self._change(conn, username, {"roles": role_text})
            _audit(conn, who, "user-change", f"user {username.lower()} roles {role_text}")

    def set_disabled(
        self, username: str, disabled: bool, who: Who, *, keep_admin: bool = False
    ) -> None:
        """Disable (sessions end at once) or enable (a lock-out is lifted too); ``keep_admin``
        as for :meth:`set_roles`."""
        with self._tx() as conn:
            if disabled:
                if keep_admin:
                    self._keep_an_admin(conn, username)
                user_id = self._change(conn, username, {"disabled_at": utcnow()})
                conn.execute(delete(console_sessions).where(console_sessions.c.user_id == user_id))
                _audit(conn, who, "user-disable", f"user {username.lower()} disabled")
            else:
                self._change(
                    conn,
                    username,
                    {"disabled_at": None, "failed_logins": 0, "locked_until": None},
                )
                _audit(conn, who, "user-change", f"user {username.lower()} enabled")

    def upsert_oidc_user(self, username: str, roles: Sequence[str], who: Who) -> UserRecord:
        """The user an identity provider vouched for, its roles as the provider says now;
        UserProblem when a local user has that name (a provider may not take a local account
        over) or the user is disabled here."""
        name = normal_username(username)
        role_text = " ".join(sorted(set(roles)))
        existing = self.get_user(name)
        if existing is None:
            return self.add_user(name, roles, who, password_hash=None, origin="oidc")
        if existing.origin != "oidc":
            raise UserProblem(f"user {name} is a local user")
        if existing.roles != _roles(role_text):
            self.set_roles(name, roles, who)
            refreshed = self.get_user(name)
            assert refreshed is not None
            return refreshed
        return existing

    # -- logins --------------------------------------------------------------------------

    def check_login(
        self,
        username: str,
        password: str,
        peer: str | None,
        policy: LoginPolicy | None = None,
    ) -> LoginResult:
        """Check a password; counts a failure (and locks at the limit), audits it, and on
        success resets the count and re-hashes an old-parameter hash. The caller creates the
        session (:meth:`create_session` audits the login).

        The lock-out holds however many guesses arrive at once: each attempt first claims a
        place in the failure count (one conditional UPDATE, under SQLite's writer lock or
        PostgreSQL's row lock) that a locked account, or one with ``max_failed`` attempts
        already counted, refuses, so at most ``max_failed`` passwords are ever checked before
        the lock. A failure keeps its place (the count lasts until the lock expires); a
        success gives the count back, but only when no lock was set meanwhile."""
        policy = policy or LoginPolicy()
        name = username.strip().lower()[:64]
        query = select(*_USER_COLUMNS).where(console_users.c.username == name)
        with self.db_engine.connect() as conn:
            row = conn.execute(query).first()
        who = Who(name or "(empty)", "console", peer)
        stored = row.password_hash if row is not None else None
        if row is None or row.disabled_at is not None or stored is None:
            _verify(None, password)  # the same hash as a known user's
            reason = (
                "unknown user"
                if row is None
                else "disabled"
                if row.disabled_at is not None
                else "no password (identity provider user)"
            )
            return self._failed(who, None, reason, policy)
        user_id = int(row.id)
        if not self._claim(user_id, policy):
            return self._failed(who, None, "locked", policy)
        try:
            matches = _verify(stored, password)
        except BaseException:
            self._unclaim(user_id)
            raise
        if not matches:
            return self._failed(who, user_id, "wrong password", policy)
        now = utcnow()
        values: dict[str, Any] = {"failed_logins": 0, "locked_until": None, "last_login_at": now}
        if _HASHER.check_needs_rehash(stored):
            values["password_hash"] = _HASHER.hash(password)
        with self._tx() as conn:
            done = conn.execute(
                update(console_users)
                .where(console_users.c.id == user_id, _unlocked(now))
                .values(**values)
            ).rowcount
        if not done:  # locked by other guesses while this one was checked
            return self._failed(who, None, "locked", policy)
        return LoginResult(self.get_user(name), "ok")

    def _claim(self, user_id: int, policy: LoginPolicy) -> bool:
        """Count an attempt before its password is checked; False (and the account locked)
        when it is locked or ``max_failed`` attempts are counted already."""
        now = utcnow()
        expired = and_(
            console_users.c.locked_until.is_not(None), console_users.c.locked_until <= now
        )
        counted = case((expired, 0), else_=console_users.c.failed_logins)
        with self._tx() as conn:
            claimed = conn.execute(
                update(console_users)
                .where(
                    console_users.c.id == user_id,
                    _unlocked(now),
                    counted < policy.max_failed,
                )
                .values(failed_logins=counted + 1, locked_until=None)
            ).rowcount
            if not claimed:
                # full of attempts but no lock yet (a burst, or attempts a crash cut short):
                # lock now, so the count is given back when the lock expires
                conn.execute(
                    update(console_users)
                    .where(console_users.c.id == user_id, console_users.c.locked_until.is_(None))
                    .values(locked_until=now + policy.lockout)
                )
        return bool(claimed)

    def _unclaim(self, user_id: int) -> None:
        with self._tx() as conn:
            conn.execute(
                update(console_users)
                .where(console_users.c.id == user_id, console_users.c.failed_logins > 0)
                .values(failed_logins=console_users.c.failed_logins - 1)
            )

    def _failed(
        self, who: Who, user_id: int | None, reason: str, policy: LoginPolicy
    ) -> LoginResult:
        """Audit a refusal; ``user_id``: a wrong password, whose attempt :meth:`_claim` counted
        already, locks the account when the count is at the limit (the count is kept)."""
        detail = reason
        with self._tx() as conn:
            if user_id is not None:
                count = conn.execute(
                    select(console_users.c.failed_logins).where(console_users.c.id == user_id)
                ).scalar_one()
                if count >= policy.max_failed:
                    locked = conn.execute(
                        update(console_users)
                        .where(
                            console_users.c.id == user_id, console_users.c.locked_until.is_(None)
                        )
                        .values(locked_until=utcnow() + policy.lockout)
                    ).rowcount
                    if locked:
                        detail = f"{reason}; locked after {count} failures"
            _audit(conn, who, "login-failed", detail, outcome="refused")
        return LoginResult(None, reason)

    def login_refused(self, actor: str, peer: str | None, detail: str) -> None:
        """A login refused before any password was checked (an identity provider's answer that
        did not hold, a user it named that is disabled here): audited ``login-failed``."""
        with self._tx() as conn:
            _audit(
                conn, Who(actor or "(unknown)", "console", peer), "login-failed", detail, "refused"
            )

    # -- sessions ------------------------------------------------------------------------

    def create_session(
        self,
        user: UserRecord,
        id_hash: str,
        csrf_token: str,
        *,
        method: str,
        peer: str | None,
        lifetime: timedelta,
        replaces: str | None = None,
    ) -> None:
        """A new session for ``user`` (the login audited); ``replaces``: the session the
        browser held before, ended (a login always gets a new id)."""
        now = utcnow()
        with self._tx() as conn:
            if replaces is not None:
                self._end_replaced(conn, replaces, peer)
            conn.execute(
                insert(console_sessions).values(
                    id_hash=id_hash,
                    user_id=user.id,
                    csrf_token=csrf_token,
                    method=method,
                    peer=peer,
                    created_at=now,
                    last_seen_at=now,
                    expires_at=now + lifetime,
                )
            )
            _audit(conn, Who(user.username, "console", peer), "login", f"by {method}")

    @staticmethod
    def _end_replaced(conn: Connection, id_hash: str, peer: str | None) -> None:
        """End the session a browser held when it logged in again, audited ``logout``."""
        held = conn.execute(
            select(console_users.c.username)
            .join(console_sessions, console_users.c.id == console_sessions.c.user_id)
            .where(console_sessions.c.id_hash == id_hash)
        ).scalar_one_or_none()
        gone = conn.execute(
            delete(console_sessions).where(console_sessions.c.id_hash == id_hash)
        ).rowcount
        if gone and held is not None:
            _audit(conn, Who(held, "console", peer), "logout", "replaced by a new login")

    def session(self, id_hash: str) -> SessionRecord | None:
        query = (
            select(
                console_sessions.c.id_hash,
                console_sessions.c.user_id,
                console_sessions.c.csrf_token,
                console_sessions.c.method,
                console_sessions.c.created_at,
                console_sessions.c.last_seen_at,
                console_sessions.c.expires_at,
                console_users.c.username,
                console_users.c.roles,
                console_users.c.disabled_at,
            )
            .join(console_users, console_users.c.id == console_sessions.c.user_id)
            .where(console_sessions.c.id_hash == id_hash)
        )
        with self.db_engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return SessionRecord(
            id_hash=row.id_hash,
            user_id=int(row.user_id),
            username=row.username,
            roles=_roles(row.roles),
            disabled=row.disabled_at is not None,
            csrf_token=row.csrf_token,
            method=row.method,
            created_at=aware(row.created_at),
            last_seen_at=aware(row.last_seen_at),
            expires_at=aware(row.expires_at),
        )

    def touch_session(self, id_hash: str, now: datetime) -> None:
        """The session was used now (its idle clock starts again)."""
        with self._tx() as conn:
            conn.execute(
                update(console_sessions)
                .where(console_sessions.c.id_hash == id_hash)
                .values(last_seen_at=now)
            )

    def end_session(
        self, id_hash: str, *, action: str, actor: str, peer: str | None, detail: str = ""
    ) -> bool:
        """End a session (``logout`` or ``session-expired``), audited; False when it had ended
        already (two requests racing record it once)."""
        with self._tx() as conn:
            gone = conn.execute(
                delete(console_sessions).where(console_sessions.c.id_hash == id_hash)
            ).rowcount
            if gone:
                _audit(conn, Who(actor, "console", peer), action, detail or action)
        return bool(gone)

    def sweep_sessions(self, now: datetime, idle: timedelta) -> int:
        """End every session idle longer than ``idle`` or past its lifetime (each one audited as
        session-expired); how many."""
        stale = or_(
            console_sessions.c.expires_at <= now, console_sessions.c.last_seen_at <= now - idle
        )
        query = (
            select(console_sessions.c.id_hash, console_users.c.username)
            .join(console_users, console_users.c.id == console_sessions.c.user_id)
            .where(stale)
        )
        with self._tx() as conn:
            rows = conn.execute(query).all()
            for row in rows:
                conn.execute(
                    delete(console_sessions).where(
                        and_(console_sessions.c.id_hash == row.id_hash, stale)
                    )
                )
                _audit(conn, Who(row.username, "console", None), "session-expired", "idle")
        return len(rows)
