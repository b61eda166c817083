"""How the HTTP API checks bearer tokens: ``ENGINE_AUTH_*`` environment variables.

Three modes:

``dev``
    HS256 tokens signed with a secret in ``dev_secret_file`` (default ``VAR_DIR/dev-jwt-secret``,
    see :func:`auth_settings_for`); in development the file is created
    (random bytes, mode 0600) on first use, and ``engine token`` mints tokens with it.
``keyfile``
    RS256/ES256 tokens checked against a PEM public key in ``key_file`` (the identity provider
    keeps the private key).
``jwks``
    RS256/ES256 tokens checked against the key set published at ``jwks_url`` (RFC 7517), chosen by
    the token's ``kid`` and cached for ``jwks_ttl_s`` seconds.

Outside development (``ENGINE_ENV`` other than ``development``) the engine refuses to start with a
missing, short or placeholder dev secret, and fetches a JWKS only over https. The checks that read
files run when the app is built (``engine.api.keys``); the ones here need no I/O.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from engine.settings import Settings, settings_from_environment

__all__ = ["ASYMMETRIC_ALGORITHMS", "AuthMode", "AuthSettings", "auth_settings_for"]

#: what ``keyfile`` and ``jwks`` accept; HMAC and ``none`` are never accepted there
ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512"})


DEV_SECRET_NAME = "dev-jwt-secret"


class AuthMode(StrEnum):
    DEV = "dev"
    KEYFILE = "keyfile"
    JWKS = "jwks"


class AuthSettings(BaseSettings):
    """Token checking for the HTTP API. Defaults suit ``make run`` on a developer's machine."""

    model_config = SettingsConfigDict(
        env_prefix="ENGINE_AUTH_", extra="ignore", populate_by_name=True
    )

    #: ``development`` allows a generated dev secret and http JWKS URLs; anything else does not
    environment: str = Field(default="development", validation_alias="ENGINE_ENV")
    mode: AuthMode = AuthMode.DEV
    #: PEM public key (RSA >= 2048 bits, or EC P-256/P-384/P-521) for ``keyfile``
    key_file: Path | None = None
    jwks_url: str | None = None
    jwks_ttl_s: float = Field(default=300.0, gt=0)
    jwks_timeout_s: float = Field(default=5.0, gt=0)
    #: the ``aud`` every token must carry
    audience: str = Field(default="engine", min_length=1)
    #: the ``iss`` every token must carry, when set
    issuer: str | None = None
    #: accepted in ``keyfile``/``jwks`` (comma-separated in the environment); ``dev`` is HS256 only
    algorithms: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["RS256", "ES256"])
    #: :func:`auth_settings_for` puts it under ``Settings.var_dir`` unless set explicitly
    dev_secret_file: Path = Path("var") / DEV_SECRET_NAME
    #: where the roles are: a list (or space-separated string) claim; dots walk into objects
    #: (``realm_access.roles``). ``scope`` is read too.
    roles_claim: str = "roles"
    #: identity-provider role names → engine roles (admin, integration, viewer), e.g.
    #: ``{"ehr-feed": "integration"}``; JSON in the environment
    role_aliases: dict[str, str] = Field(default_factory=dict)
    #: clock skew allowed on ``exp``/``nbf``
    leeway_s: int = Field(default=30, ge=0, le=300)
    #: ask a viewer token for ``GET /metrics`` (open by default, like most exporters)
    metrics_require_token: bool = False

    @property
    def is_development(self) -> bool:
        return self.environment.strip().lower() == "development"

    @field_validator("algorithms", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("algorithms")
    @classmethod
    def _only_asymmetric(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - ASYMMETRIC_ALGORITHMS)
        if unknown or not value:
            raise ValueError(
                f"algorithms must be some of {sorted(ASYMMETRIC_ALGORITHMS)}; got {value}"
            )
        return value

    @field_validator("role_aliases")
    @classmethod
    def _known_roles(cls, value: dict[str, str]) -> dict[str, str]:
        bad = sorted(v for v in value.values() if v not in {"admin", "integration", "viewer"})
        if bad:
            raise ValueError(f"role_aliases may map only to admin, integration, viewer; got {bad}")
        return value

    @model_validator(mode="after")
    def _mode_needs(self) -> AuthSettings:
        if self.mode is AuthMode.KEYFILE and self.key_file is None:
            raise ValueError("mode keyfile needs ENGINE_AUTH_KEY_FILE (a PEM public key)")
        if self.mode is AuthMode.JWKS:
            if not self.jwks_url:
                raise ValueError("mode jwks needs ENGINE_AUTH_JWKS_URL")
            if not self.is_development and not self.jwks_url.startswith("https://"):
                raise ValueError("ENGINE_AUTH_JWKS_URL must use https outside development")
        return self


def auth_settings_for(settings: Settings) -> AuthSettings:
    """``AuthSettings`` from the environment, the dev secret under ``settings.var_dir`` by default.

    ``create_app`` and ``engine token`` both use this, so they find the same secret wherever
    ``ENGINE_VAR_DIR`` points.

    Relative ``ENGINE_AUTH_KEY_FILE`` and ``ENGINE_AUTH_DEV_SECRET_FILE`` are the engine home's
    (``settings.home``), and a value that does not fit is one ConfigError line naming its variable.
    """
    auth: AuthSettings = settings_from_environment(AuthSettings)
    files: dict[str, Any] = {"dev_secret_file": settings.var_dir / DEV_SECRET_NAME}
    for name in ("dev_secret_file", "key_file"):
        path = getattr(auth, name)
        if name in auth.model_fields_set and path is not None:
            path = path.expanduser()
            files[name] = path if path.is_absolute() else settings.home / path
    return auth.model_copy(update=files)
