"""The engine's one Settings object: every knob, read from ENGINE_* environment variables.

``engine serve --mllp-port ...`` and friends override the same fields. Nothing is read at import
time:
call :func:`load_settings` (the CLI and ``create_app`` do).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "load_settings"]


class Settings(BaseSettings):
    """Runtime configuration. Defaults are the embedded set-up that ``make run`` starts."""

    model_config = SettingsConfigDict(env_prefix="ENGINE_", extra="ignore")

    #: where the embedded database and file drops live
    var_dir: Path = Path("var")
    #: SQLAlchemy URL; default SQLite under var_dir
    database_url: str = ""

    mllp_host: str = "0.0.0.0"
    mllp_port: int = Field(2575, ge=0, le=65535)
    http_host: str = "0.0.0.0"
    http_port: int = Field(8080, ge=0, le=65535)

    #: MLLP limits (HL7 v2.5.1 has none; a production interface needs them)
    max_message_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    idle_timeout_s: float = Field(300.0, gt=0)
    frame_timeout_s: float = Field(30.0, gt=0)
    max_connections: int = Field(200, ge=1)

    #: charset for messages whose MSH-18 is empty
    default_charset: str = "utf-8"

    #: this engine's identity in the MSH of ACKs it sends (MSH-3/4 of an ACK echo the original's 5/6
    #: when those are filled; these are the fallback)
    application_name: str = "ENGINE"
    facility_name: str = "ENGINE"

    #: a site directory of mapping files layered over the built-in ones (docs/MAPPINGS.md)
    mappings_dir: Path | None = None
    #: a site directory of route files layered over the built-in example (engine/routes/specs)
    routes_dir: Path | None = None
    #: retention: delivered messages are purged after this many days (undelivered never are)
    retention_days: int = Field(30, ge=1)
    #: run the processor and the dispatcher in this process (several processes may share one
    #: PostgreSQL; a receive-only process sets this false)
    workers: bool = True
    #: validate every FHIR resource the engine writes against fhir.resources' R4B models
    validate_fhir: bool = False

    #: eligibility (X12 270/271): when the nightly job runs (cron, in the engine's time zone),
    #: how many business days ahead it looks, and who is asking
    eligibility_cron: str = "0 18 * * *"
    eligibility_days: int = Field(2, ge=1, le=30)
    eligibility_on_start: bool = False
    eligibility_provider_npi: str = "1234567893"
    eligibility_provider_name: str = "EXAMPLE FAMILY PRACTICE"
    x12_sender_id: str = "ENGINE"
    #: a site directory of payer files layered over the built-ins (engine/adapters/payer/specs)
    payers_dir: Path | None = None
    timezone: str = "America/New_York"

    log_level: str = "INFO"
    #: json (one object a line, for log shippers) or text (for a terminal)
    log_format: str = Field("json", pattern="^(json|text)$")

    #: MLLP over TLS: the server's certificate and key (PEM); with ``mllp_tls_client_ca`` the
    #: listener requires client certificates signed by that CA (mutual TLS)
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
