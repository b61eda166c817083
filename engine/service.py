"""Wiring for ``engine serve``: builds every part from one Settings object and runs them together.

MLLP and HTTP share one asyncio loop. SIGINT/SIGTERM stop both cleanly: the listeners stop
accepting,
in-flight messages finish and are acknowledged, connections close, the database is disposed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator

import uvicorn

from engine.adapters.mllp.server import MLLPServer
from engine.api.app import create_app
from engine.errors import ConfigError, EngineError
from engine.hl7v2.ack import hl7_timestamp, nak_for_unparseable
from engine.pipeline import Ingest
from engine.settings import Settings
from engine.store.repository import SqlMessageStore, create_db_engine

__all__ = ["Engine", "serve"]

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: :func:`serve` owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _MLLPHandler:
    """Adapts the synchronous pipeline to the MLLP listener (store I/O runs in a worker thread)."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest

    async def on_message(self, payload: bytes, peer: str) -> bytes | None:
        receipt = await asyncio.to_thread(self.ingest.receive, payload, channel="mllp", peer=peer)
        return receipt.ack

    async def on_oversize(self, head: bytes, limit: int, peer: str) -> bytes | None:
        error = EngineError(f"message larger than the {limit}-byte limit; not accepted")
        return nak_for_unparseable(
            head,
            error,
            control_id="AOVERSIZE",
            timestamp=hl7_timestamp(self.ingest.clock()),
            sending=self.ingest.identity,
        )


class Engine:
    """The running engine: store, pipeline, MLLP listener and HTTP server."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db_engine = create_db_engine(settings.resolved_database_url())
        self.store = SqlMessageStore(self.db_engine)
        self.ingest = Ingest(
            self.store,
            default_charset=settings.default_charset,
            identity=(settings.application_name, settings.facility_name),
        )
        self.mllp = MLLPServer(
            _MLLPHandler(self.ingest),
            host=settings.mllp_host,
            port=settings.mllp_port,
            max_message_bytes=settings.max_message_bytes,
            idle_timeout_s=settings.idle_timeout_s,
            frame_timeout_s=settings.frame_timeout_s,
            max_connections=settings.max_connections,
        )
        config = uvicorn.Config(
            create_app(settings, self.store),
            host=settings.http_host,
            port=settings.http_port,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        self.http = _Server(config)

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set."""
        self.store.create_schema()
        try:
            await self.mllp.start()
        except OSError as exc:
            raise ConfigError(
                f"cannot listen for MLLP on {self.settings.mllp_host}:{self.settings.mllp_port}: "
                f"{exc.strerror or exc}"
            ) from exc
        http_task = asyncio.create_task(self.http.serve())
        try:
            while not self.http.started:
                if http_task.done():
                    await self.mllp.stop()
                    raise ConfigError(
                        f"cannot listen for HTTP on {self.settings.http_host}:"
                        f"{self.settings.http_port} (address in use?)"
                    )
                await asyncio.sleep(0.02)
            log.info(
                "engine started",
                extra={"mllp_port": self.mllp.bound_port, "http_port": self.settings.http_port},
            )
            stop_task = asyncio.create_task(stop.wait())
            await asyncio.wait({http_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            stop_task.cancel()
        finally:
            self.http.should_exit = True
            await self.mllp.stop()
            with contextlib.suppress(asyncio.CancelledError, SystemExit):
                await http_task  # a bind failure ends uvicorn with SystemExit; reported above
            self.db_engine.dispose()


def serve(settings: Settings) -> None:
    """Run the engine in the foreground until SIGINT or SIGTERM."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await Engine(settings).run(stop)

    asyncio.run(main())
