"""The engine's one Settings object: every knob, read from ENGINE_* environment variables.

``engine serve --mllp-port ...`` and friends override the same fields. Nothing is read at import
time: call :func:`load_settings` (the CLI and ``create_app`` do). Each field's comment names the
parts of the engine that read it.

Every file lives under one **home** (``ENGINE_HOME``; default: the directory the command was
started in, fixed when the settings are loaded): a relative path in a setting (``var_dir``,
``routes_dir``, TLS files, a relative SQLite URL) is made absolute against it at once, so nothing
depends on the current directory later, and ``engine token`` or ``engine messages`` run from any
folder with ``ENGINE_HOME`` set find the same store and secret. A value pydantic refuses becomes
one line naming the variable (``ENGINE_MLLP_PORT: 'abc' is not a port number (0-65535)``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from engine.errors import ConfigError

__all__ = [
    "Settings",
    "engine_home",
    "load_settings",
    "settings_from_environment",
    "settings_problem",
]


def engine_home() -> Path:
    """``ENGINE_HOME`` (absolute), else the current directory: the default of ``Settings.home``.

    ``engine serve`` and ``engine worker`` put their home into the environment, so the processes
    they start and the adapters that resolve paths from route files (a ``file`` destination's
    folder) agree with the settings.
    """
    value = os.environ.get("ENGINE_HOME", "").strip()
    return Path(value).expanduser().absolute() if value else Path.cwd()


class Settings(BaseSettings):
    """Runtime configuration. Defaults are the embedded set-up that ``make run`` starts."""

    model_config = SettingsConfigDict(env_prefix="ENGINE_", extra="ignore")

    # Each setting says who reads it. "the receiver" is engine/service.py (``engine serve``: MLLP
    # and HTTP listeners, ingest, the API); "the worker" is engine/flow/worker.py (the process that
    # routes, maps and delivers, started by the receiver or by ``engine worker``).

    #: the folder every relative path resolves against (settings and route files); shown in the
    #: start banner. Read through the resolved fields below by every part of the engine.
    home: Path = Field(default_factory=engine_home)
    #: where the embedded SQLite database (the default of ``database_url``: read by the receiver,
    #: the worker and the CLI), the metrics files of the receiver and its workers (var/metrics,
    #: the receiver's) and the API's development signing secret (engine/api/app.py) live.
    var_dir: Path = Path("var")
    #: SQLAlchemy URL; default SQLite under var_dir. Read through :meth:`resolved_database_url` by
    #: the receiver, the worker, the scheduler's job store and the CLI's ``messages`` commands.
    database_url: str = ""

    #: where the MLLP and HTTP listeners bind. Read by the receiver (and printed by the CLI).
    mllp_host: str = "0.0.0.0"
    mllp_port: int = Field(2575, ge=0, le=65535)
    http_host: str = "0.0.0.0"
    http_port: int = Field(8080, ge=0, le=65535)

    #: MLLP limits (HL7 v2.5.1 has none; a production interface needs them). Read by the MLLP
    #: server (engine/adapters/mllp/server.py); ``max_message_bytes`` also caps the bodies of the
    #: HTTP endpoints (engine/api/body.py, routes_hl7.py, routes_fhir.py). At most 256 MB: the
    #: store sends a message to PostgreSQL in base64 (a third more), which holds 1 GB a value.
    max_message_bytes: int = Field(16 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    idle_timeout_s: float = Field(300.0, gt=0)
    frame_timeout_s: float = Field(30.0, gt=0)
    max_connections: int = Field(200, ge=1)
    #: connections one address may hold at once (so one sender cannot take every slot). Read by
    #: the MLLP server (engine/adapters/mllp/server.py), passed by engine/service.py.
    max_connections_per_peer: int = Field(20, ge=1)
    #: HTTP limits (the API, /hl7v2, /fhir, the console), read by engine/service.py: a request's
    #: head must arrive within ``http_head_timeout_s`` of the connect or of the previous answer
    #: (engine/api/http_limits.py); a body read by /hl7v2 and /fhir must grow by 64 KiB (or
    #: end) within each ``http_body_timeout_s`` (408 past it: engine/api/body.py), any other
    #: body within the two time-outs together (engine/api/http_limits.py); connections at once
    #: in all and from one address (behind a proxy every connection is the proxy's: raise it).
    http_head_timeout_s: float = Field(10.0, gt=0)
    http_body_timeout_s: float = Field(60.0, gt=0)
    http_max_connections: int = Field(256, ge=1)
    http_max_connections_per_peer: int = Field(64, ge=1)

    #: charset for messages whose MSH-18 is empty. Read by ingest, the processor and
    #: ``engine convert``.
    default_charset: str = "utf-8"

    #: this engine's identity in the MSH of ACKs it sends (MSH-3/4 of an ACK echo the original's 5/6
    #: when those are filled; these are the fallback). Read by the receiver's ACK builder.
    application_name: str = "ENGINE"
    facility_name: str = "ENGINE"

    #: a site directory of mapping files layered over the built-in ones (docs/MAPPINGS.md). Read by
    #: the receiver (its gate), the worker and ``engine convert``.
    mappings_dir: Path | None = None
    #: a site directory of route files layered over the built-in example (engine/routes/specs).
    #: Read by the receiver (its gate and destinations) and the worker.
    routes_dir: Path | None = None
    #: retention: delivered messages are purged after this many days (undelivered never are).
    #: Read by the worker's retention loop.
    retention_days: int = Field(30, ge=1)
    #: retention of the audit trail, separate from the messages' (six years by default: HIPAA
    #: keeps documentation that long); the oldest records are pruned behind the hash chain's
    #: anchor (engine/store/audit.py). Read by the worker's retention loop.
    audit_retention_days: int = Field(2190, ge=1)
    #: the audit trail's key (engine/audit/key.py): a file of exactly 32 bytes, mode 0600, outside
    #: the database and the repository; its HMAC-SHA256 hashes the chain's records, so whoever
    #: can write the database but not read this file cannot forge them. Default
    #: ``var_dir/audit-key``, made (32 random bytes, 0600) on first use; nodes sharing one
    #: database must share this file. Read by the receiver, the worker and the CLI.
    audit_key_file: Path | None = None
    #: alerts (engine/alerts, rules in ``routes_dir/alerts.yaml``): seconds between two
    #: evaluations. Read by the worker's alerts loop (engine/jobs/alerts.py).
    alerts_interval_s: float = Field(60.0, ge=1, le=3600)
    #: the receiver starts a worker process beside it (several processes may share one
    #: PostgreSQL; a receive-only process sets this false). Read by the receiver.
    workers: bool = True
    #: how many worker processes the receiver starts (``ENGINE_WORKER_PROCESSES``). Each has its
    #: own interpreter, so mapping and delivery can use more than one core: one process maps and
    #: delivers about 900 messages/s of the example's routes on this 2-core machine (its GIL
    #: binds; README, Measured figures), two kept up with 1,000/s. They share the queue through
    #: the database (claims, per-patient order), as nodes on one PostgreSQL do; on SQLite only
    #: the first runs the singleton jobs (eligibility, pulls, retention, alerts) and, beside the
    #: receiver, the WAL checkpoints; on PostgreSQL they elect a leader as any nodes do. Each
    #: holds its own connections and about 130 MB. Read by the receiver.
    worker_processes: int = Field(2, ge=1, le=16)
    #: how many group commits the receiver keeps in flight at once (``ENGINE_INGEST_WRITERS``):
    #: on PostgreSQL, while one batch waits for its commit the next is written (2 by default:
    #: with its workers on this 2-core machine, 1,121-1,143 ACKs/s against 929-972 with one, 7
    #: December; 3 gave less). SQLite has one writer: always 1 there. Read by the receiver.
    ingest_writers: int = Field(2, ge=1, le=8)
    #: seconds after its last heartbeat (every 2 s) a node counts as dead, its claims taken over
    #: by the others and its unfinished job runs resumed (``ENGINE_NODE_DEAD_AFTER_S``; the
    #: same on every node of a database). Raise it where hosts stand still for seconds (a
    #: paused VM, a live migration): a node taken for dead meanwhile keeps working, and what
    #: it was sending may go twice. Lower means a killed node's patients wait less. Read by
    #: the receiver (the console's view) and every worker process.
    node_dead_after_s: float = Field(10.0, ge=6.0, le=120.0)
    #: validate every FHIR resource ``engine convert`` writes against fhir.resources' R4B models
    #: (``--validate-fhir``). Read by engine/convert.py only; the running engine does not.
    validate_fhir: bool = False

    #: eligibility (X12 270/271): when the nightly job runs (cron, in the engine's time zone),
    #: whether it also runs at start, how many business days ahead it looks, and who is asking.
    #: Read by the scheduler (engine/jobs/scheduler.py, in the worker) and the eligibility job
    #: (engine/jobs/eligibility.py); the provider and sender also by ``engine convert`` (270s).
    eligibility_cron: str = "0 18 * * *"
    eligibility_days: int = Field(2, ge=1, le=30)
    eligibility_on_start: bool = False
    eligibility_provider_npi: str = "1234567893"
    eligibility_provider_name: str = "EXAMPLE FAMILY PRACTICE"
    x12_sender_id: str = "ENGINE"
    #: a site directory of payer files layered over the built-ins (engine/adapters/payer/specs).
    #: Read by the worker's eligibility job, the receiver's eligibility API and the CLI.
    payers_dir: Path | None = None
    #: the practice's time zone for the eligibility schedule and the worklist's day. Read by the
    #: scheduler, the eligibility job and API, and the CLI. (HL7v2 times without an offset take
    #: the mapping set's ``site.yaml`` time zone instead: docs/MAPPINGS.md.)
    timezone: str = "America/New_York"

    #: logging, set up by the CLI for the receiver and by the worker process for itself
    log_level: str = "INFO"
    #: json (one object a line, for log shippers) or text (for a terminal)
    log_format: str = Field("json", pattern="^(json|text)$")

    #: MLLP over TLS: the server's certificate and key (PEM); with ``mllp_tls_client_ca`` the
    #: listener requires client certificates signed by that CA (mutual TLS). Read by the receiver.
    mllp_tls_cert: Path | None = None
    mllp_tls_key: Path | None = None
    mllp_tls_client_ca: Path | None = None

    #: the engine's public base URL (``https://engine.example.org``): its JWKS is published at
    #: ``<this>/.well-known/jwks.json``, the ``jku`` of its client assertions. Read by engine/keys.
    public_base_url: str | None = None

    #: documents (engine/documents): the largest document taken, in bytes (a larger one is refused
    #: one byte past the limit, its first 4 KiB kept); the watched folder scanners and fax servers
    #: drop into (default ``var_dir/inbox``; a relative path is the home's; empty: no folder);
    #: the pattern a dropped file's name tells who and what by when it has no sidecar (named
    #: groups ``mrn``, ``type``, ``date`` YYYYMMDD or YYYY-MM-DD; type and date optional). Read
    #: by the receiver (POST /documents, the watched folder in engine/documents/folder.py).
    max_document_bytes: int = Field(25 * 1024 * 1024, ge=1024)
    documents_inbox: str | None = None
    documents_name_pattern: str = r"^(?P<mrn>[A-Za-z0-9]+)_(?P<type>[a-z0-9-]+)_(?P<date>\d{8})"

    #: the console's sessions (engine/console/sessions.py): idle minutes before a session ends
    #: (a float, so tests can idle for seconds), a session's absolute lifetime, failed logins in a
    #: row that lock an account and for how long, and the file holding the key that signs the
    #: session cookie (default ``var_dir/console-secret``, made 0600 on first use; nodes sharing
    #: one database share this file too). Read by the receiver's console.
    console_idle_minutes: float = Field(15.0, gt=0)
    console_session_hours: float = Field(12.0, gt=0)
    console_max_failed_logins: int = Field(5, ge=1)
    console_lockout_minutes: float = Field(15.0, gt=0)
    console_secret_file: Path | None = None

    #: HTTPS on the HTTP port (API and console): the certificate (chain) and key, PEM. Read by
    #: the receiver (engine/service.py); under TLS the console's cookie is Secure and every
    #: answer carries Strict-Transport-Security (engine/api/security.py).
    http_tls_cert: Path | None = None
    http_tls_key: Path | None = None

    #: OpenID Connect login for the console (optional; engine/console/pages_auth.py): the
    #: provider's issuer (its discovery document is ``<issuer>/.well-known/openid-configuration``;
    #: https, or http on a loopback address), this engine's client id and the file holding its
    #: client secret (none: a public client, PKCE only), the scopes asked for, the claim that
    #: carries a user's roles and how the provider's values map to engine roles (JSON,
    #: ``{"engine-admins": "admin"}``; a value that is an engine role's name counts as that role),
    #: the claim naming the user, and the name on the login page's button. Read by the receiver's
    #: console.
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret_file: Path | None = None
    oidc_scopes: str = "openid profile email"
    oidc_roles_claim: str = "roles"
    oidc_role_map: dict[str, str] = Field(default_factory=dict)
    oidc_username_claim: str = "preferred_username"
    oidc_name: str = "identity provider"

    @field_validator("documents_name_pattern")
    @classmethod
    def _name_pattern(cls, value: str) -> str:
        try:
            groups = re.compile(value).groupindex
        except re.error as exc:
            raise ValueError(f"is not a regular expression ({exc})") from None
        if "mrn" not in groups:
            raise ValueError("needs a named group mrn: (?P<mrn>...)")
        return value

    def resolved_documents_inbox(self) -> Path | None:
        """The watched folder (absolute): ``var_dir/inbox`` unless set; None when set empty."""
        if self.documents_inbox is None:
            return self.var_dir / "inbox"
        value = self.documents_inbox.strip()
        if not value:
            return None
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.home / path

    @field_validator("home")
    @classmethod
    def _home_is_a_folder(cls, value: Path) -> Path:
        home = value.expanduser().absolute()
        if not home.is_dir():
            raise ValueError(f"{home} is not a folder")
        return home

    @model_validator(mode="after")
    def _paths_under_home(self) -> Settings:
        """Every relative path setting made absolute against ``home``, once, now."""
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name != "home" and isinstance(value, Path):
                value = value.expanduser()
                setattr(self, name, value if value.is_absolute() else self.home / value)
        return self

    def resolved_database_url(self) -> str:
        """``database_url`` (a relative SQLite path made the home's) or SQLite at
        ``var_dir/engine.db``."""
        if not self.database_url:
            return f"sqlite:///{(self.var_dir / 'engine.db').as_posix()}"
        match = _SQLITE_FILE.match(self.database_url)
        if match and match["path"] and not match["path"].startswith(("/", ":memory:")):
            path = (self.home / match["path"]).as_posix()
            return f"{match['scheme']}:///{path}{match['query'] or ''}"
        return self.database_url


#: a SQLite URL with a file path (``sqlite:///path`` relative, ``sqlite:////path`` absolute)
_SQLITE_FILE = re.compile(r"^(?P<scheme>sqlite(\+\w+)?):///(?P<path>[^?]*)(?P<query>\?.*)?$")

#: what pydantic's error types mean for a value typed into an environment variable
_PLAIN = {
    "int_parsing": "is not a whole number",
    "int_from_float": "is not a whole number",
    "float_parsing": "is not a number",
    "bool_parsing": "is not true or false",
    "path_type": "is not a path",
}


def settings_problem(
    exc: ValidationError, model: type[BaseSettings], flags: frozenset[str] = frozenset()
) -> str:
    """One line naming the setting (``ENGINE_MLLP_PORT``, or ``--mllp-port`` when a command-line
    flag set it) and what is wrong with its value. URLs are not echoed (they may hold a password).
    """
    errors = exc.errors(include_url=False)
    err = errors[0]
    field = str(err["loc"][0]) if err["loc"] else ""
    name = _setting_name(model, field, flags)
    text = str(err["msg"]).removeprefix("Value error, ").removeprefix("Input ")
    value = err.get("input")
    if field.endswith("port") and err["type"] in _PLAIN.keys() | {
        "greater_than_equal",
        "less_than_equal",
    }:
        text = "is not a port number (0-65535)"
    else:
        text = _PLAIN.get(err["type"], text)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    show = (
        err["type"] != "value_error"
        and isinstance(value, str | int | float)
        and "url" not in field
        and "secret" not in field
    )
    if not name:
        return f"{text}{more}"
    return f"{name}: {value!r} {text}{more}" if show else f"{name}: {text}{more}"


def _setting_name(model: type[BaseSettings], field: str, flags: frozenset[str]) -> str:
    if not field:
        return ""
    if field in flags:
        return "--" + field.replace("_", "-")
    info = model.model_fields.get(field)
    if info is None:  # reported under its alias (``ENGINE_ENV``)
        return field.upper()
    if isinstance(info.validation_alias, str):
        return info.validation_alias.upper()
    return f"{model.model_config.get('env_prefix', '')}{field}".upper()


def settings_from_environment(
    model: type[BaseSettings], overrides: dict[str, Any] | None = None
) -> Any:
    """``model(**overrides)`` read from the environment, its errors one :class:`ConfigError` line
    naming the setting."""
    clean = {k: v for k, v in (overrides or {}).items() if v is not None}
    try:
        return model(**clean)
    except ValidationError as exc:
        raise ConfigError(settings_problem(exc, model, frozenset(clean))) from None
    except SettingsError as exc:  # a JSON-valued variable that is not JSON
        found = re.search(r'field "(\w+)"', str(exc))
        name = _setting_name(model, found[1] if found else "", frozenset())
        raise ConfigError(f"{name or 'settings'}: not valid JSON") from None


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides (CLI flags) on top.

    Raises :class:`ConfigError` naming the variable (or flag) of a value that does not fit.
    """
    settings: Settings = settings_from_environment(Settings, overrides)
    return settings
