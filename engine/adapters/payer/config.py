"""Payer files (YAML): how the engine reaches each payer it asks about eligibility.

A payer file holds two keys, both optional::

    default:                      # for payer IDs no file lists (omit it to refuse them)
      adapter: stub
    payers:                       # by payer ID: IN1-3 (insurance company ID) = 270 NM1*PR NM109
      SYNPPO1:
        name: SYNTHETIC PPO HEALTH PLAN
        adapter: x12-http         # stub | x12-http
        url: https://clearinghouse.example/core/realtime
        auth: {type: oauth2, token_url: https://clearinghouse.example/oauth2/token,
               client_id: practice-17, client_secret_env: PAYER_CLIENT_SECRET}
        sender_id: PRACTICE17     # ISA06/GS02 and the CORE SenderID
        receiver_id: CLEARHOUSE   # ISA08/GS03 and the CORE ReceiverID
        max_concurrency: 4        # requests in flight to this payer
        timeout_s: 20             # CAQH CORE real-time: an answer within 20 seconds
        retry: {max_attempts: 3, base_delay_s: 5, max_delay_s: 120}

The built-in file (``engine/adapters/payer/specs/payers.yaml``) makes the default the in-process
stub payer, so ``make run`` answers for any synthetic payer ID. A site directory
(``ENGINE_PAYERS_DIR``) layers over it as route files do (:mod:`engine.routes.loader`): a site
file *replaces* the built-in file of the same name (a site ``payers.yaml`` without ``default``
refuses payer IDs it does not list), other site files add payers. Keep roster files out of that
directory (every ``*.yaml`` in it is read as a payer file). A payer ID, or ``default``, written
in two files is an error naming both; every error names the file, the line and the key (a
misspelt key first). Secrets never sit in a payer file: ``auth`` names the environment variable
that holds the client secret (``client_secret_env``), as route files do.

Plain ``http://`` is accepted only for a loopback host (a stub on this machine): eligibility
requests carry PHI, and ``verify_tls`` stays on unless a file says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from ipaddress import ip_address
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.adapters.auth import NoAuth, OAuth2Auth
from engine.errors import ConfigError
from engine.retry import RetryPolicy
from engine.yamlfile import read_yaml

__all__ = [
    "PayerConfig",
    "PayerFile",
    "PayerSet",
    "default_payers_file",
    "load_payers",
]

PayerAuth = Annotated[NoAuth | OAuth2Auth, Field(discriminator="type")]

#: eligibility retries: fewer and sooner than deliveries (a schedule, not a queue, waits on them)
_RETRY = RetryPolicy(max_attempts=3, base_delay_s=5.0, max_delay_s=120.0)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


class PayerConfig(_Strict):
    """One payer: which adapter reaches it and how."""

    #: the payer's name, for the 270's NM1*PR NM103 and for people reading logs
    name: str = ""
    adapter: Literal["stub", "x12-http"] = "stub"
    max_concurrency: int = Field(default=4, ge=1, le=100)
    timeout_s: float = Field(default=20.0, gt=0, le=300)
    retry: RetryPolicy = _RETRY
    #: x12-http: the real-time endpoint; stub: a stub payer over HTTP instead of in-process
    url: str | None = None
    #: x12-http: none, or the OAuth 2.0 client credentials grant (RFC 6749 section 4.4)
    auth: PayerAuth = Field(default_factory=NoAuth)
    #: ISA06/GS02 of the 270 and the CORE envelope's SenderID
    sender_id: str = Field(default="ENGINE", min_length=1, max_length=15)
    #: ISA08/GS03 of the 270 and the CORE envelope's ReceiverID ("" = the payer ID)
    receiver_id: str = Field(default="", max_length=15)
    verify_tls: bool = True
    #: x12-http: ``core`` (CAQH CORE HTTP MIME multipart) or ``plain`` (application/edi-x12)
    envelope: Literal["core", "plain"] = "core"
    #: stub: the roster YAML (relative to the payer file); default the built-in roster
    roster: Path | None = None
    #: stub: a fixed delay before each answer, plus up to ``jitter_ms`` more
    latency_ms: int = Field(default=0, ge=0)
    jitter_ms: int = Field(default=0, ge=0)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url {value!r} must be an http:// or https:// URL")
        if parts.scheme == "http" and not _loopback(parts.hostname):
            raise ValueError(
                f"url {value!r}: plain http is only for a stub on this machine (127.0.0.1, "
                "localhost); eligibility requests carry PHI, use https"
            )
        return value

    @model_validator(mode="after")
    def _adapter_fields(self) -> PayerConfig:
        given = self.model_fields_set
        if self.adapter == "x12-http":
            if self.url is None:
                raise ValueError("an x12-http payer needs a url")
            wrong = sorted(given & {"roster", "latency_ms", "jitter_ms"})
            if wrong:
                raise ValueError(f"{', '.join(wrong)} apply to the stub adapter only")
        elif self.url is None and isinstance(self.auth, OAuth2Auth):
            raise ValueError("auth applies to a payer reached over HTTP (x12-http, or a stub url)")
        return self


class PayerFile(_Strict):
    """One payer file."""

    default: PayerConfig | None = None
    payers: dict[str, PayerConfig] = Field(default_factory=dict)

    @field_validator("payers", mode="before")
    @classmethod
    def _ids(cls, value: object) -> object:
        # a payer ID of digits (``60054``) is read by YAML as a number
        if isinstance(value, dict):
            return {str(k): v for k, v in value.items()}
        return value

    @field_validator("payers")
    @classmethod
    def _check_ids(cls, value: dict[str, PayerConfig]) -> dict[str, PayerConfig]:
        for payer_id in value:
            if (
                not (2 <= len(payer_id) <= 80)
                or not payer_id.isascii()
                or any(ch in "*^:~" or not ch.isprintable() for ch in payer_id)
            ):
                raise ValueError(
                    f"payer ID {payer_id!r} must be 2 to 80 printable ASCII characters without "
                    "an X12 delimiter (* ^ : ~)"
                )
        return value


@dataclass
class PayerSet:
    """Every payer, validated; ``origin`` says which file each came from (``payer:<id>``,
    ``default``)."""

    payers: dict[str, PayerConfig] = field(default_factory=dict)
    default: PayerConfig | None = None
    origin: dict[str, str] = field(default_factory=dict)

    def config_for(self, payer_id: str) -> PayerConfig | None:
        """The payer's own config, else the default (None: the engine does not ask this payer)."""
        return self.payers.get(payer_id, self.default)


