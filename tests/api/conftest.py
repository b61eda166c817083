"""Fixtures for the HTTP tests: the app on in-memory fakes, a dev secret in a temp dir, tokens."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from jose import jwt

from engine.api.app import create_app
from engine.api.auth_settings import AuthSettings
from engine.api.keys import dev_secret
from engine.api.tokens import mint_dev_token
from engine.metrics import EngineMetrics
from engine.settings import Settings
from tests.api.fakes import FakeHealth, FakeIngest, FakeMessages, sample_view

with warnings.catch_warnings():
    # Starlette >= 1.10 asks for httpx2 under its TestClient and warns once, at import, when it
    # finds only httpx; the client works the same on either.
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette\.testclient`")
    from fastapi.testclient import TestClient

MAX_BYTES = 4096

AppFactory = Callable[..., FastAPI]


@pytest.fixture
def auth(tmp_path: Path) -> AuthSettings:
    return AuthSettings(environment="development", dev_secret_file=tmp_path / "dev-jwt-secret")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(var_dir=tmp_path, max_message_bytes=MAX_BYTES)


@pytest.fixture
def metrics() -> EngineMetrics:
    return EngineMetrics()


@pytest.fixture
def ingest(metrics: EngineMetrics) -> FakeIngest:
    return FakeIngest(metrics)


@pytest.fixture
def messages() -> FakeMessages:
    return FakeMessages(
        [sample_view(1), sample_view(2, state="error"), sample_view(3, deliveries=2)]
    )


@pytest.fixture
def health() -> FakeHealth:
    return FakeHealth()


@pytest.fixture
def make_app(
    settings: Settings,
    ingest: FakeIngest,
    messages: FakeMessages,
    health: FakeHealth,
    metrics: EngineMetrics,
    auth: AuthSettings,
) -> AppFactory:
    """create_app on the fakes; keyword arguments override ``auth`` and add ``http_client``."""

    def build(*, auth_settings: AuthSettings | None = None, http_client: Any = None) -> FastAPI:
        return create_app(
            settings,
            ingest=ingest,
            messages=messages,
            health=health,
            metrics=metrics,
            auth=auth_settings or auth,
            http_client=http_client,
        )

    return build


@pytest.fixture
def client(make_app: AppFactory) -> TestClient:
    return TestClient(make_app())


@pytest.fixture
def token(auth: AuthSettings) -> Callable[[str], str]:
    """A valid dev token for a role."""
    return lambda role: mint_dev_token(auth, role=role, subject=f"test-{role}")


@pytest.fixture
def dev_token(auth: AuthSettings) -> Callable[..., str]:
    """An HS256 token with the dev secret and any claims (defaults: valid, aud engine)."""

    def sign(*, headers: dict[str, Any] | None = None, **claims: Any) -> str:
        now = int(time.time())
        body: dict[str, Any] = {"sub": "tester", "aud": "engine", "exp": now + 600, "iat": now}
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return str(jwt.encode(body, dev_secret(auth), algorithm="HS256", headers=headers))

    return sign


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def mock_client(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(handler))
