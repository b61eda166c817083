"""A logged-in console user: what the session says of who is asking (its own module, so the
sessions and the pages' dependencies both use it without importing each other)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.api.auth import Role

__all__ = ["ConsoleUser"]


@dataclass(frozen=True)
class ConsoleUser:
    """A logged-in console user (from the session)."""

    username: str
    roles: frozenset[Role]
    #: the session's id (never shown) and its CSRF token (put in every form, ``csrf_token``)
    session_id: str
    csrf_token: str
    #: where the request came from (for the audit trail)
    peer: str = ""

    def may(self, role: Role) -> bool:
        return role in self.roles or Role.ADMIN in self.roles