def default_payers_file() -> Path:
    """The built-in payer file shipped with the engine (``specs/payers.yaml``)."""
    return Path(str(resources.files("engine.adapters.payer") / "specs" / "payers.yaml"))


def _files(builtin: Path, site_dir: Path | None) -> list[tuple[str, Path]]:
    """(where, path) of every file to read: the built-in file unless a site file of the same
    name replaces it, then the site's files in name order."""
    chosen: dict[str, tuple[str, Path]] = {}
    if builtin.is_file():
        chosen[builtin.name] = (f"(built-in) {builtin.name}", builtin)
    if site_dir is not None:
        if not site_dir.is_dir():
            raise ConfigError(f"{site_dir}: payers directory not found")
        for p in sorted(site_dir.glob("*.yaml")):
            chosen[p.name] = (f"{site_dir}/{p.name}", p)
    return list(chosen.values())


_SECRET_HINT = (
    "a secret never goes in a payer file: name the environment variable that holds it, "
    "in client_secret_env"
)


def _resolved(config: PayerConfig, base: Path) -> PayerConfig:
    """``roster`` relative to the directory of the file that names it."""
    if config.roster is None or config.roster.is_absolute():
        return config
    return config.model_copy(update={"roster": base / config.roster})


def load_payers(site_dir: Path | None = None, *, builtin: Path | None = None) -> PayerSet:
    """Load the built-in payer file (or ``builtin``), then the site directory over it.

    Raises :class:`ConfigError` naming the file, line and key of the first problem.
    """
    out = PayerSet()
    for where, path in _files(builtin or default_payers_file(), site_dir):
        spec = read_yaml(path, where).validate(PayerFile, secret_hint=_SECRET_HINT)
        if spec.default is not None:
            seen = out.origin.get("default")
            if seen is not None:
                raise ConfigError(f"{where}, default: the default payer is already set in {seen}")
            out.default = _resolved(spec.default, path.parent)
            out.origin["default"] = where
        for payer_id, config in spec.payers.items():
            seen = out.origin.get(f"payer:{payer_id}")
            if seen is not None:
                raise ConfigError(
                    f"{where}, payers.{payer_id}: payer {payer_id!r} is already defined in {seen}"
                )
            out.payers[payer_id] = _resolved(config, path.parent)
            out.origin[f"payer:{payer_id}"] = where
    return out
