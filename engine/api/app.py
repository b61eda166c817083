"""``create_app``: the FastAPI application, built from Settings and the ports of the running engine.

Wiring only. The engine (``engine.service``) passes ingest, the store, a
readiness probe and the metrics as ports (``engine.api.ports``); tests pass in-memory fakes.
``/healthz`` is open; ``/readyz`` is open and asks the HealthPort; ``/metrics`` is open unless
configured otherwise; ``/.well-known/jwks.json`` (the engine's public signing keys, which EHRs
fetch) is open; everything else needs a bearer token (``engine.api.auth``). A malformed path,
query or header answers 4xx; an error no handler expected answers a generic 500 and is logged
without its traceback (``engine.api.unexpected``).
"""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from engine import __version__
from engine.api import (
    routes_admin,
    routes_audit,
    routes_documents,
    routes_documents_admin,
    routes_eligibility,
    routes_fhir,
    routes_hl7,
    routes_jwks,
    routes_messages,
)
from engine.api.auth import build_verifier
from engine.api.auth_settings import AuthSettings, auth_settings_for
from engine.api.deps import ApiContext, HealthDep
from engine.api.docs import install_docs
from engine.api.limits import BodyLimits
from engine.api.metrics import metrics_router
from engine.api.ports import HealthPort, IngestPort, MessagesPort
from engine.api.security import SecurityHeaders
from engine.api.unexpected import UnexpectedErrors
from engine.console.router import mount_console
from engine.metrics import EngineMetrics
from engine.settings import Settings
from engine.store.users import Users

__all__ = ["create_app"]


def create_app(
    settings: Settings,
    *,
    ingest: IngestPort,
    messages: MessagesPort,
    health: HealthPort,
    metrics: EngineMetrics,
    auth: AuthSettings | None = None,
    http_client: httpx.Client | None = None,
    eligibility: Any = None,
    documents: Any = None,
) -> FastAPI:
    """The HTTP side of the engine.

    ``auth`` defaults to ``auth_settings_for(settings)`` (the ``ENGINE_AUTH_*`` environment, the dev
    secret under ``settings.var_dir``). The key file or dev secret is read now, so a bad one stops
    start-up with a ConfigError. ``http_client`` fetches the JWKS (tests pass one on an
    ``httpx.MockTransport``).
    """
    auth = auth if auth is not None else auth_settings_for(settings)
    app = FastAPI(title="engine", version=__version__, docs_url=None, redoc_url=None)
    app.state.context = ApiContext(settings, ingest, messages, health, metrics)
    app.state.eligibility = eligibility  # engine.jobs.eligibility.EligibilityService, or None
    app.state.documents = documents  # engine.documents.intake.DocumentIntake, or None
    app.state.reloader = None  # engine.flow.config.Reloader, set by engine serve
    app.state.token_verifier = build_verifier(auth, http_client=http_client)
    # the console's users and sessions: the store, when it is the SQL one (fakes have none)
    app.state.users = messages if isinstance(messages, Users) else None

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness: the process is up."""
        return {"status": "ok", "version": __version__}

    @app.get("/readyz")
    def readyz(probe: HealthDep) -> JSONResponse:
        """Readiness: the store answers and the engine takes messages."""
        try:
            ok = probe.ready()
        except Exception:  # any failure of the probe means not ready
            ok = False
        return JSONResponse(
            {"status": "ready" if ok else "unavailable"}, status_code=200 if ok else 503
        )

    app.include_router(routes_hl7.router)
    app.include_router(routes_fhir.router)
    app.include_router(routes_messages.router)
    app.include_router(routes_documents_admin.router)
    app.include_router(routes_eligibility.router)
    app.include_router(routes_documents.router)
    app.include_router(routes_admin.router)
    app.include_router(routes_audit.router)
    app.include_router(routes_jwks.router)
    app.include_router(metrics_router(require_token=auth.metrics_require_token))
    mount_console(app)
    install_docs(app)  # /docs, and the bearer scheme in /openapi.json
    app.add_middleware(UnexpectedErrors)
    app.add_middleware(BodyLimits)  # before FastAPI reads any Form()/JSON body (engine.api.limits)
    app.add_middleware(SecurityHeaders)  # outermost: even a 500 carries the headers
    return app
