"""The engine's one Settings object: every knob, read from ENGINE_* environment variables.

``engine serve --mllp-port ...`` and friends override the same fields. Nothing is read at import
time: call :func:`load_settings` (the CLI and ``create_app`` do). Each field's comment names the
parts of the engine that read it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "load_settings"]


class Settings(BaseSettings):
    """Runtime configuration. Defaults are the embedded set-up that ``make run`` starts."""

    model_config = SettingsConfigDict(env_prefix="ENGINE_", extra="ignore")

    # Each setting says who reads it. "the receiver" is engine/service.py (``engine serve``: MLLP
    # and HTTP listeners, ingest, the API); "the worker" is engine/flow/worker.py (the process that
    # routes, maps and delivers, started by the receiver or by ``engine worker``).

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
    #: HTTP endpoints (engine/api/body.py, routes_hl7.py, routes_fhir.py).
    max_message_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    idle_timeout_s: float = Field(300.0, gt=0)
    frame_timeout_s: float = Field(30.0, gt=0)
    max_connections: int = Field(200, ge=1)
    #: connections one address may hold at once (so one sender cannot take every slot). Read by
    #: the MLLP server (engine/adapters/mllp/server.py), passed by engine/service.py.
    max_connections_per_peer: int = Field(20, ge=1)

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
    #: the receiver starts a worker process beside it (several processes may share one
    #: PostgreSQL; a receive-only process sets this false). Read by the receiver.
    workers: bool = True
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

    def resolved_database_url(self) -> str:
        """``database_url`` or SQLite at ``var_dir/engine.db``."""
        return self.database_url or f"sqlite:///{(self.var_dir / 'engine.db').as_posix()}"


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides (CLI flags) on top."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**clean)  # type: ignore[arg-type]
