"""How an HTTP adapter authenticates: the ``auth`` key of a route file's FHIR destination and of a
payer file, as config models.

``none``, ``bearer`` (RFC 6750, the token in an environment variable), ``oauth2`` (the client
credentials grant, RFC 6749 section 4.4, run by :mod:`engine.adapters.oauth2`) or
``smart-backend`` (SMART Backend Services: a JWT client assertion signed with the engine's own
key, run by :mod:`engine.adapters.smart`; Epic). Secrets never sit in a configuration file: the
file names the environment variable that holds one (``token_env``, ``client_secret_env``), and
the adapter reads it when it is built; a ``smart-backend`` destination has no secret but the
engine's signing key (``engine keys``).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["BearerAuth", "NoAuth", "OAuth2Auth", "SmartBackendAuth"]

_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_env(value: str) -> str:
    if not _ENV_RE.match(value):
        raise ValueError(
            f"{value!r} is not an environment variable name (the file names the variable; "
            "the secret itself never goes in a route file)"
        )
    return value


class NoAuth(_Strict):
    """No Authorization header."""

    type: Literal["none"] = "none"


class BearerAuth(_Strict):
    """``Authorization: Bearer <token>`` with the token read from an environment variable."""

    type: Literal["bearer"]
    token_env: str

    @field_validator("token_env")
    @classmethod
    def _env(cls, value: str) -> str:
        return _check_env(value)


class OAuth2Auth(_Strict):
    """OAuth 2.0 client credentials grant (RFC 6749 section 4.4); the token is cached until it
    expires and fetched again when the server answers 401."""

    type: Literal["oauth2"]
    token_url: str
    client_id: str
    client_secret_env: str
    scope: str | None = None
    #: how the client authenticates to the token endpoint (RFC 6749 section 2.3.1): HTTP Basic
    #: (every server must accept it) or client_id/client_secret in the form body
    client_auth: Literal["basic", "post"] = "basic"

    @field_validator("client_secret_env")
    @classmethod
    def _env(cls, value: str) -> str:
        return _check_env(value)

    @field_validator("token_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"token_url {value!r} must start with http:// or https://")
        return value


class SmartBackendAuth(_Strict):
    """SMART Backend Services (client-confidential-asymmetric): client credentials with a JWT
    client assertion signed by the engine's active key (``engine keys``). The token URL comes
    from ``{base_url}/.well-known/smart-configuration`` unless ``token_url`` is given."""

    type: Literal["smart-backend"]
    client_id: str = Field(min_length=1, max_length=200)
    scope: str = Field(min_length=1, max_length=2000)
    token_url: str | None = None

    @field_validator("token_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"token_url {value!r} must start with http:// or https://")
        return value
