"""``alerts.yaml``: the alert rules and the channels their notices go to.

The file sits beside the route files, in ``ENGINE_ROUTES_DIR`` (the route loader leaves it out),
and is read the way route files are (:mod:`engine.yamlfile`: safe, bounded, every error naming
the file, the line and the key, e.g. ``site/alerts.yaml, line 14, rules[2].older_than_minutes:
Input should be greater than or equal to 1``)::

    channels:
      it-mail:
        type: email                    # SMTP; STARTTLS when starttls: true
        host: smtp.example.org
        port: 587
        starttls: true
        from: engine@example.org
        to: [it@example.org]
        username: engine
        password_env: ENGINE_SMTP_PASSWORD   # or password_file: /etc/engine/smtp-password
      slack:
        type: webhook                  # POST {"text": ...}: Slack and Teams incoming webhooks
        url_env: ENGINE_SLACK_WEBHOOK_URL    # the URL holds the webhook's secret: name its variable
    defaults:
      channels: [it-mail, slack]       # a rule without channels: these (default: every channel)
      repeat_minutes: 240              # still raised: notified again after this (0: never)
    rules:
      - {name: dead-letters, kind: dead-letters, window_minutes: 60, threshold: 1}
      - {name: fhir-backlog, kind: queue-age, destination: local-fhir, older_than_minutes: 15}
      - name: epic-silent
        kind: sender-silent
        sender: EPIC
        silent_minutes: 60
        business_hours: {days: [mon, tue, wed, thu, fri], start: "08:00", end: "17:00"}
      - {name: payer-down, kind: eligibility-failures, window_minutes: 120, threshold: 1,
         per_payer: true}
      - {name: disk, kind: disk, min_free_mb: 1024}
      - {name: database, kind: database, max_query_ms: 2000}

Secrets never sit in the file: an SMTP password and a webhook URL (which carries its secret) are
read, when a notice is sent, from the environment variable or the file the channel names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from engine.yamlfile import read_yaml

__all__ = [
    "ALERTS_FILE",
    "AlertConfig",
    "AlertFile",
    "DAYS",
    "BusinessHours",
    "Channel",
    "Database",
    "DeadLetters",
    "Disk",
    "EligibilityFailures",
    "EmailChannel",
    "QueueAge",
    "AnyRule",
    "Rule",
    "SenderSilent",
    "WebhookChannel",
    "alerts_path",
    "check_loaded",
    "load_alert_rules",
]

#: the file's name in ENGINE_ROUTES_DIR (the route loader does not read it as a route file)
ALERTS_FILE = "alerts.yaml"
#: the most rules and channels one file may define
MAX_RULES = 200
MAX_CHANNELS = 20

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_ADDRESS_RE = re.compile(r"^[^@\s<>,;\"]{1,64}@[A-Za-z0-9.-]{1,253}$")
_SECRET_HINT = (
    "a secret never goes in alerts.yaml: name the environment variable or file that holds it "
    "(password_env, password_file, url_env)"
)
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
Status = Literal["payer_unavailable", "needs_action", "inactive"]


def _weekdays() -> list[Day]:
    return ["mon", "tue", "wed", "thu", "fri"]


def _unavailable() -> list[Status]:
    return ["payer_unavailable"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(f"{value!r} must be 1-64 letters, digits, '.', '_' or '-'")
    return value


def _env(value: str | None) -> str | None:
    if value is not None and not _ENV_RE.match(value):
        raise ValueError(f"{value!r} is not an environment variable's name")
    return value


# -- channels ------------------------------------------------------------------------------------


class EmailChannel(_Strict):
    """Notices by e-mail over SMTP (RFC 5321), with STARTTLS (RFC 3207) when asked."""

    type: Literal["email"]
    host: str = Field(min_length=1, max_length=253)
    port: int = Field(default=25, ge=1, le=65535)
    starttls: bool = False
    sender: str = Field(alias="from")
    to: list[str] = Field(min_length=1, max_length=50)
    username: str | None = Field(default=None, max_length=255)
    password_env: str | None = None
    password_file: Path | None = Field(default=None, validate_default=True)
    #: the CA certificates (PEM) the server's certificate is checked against under STARTTLS, for
    #: a server with a private CA (default: the system's). Relative paths (this and
    #: ``password_file``) are the engine's home's (ENGINE_HOME)
    ca_file: Path | None = None
    timeout_s: float = Field(default=10.0, gt=0, le=60)
    #: false: the channel is defined but sends nothing (the sample under ``make run``)
    enabled: bool = True

    @field_validator("sender")
    @classmethod
    def _sender(cls, value: str) -> str:
        if not _ADDRESS_RE.match(value):
            raise ValueError(f"{value!r} is not an e-mail address")
        return value

    @field_validator("to")
    @classmethod
    def _to(cls, value: list[str]) -> list[str]:
        for address in value:
            if not _ADDRESS_RE.match(address):
                raise ValueError(f"{address!r} is not an e-mail address")
        return value

    @field_validator("password_env")
    @classmethod
    def _password_env(cls, value: str | None) -> str | None:
        return _env(value)

    @field_validator("password_file")
    @classmethod
    def _credentials(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        # a field's check (not the model's): its error names the key, not the channel's type
        password_env = info.data.get("password_env")
        if password_env and value:
            raise ValueError("give password_env or password_file, not both")
        if (password_env or value) and not info.data.get("username"):
            raise ValueError("a password needs a username")
        return value


class WebhookChannel(_Strict):
    """Notices POSTed as JSON ``{"text": ...}``: what Slack's and Teams' incoming webhooks take."""

    type: Literal["webhook"]
    #: the URL, when it holds no secret (a receiver of your own); else ``url_env``
    url: str | None = Field(default=None, max_length=2000)
    url_env: str | None = Field(default=None, validate_default=True)
    timeout_s: float = Field(default=5.0, gt=0, le=60)
    enabled: bool = True

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value

    @field_validator("url_env")
    @classmethod
    def _one_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if (info.data.get("url") is None) == (value is None):
            raise ValueError("give url or url_env (one of them)")
        return _env(value)


Channel = Annotated[EmailChannel | WebhookChannel, Field(discriminator="type")]


# -- rules ---------------------------------------------------------------------------------------


class _Rule(_Strict):
    name: str
    description: str = Field(default="", max_length=500)
    #: the channels this rule's notices go to (default: ``defaults.channels``)
    channels: list[str] | None = Field(default=None, max_length=MAX_CHANNELS)
    #: notify an alert still raised again after this many minutes (0: never; default: defaults')
    repeat_minutes: int | None = Field(default=None, ge=0, le=7 * 24 * 60)

    @field_validator("name")
    @classmethod
    def _rule_name(cls, value: str) -> str:
        return _name(value)


class DeadLetters(_Rule):
    """Deliveries dead-lettered in the last ``window_minutes``: raised at ``threshold``, for
    one route or destination or any. A dead delivery's time is its last attempt's."""

    kind: Literal["dead-letters"]
    route: str | None = Field(default=None, max_length=128)
    destination: str | None = Field(default=None, max_length=128)
    window_minutes: int = Field(default=60, ge=1, le=7 * 24 * 60)
    threshold: int = Field(default=1, ge=1, le=1_000_000)


class QueueAge(_Rule):
    """A destination's oldest undelivered delivery (pending or waiting) older than
    ``older_than_minutes``; one alert per destination (or only ``destination``)."""

    kind: Literal["queue-age"]
    destination: str | None = Field(default=None, max_length=128)
    older_than_minutes: int = Field(ge=1, le=7 * 24 * 60)


class BusinessHours(_Strict):
    """When a sender is expected to send: these days, from ``start`` to ``end``, in the engine's
    time zone (ENGINE_TIMEZONE)."""

    days: list[Day] = Field(default_factory=_weekdays, min_length=1, max_length=7)
    start: time = time(8, 0)
    end: time = time(17, 0)

    @field_validator("start", "end", mode="before")
    @classmethod
    def _clock(cls, value: Any) -> Any:
        # YAML 1.1 reads an unquoted 17:00 as the base-60 number 1020
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 24 * 60:
            return time(value // 60, value % 60)
        return value

    @model_validator(mode="after")
    def _order(self) -> BusinessHours:
        if self.end <= self.start:
            raise ValueError("end must be after start (hours within one day)")
        return self


class SenderSilent(_Rule):
    """No message from ``sender`` (MSH-3, sending application) for ``silent_minutes`` of its
    business hours."""

    kind: Literal["sender-silent"]
    sender: str = Field(min_length=1, max_length=227)
    silent_minutes: int = Field(ge=1, le=24 * 60)
    business_hours: BusinessHours = Field(default_factory=BusinessHours)


class EligibilityFailures(_Rule):
    """``threshold`` eligibility checks or more with one of ``statuses`` in the last
    ``window_minutes`` (default: the payer did not answer), for one payer, any, or each payer
    apart (``per_payer``)."""

    kind: Literal["eligibility-failures"]
    window_minutes: int = Field(default=60, ge=1, le=7 * 24 * 60)
    threshold: int = Field(default=1, ge=1, le=1_000_000)
    statuses: list[Status] = Field(default_factory=_unavailable, min_length=1)
    payer: str | None = Field(default=None, max_length=80)
    per_payer: bool = False


class Disk(_Rule):
    """Free space of the store's folder (the SQLite database's, else ENGINE_VAR_DIR; or
    ``path``) under ``min_free_mb`` or ``min_free_percent``."""

    kind: Literal["disk"]
    path: Path | None = None
    min_free_mb: int | None = Field(default=None, ge=1)
    min_free_percent: float | None = Field(default=None, gt=0, lt=100, validate_default=True)

    @field_validator("min_free_percent")
    @classmethod
    def _a_threshold(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is None and info.data.get("min_free_mb") is None:
            raise ValueError("give min_free_mb or min_free_percent")
        return value


class Database(_Rule):
    """The store does not answer, or its probe query takes longer than ``max_query_ms``."""

    kind: Literal["database"]
    max_query_ms: int = Field(default=2000, ge=1, le=600_000)


Rule = Annotated[
    DeadLetters | QueueAge | SenderSilent | EligibilityFailures | Disk | Database,
    Field(discriminator="kind"),
]


AnyRule = DeadLetters | QueueAge | SenderSilent | EligibilityFailures | Disk | Database


class Defaults(_Strict):
    channels: list[str] | None = Field(default=None, max_length=MAX_CHANNELS)
    repeat_minutes: int = Field(default=0, ge=0, le=7 * 24 * 60)


class AlertFile(_Strict):
    """The whole of ``alerts.yaml``."""

    channels: dict[str, Channel] = Field(default_factory=dict, max_length=MAX_CHANNELS)
    defaults: Defaults = Defaults()
    rules: list[Rule] = Field(default_factory=list, max_length=MAX_RULES)


@dataclass(frozen=True)
class AlertConfig:
    """The rules and channels loaded, and the file they came from (None: no alerts.yaml)."""

    file: str | None = None
    rules: tuple[AnyRule, ...] = ()
    channels: dict[str, EmailChannel | WebhookChannel] = field(default_factory=dict)
    defaults: Defaults = Defaults()

    def channels_of(self, rule: Any) -> list[str]:
        """The channels a rule's notices go to: its own, else the defaults', else all."""
        chosen = rule.channels if rule.channels is not None else self.defaults.channels
        return list(self.channels) if chosen is None else list(chosen)

    def repeat_minutes(self, rule: Any) -> int:
        """Minutes after which an alert still raised is notified again (0: never)."""
        value = rule.repeat_minutes
        return int(value if value is not None else self.defaults.repeat_minutes)

    def rule(self, name: str) -> Any:
        """The rule of that name (KeyError if none)."""
        for r in self.rules:
            if r.name == name:
                return r
        raise KeyError(name)


def alerts_path(routes_dir: Path | None) -> Path | None:
    """Where the alerts file is: ``ENGINE_ROUTES_DIR/alerts.yaml`` (None without a directory)."""
    return None if routes_dir is None else routes_dir / ALERTS_FILE


def load_alert_rules(routes_dir: Path | None, *, where: str | None = None) -> AlertConfig:
    """The rules of ``routes_dir/alerts.yaml``, validated; an empty set when there is no such
    file. ``where``: how errors name the file (default its path). Raises :class:`ConfigError`
    naming the file, the line and the key of the first problem."""
    path = alerts_path(routes_dir)
    if path is None or not path.is_file():
        return AlertConfig()
    shown = where or str(path)
    doc = read_yaml(path, shown)
    if doc.data is None:
        return AlertConfig(file=shown)
    spec = doc.validate(AlertFile, secret_hint=_SECRET_HINT)
    if doc.duplicates:
        key, _line = doc.duplicates[0]
        raise doc.error(key, "written twice in the file")
    for name in spec.channels:
        try:
            _name(name)
        except ValueError as exc:
            raise doc.error(("channels", name), f"channel name {exc}") from None
    known = ", ".join(sorted(spec.channels)) or "none"
    for j, name in enumerate(spec.defaults.channels or ()):
        if name not in spec.channels:
            raise doc.error(
                ("defaults", "channels", j), f"unknown channel {name!r} (defined: {known})"
            )
    seen: dict[str, int] = {}
    for i, rule in enumerate(spec.rules):
        if rule.name in seen:
            raise doc.error(
                ("rules", i, "name"),
                f"rule {rule.name!r} is already defined (rules[{seen[rule.name]}])",
            )
        seen[rule.name] = i
        for j, name in enumerate(rule.channels or ()):
            if name not in spec.channels:
                raise doc.error(
                    ("rules", i, "channels", j), f"unknown channel {name!r} (defined: {known})"
                )
    return AlertConfig(
        file=shown, rules=tuple(spec.rules), channels=dict(spec.channels), defaults=spec.defaults
    )


def _home(path: Path) -> Path:
    from engine.settings import engine_home

    return path if path.is_absolute() else engine_home() / path


def check_loaded(config: AlertConfig) -> list[str]:
    """What a loaded file still lacks to send (variables unset, files unreadable): one line each,
    for ``engine alerts check``; a notice would fail, and be retried, until they are fixed."""
    import os

    problems: list[str] = []
    for name, channel in config.channels.items():
        if not channel.enabled:
            continue
        if isinstance(channel, EmailChannel):
            if channel.password_env and not os.environ.get(channel.password_env):
                problems.append(f"channel {name!r}: {channel.password_env} is not set")
            if channel.password_file and not _home(channel.password_file).is_file():
                problems.append(f"channel {name!r}: {channel.password_file} is not a file")
        elif channel.url_env and not os.environ.get(channel.url_env):
            problems.append(f"channel {name!r}: {channel.url_env} is not set")
    return problems
