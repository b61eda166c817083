"""Typed FastAPI dependencies: the ports and settings ``create_app`` was given.

Handlers name what they need (``ingest: IngestDep``) and never reach into ``app.state``
themselves; ``create_app`` stores one :class:`ApiContext` there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from engine.api.ports import HealthPort, IngestPort, MessagesPort
from engine.metrics import EngineMetrics
from engine.settings import Settings

__all__ = [
    "ApiContext",
    "HealthDep",
    "IngestDep",
    "MessagesDep",
    "MetricsDep",
    "SettingsDep",
    "peer_of",
]


@dataclass(frozen=True)
class ApiContext:
    """Everything the handlers use, built once by ``create_app``."""

    settings: Settings
    ingest: IngestPort
    messages: MessagesPort
    health: HealthPort
    metrics: EngineMetrics


def _context(request: Request) -> ApiContext:
    context = request.app.state.context
    assert isinstance(context, ApiContext)
    return context


# async: these only read app.state, so they need not run in a worker thread
async def _settings(request: Request) -> Settings:
    return _context(request).settings


async def _ingest(request: Request) -> IngestPort:
    return _context(request).ingest


async def _messages(request: Request) -> MessagesPort:
    return _context(request).messages


async def _health(request: Request) -> HealthPort:
    return _context(request).health


async def _metrics(request: Request) -> EngineMetrics:
    return _context(request).metrics


def peer_of(request: Request) -> str:
    """``host:port`` of the caller, as the MLLP listener records its peers."""
    client = request.client
    return f"{client.host}:{client.port}" if client else ""


SettingsDep = Annotated[Settings, Depends(_settings)]
IngestDep = Annotated[IngestPort, Depends(_ingest)]
MessagesDep = Annotated[MessagesPort, Depends(_messages)]
HealthDep = Annotated[HealthPort, Depends(_health)]
MetricsDep = Annotated[EngineMetrics, Depends(_metrics)]
