"""Development tokens: ``mint_dev_token`` signs an HS256 JWT with the dev secret.

For ``make run``, the tests and ``engine token``: a developer gets a token for a role without an
identity provider. Refused outside development — real deployments use their identity provider
(``keyfile`` or ``jwks`` mode), and the engine never holds a signing key it could leak there.
"""

from __future__ import annotations

import time
from typing import Any

from jose import jwt

from engine.api.auth import Role
from engine.api.auth_settings import AuthSettings
from engine.api.keys import dev_secret
from engine.errors import ConfigError

__all__ = ["mint_dev_token"]


def mint_dev_token(
    settings: AuthSettings, *, role: str, ttl_s: int = 3600, subject: str = "dev"
) -> str:
    """A token for ``role`` (admin, integration, viewer) valid for ``ttl_s`` seconds."""
    if not settings.is_development:
        raise ConfigError("dev tokens are for development only (ENGINE_ENV=development)")
    try:
        engine_role = Role(role)
    except ValueError:
        raise ConfigError(f"unknown role {role!r}; use admin, integration or viewer") from None
    if ttl_s <= 0:
        raise ConfigError("ttl_s must be positive")
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": subject,
        "aud": settings.audience,
        "iat": now,
        "exp": now + ttl_s,
    }
    *parents, last = settings.roles_claim.split(".")  # realm_access.roles nests, as it is read
    target = claims
    for part in parents:
        target = target.setdefault(part, {})
    target[last] = [engine_role.value]
    if settings.issuer:
        claims["iss"] = settings.issuer
    token: str = jwt.encode(claims, dev_secret(settings), algorithm="HS256")
    return token
