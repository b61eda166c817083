"""The HTTP API (FastAPI). Thin: handlers call the pipeline and the store, nothing else."""

from engine.api.app import create_app

__all__ = ["create_app"]
