"""The HTTP API (FastAPI). Thin: its handlers call ingest (engine.flow) and the store, no more."""

from engine.api.app import create_app

__all__ = ["create_app"]
