"""Wiring for ``engine serve``: builds every part from one Settings object and runs them together.

MLLP and HTTP share one asyncio loop. SIGINT/SIGTERM stop both cleanly: the listeners stop
accepting,
in-flight messages finish and are acknowledged, connections close, the database is disposed.

Building :class:`Engine` checks everything first (engine/startup.py: files, folders, routes,
mappings, the database reached and migrated); nothing listens until all of it passed, and
:func:`serve` reports the start (the banner) only once both listeners are open. A signal during
those checks stops the process at once (:class:`~engine.startup.StartupInterrupted`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import ssl
import time
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess
from typing import Any

import uvicorn

from engine.adapters.mllp.server import MLLPServer, Reply, current_reply
from engine.alerts.gauge import ActiveAlertsGauge
from engine.api.app import create_app
from engine.api.auth_settings import auth_settings_for
from engine.api.http_limits import HttpLimits, limited_http_protocol
from engine.documents.folder import WatchedFolder
from engine.documents.intake import DocumentIntake
from engine.errors import ConfigError
from engine.flow.config import LoadedConfig, Reloader, follow_reloads, load_running_config
from engine.flow.ingest import Ingest, Receipt, StatesOf
from engine.flow.worker import run_workers
from engine.mappings.document_types import document_types
from engine.memory import keep_little_freed_memory
from engine.metrics import EngineMetrics, reset_multiprocess_dir
from engine.pressure import IngestPressure
from engine.retry import backoff_s
from engine.runtime import event_loop_name, freeze_loaded
from engine.runtime import run as run_loop
from engine.settings import Settings
from engine.startup import (
    check_files,
    check_schedule,
    listen_http,
    open_database,
    startup_signals,
)
from engine.store import SqlMessageStore
from engine.store.nodes import new_node_id

__all__ = ["Engine", "keep_receiver", "serve"]

log = logging.getLogger(__name__)


#: how long a stop waits for HTTP requests in progress before it closes their connections
HTTP_STOP_GRACE_S = 10


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: :func:`serve` owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _MLLPHandler:
    """Adapts ingest (engine/flow/ingest.py) to the MLLP listener."""

    def __init__(self, ingest: Ingest, states_of: StatesOf | None = None) -> None:
        self.ingest = ingest
        #: the store's states of many messages in one query; None: no application ACKs are sent
        self.states_of = states_of
        #: the application ACKs still to send, by the connection's task (see ``_follow``)
        self._pending: dict[asyncio.Task[Any], set[asyncio.Task[None]]] = {}

    async def on_message(self, payload: bytes, peer: str) -> bytes | None:
        receipt = await self.ingest.receive(payload, channel="mllp", peer=peer)
        reply = current_reply.get()
        if receipt.application_ack and reply is not None and self.states_of is not None:
            self._follow(payload, receipt, reply)
        return receipt.ack

    def _follow(self, payload: bytes, receipt: Receipt, reply: Reply) -> None:
        """Enhanced mode: the application ACK follows on this connection once processed.

        The listener handles a connection's messages in that connection's task, which ends when
        the connection closes: the application ACKs still waiting for it are dropped then, as
        no one is left to read them, and each holds its message's bytes and one of the places
        that ingest's limit of application ACKs waiting allows."""
        connection = asyncio.current_task()
        assert connection is not None
        waiting = self._pending.get(connection)
        if waiting is None:
            waiting = self._pending[connection] = set()
            connection.add_done_callback(self._closed)
        task = asyncio.create_task(self._application_ack(payload, receipt, reply))
        waiting.add(task)
        task.add_done_callback(waiting.discard)

    def _closed(self, connection: asyncio.Task[Any]) -> None:
        for task in self._pending.pop(connection, ()):
            task.cancel()

    async def _application_ack(self, payload: bytes, receipt: Receipt, reply: Reply) -> None:
        assert self.states_of is not None
        ack = await self.ingest.application_ack(payload, receipt, self.states_of)
        if ack is not None:
            await reply.send(ack)

    async def on_oversize(self, head: bytes, limit: int, peer: str) -> bytes | None:
        # stored (its first bytes, state error, the reason) so every frame is accounted for
        receipt = await self.ingest.receive_oversize(head, limit=limit, channel="mllp", peer=peer)
        return receipt.ack


class _Health:
    """Ready when the store answers."""

    def __init__(self, store: SqlMessageStore) -> None:
        self.store = store

    def ready(self) -> bool:
        try:
            return self.store.ping()
        except Exception:  # any database failure means not ready
            return False


def _mllp_tls(settings: Settings) -> ssl.SSLContext | None:
    if settings.mllp_tls_cert is None and settings.mllp_tls_key is None:
        return None
    if settings.mllp_tls_cert is None or settings.mllp_tls_key is None:
        raise ConfigError("MLLP TLS needs both ENGINE_MLLP_TLS_CERT and ENGINE_MLLP_TLS_KEY")
    from engine.adapters.mllp.tls import server_context

    return server_context(
        settings.mllp_tls_cert, settings.mllp_tls_key, settings.mllp_tls_client_ca
    )


def _http_tls(settings: Settings) -> tuple[str | None, str | None]:
    """uvicorn's TLS options for HTTPS on the HTTP port (``ENGINE_HTTP_TLS_CERT``/``_KEY``), the
    pair loaded once now so a wrong one stops start-up in one line; Nones without TLS."""
    cert, key = settings.http_tls_cert, settings.http_tls_key
    if cert is None and key is None:
        return None, None
    if cert is None or key is None:
        raise ConfigError("HTTPS needs both ENGINE_HTTP_TLS_CERT and ENGINE_HTTP_TLS_KEY")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        why = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or type(exc).__name__
        raise ConfigError(
            f"ENGINE_HTTP_TLS_CERT/ENGINE_HTTP_TLS_KEY: {cert} and {key} are not a certificate "
            f"and its key ({why})"
        ) from None
    return str(cert), str(key)


def _http_config(settings: Settings, app: Any) -> uvicorn.Config:
    """uvicorn's configuration for the HTTP port: HTTPS when configured, and the connection
    limits of engine/api/http_limits.py (a deadline for each request head, connections capped in
    all and per address). Not uvicorn's ``limit_concurrency``: it answers 503 to a request head,
    so a connection that never finishes its head still holds its descriptor; the protocol closes
    one over the cap as it is accepted, and one whose head is late. A stop waits at most
    :data:`HTTP_STOP_GRACE_S` for requests in progress (uvicorn's default waits for ever, and a
    slow upload held the rest of the stop: the worker processes, the node's claims)."""
    tls_cert, tls_key = _http_tls(settings)
    return uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
        http=limited_http_protocol(HttpLimits.from_settings(settings)),
        timeout_graceful_shutdown=HTTP_STOP_GRACE_S,
    )


def _alert_rules(running: Settings) -> tuple[str, ...]:
    """The names of the rules in the running configuration's ``alerts.yaml`` (checked already,
    with the routes), shown at 0 by ``engine_alerts_active`` until they raise an alert."""
    from engine.alerts.rules import load_alert_rules

    return tuple(rule.name for rule in load_alert_rules(running.routes_dir).rules)


#: how often the receiver looks at its worker processes (and a reload's request)
SUPERVISE_S = 1.0
#: a worker process alive this long after its start is well: its next death restarts it after
#: 1 s again, not after the doubled back-off of a process that keeps dying as it starts
STABLE_S = 60.0


class Engine:
    """The running engine: store, ingest, queue workers, MLLP listener and HTTP server."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # configuration first: a broken file or setting stops start-up naming it, and the
        # database (the one check that may wait on the network) last
        auth = auth_settings_for(settings)
        check_files(settings, auth)
        # mappings, routes, destinations, their folders; from a copy the worker runs too
        config, self._running = load_running_config(settings)
        check_schedule(settings)  # the worker's, so a mistake stops the receiver too
        # SIGHUP and POST /api/admin/reload read the files again: applied only when all valid
        self.reloader = Reloader.on_snapshot(settings, config, self._running, self._apply_config)
        self._reload_workers = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.db_engine, self.store = open_database(settings)
        # a reload here is published to the other nodes on the database; theirs are followed
        self.reloader.share(self.store, new_node_id())
        # the receiver and its worker process keep their metrics in files here (emptied now,
        # before any process writes); /metrics adds them up
        self.metrics_dir = settings.var_dir / "metrics"
        reset_multiprocess_dir(self.metrics_dir)
        self.metrics = EngineMetrics(multiprocess_dir=self.metrics_dir)
        self.metrics.watch_backlog(self.store.backlog, destinations=config.routes.destinations)
        self.metrics.watch_config(lambda: self.reloader.generation)  # engine_config_generation
        # engine_alerts_active{rule}: the alerts raised now, read from the store at each scrape
        self.alerts_gauge = ActiveAlertsGauge(self.db_engine, _alert_rules(self._running))
        self.metrics.registry.register(self.alerts_gauge)
        # SQLite: shared with the worker process, which yields the one writer's turn to the ACKs
        # under a burst (PostgreSQL takes many writers: ENGINE_INGEST_WRITERS commits at once)
        sqlite = self.db_engine.dialect.name == "sqlite"
        self._pressure = (
            multiprocessing.get_context("spawn").Value("d", 0.0, lock=False) if sqlite else None
        )
        self.ingest = Ingest(
            self.store,
            routes=config.gate,
            default_charset=settings.default_charset,
            identity=(settings.application_name, settings.facility_name),
            on_receipt=self._count,
            pressure=IngestPressure(self._pressure) if self._pressure is not None else None,
            writers=1 if sqlite else settings.ingest_writers,
        )
        self.mllp = MLLPServer(
            _MLLPHandler(self.ingest, self.store.states_of),
            host=settings.mllp_host,
            port=settings.mllp_port,
            max_message_bytes=settings.max_message_bytes,
            idle_timeout_s=settings.idle_timeout_s,
            frame_timeout_s=settings.frame_timeout_s,
            max_connections=settings.max_connections,
            max_connections_per_peer=settings.max_connections_per_peer,
            ssl_context=_mllp_tls(settings),
        )
        # documents (POST /documents, the watched folder): stored before accepted, like messages;
        # by the running configuration's type table (a reload swaps it: _apply_config)
        types = document_types(config.mappings)
        self.documents = DocumentIntake.from_settings(self.store, settings, types)
        app = create_app(
            settings,
            auth=auth,
            ingest=self.ingest,
            messages=self.store,
            health=_Health(self.store),
            metrics=self.metrics,
            eligibility=self._eligibility_service(),
            documents=self.documents,
        )
        app.state.reloader = self.reloader
        self.http = _Server(_http_config(settings, app))
        self._workers: list[BaseProcess] = []

    def _apply_config(self, config: LoadedConfig, running: Settings) -> None:
        """Switch to a reloaded configuration: the gate before the ACK and the intake's document
        type table (uploads, the watched folder) at once, the worker process by a restart on
        its snapshot (it finishes what it holds first)."""
        self._running = running
        self.ingest.routes = config.gate
        self.documents.use_document_types(document_types(config.mappings))
        self.metrics.watch_backlog(self.store.backlog, destinations=config.routes.destinations)
        self.alerts_gauge.rules = _alert_rules(running)
        freeze_loaded()  # the replaced configuration freed, the running one frozen
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._reload_workers.set)

    async def reload(self) -> None:
        """``SIGHUP``: read the route and mapping files again (see :class:`Reloader`)."""
        await asyncio.to_thread(self.reloader.reload)

    def _eligibility_service(self) -> Any:
        """On-demand checks from the API (the schedule runs in the worker process)."""
        from engine.adapters.payer import load_payers
        from engine.jobs.eligibility import EligibilityService

        return EligibilityService(self.store, load_payers(self.settings.payers_dir), self.settings)

    def _watched_folder(self) -> WatchedFolder | None:
        """The documents' inbox (ENGINE_DOCUMENTS_INBOX), polled every second; None if unset."""
        inbox = self.settings.resolved_documents_inbox()
        if inbox is None:
            return None
        return WatchedFolder(
            inbox,
            self.documents,
            name_pattern=self.settings.documents_name_pattern,
            retention_days=self.settings.retention_days,
        )

    def _count(self, channel: str, receipt: Receipt) -> None:
        stored = receipt.message_id is not None and not receipt.duplicate
        resend = "control_id_reused" if receipt.reused else None
        if receipt.duplicate:
            resend = "duplicate"
        self.metrics.record_receipt(
            channel=channel, ack_code=receipt.ack_code, stored=stored, resend=resend
        )
        if receipt.state == "refused":
            self.metrics.record_error("store")
        elif receipt.state == "error":
            self.metrics.record_error("receive")

    async def run(self, stop: asyncio.Event, on_started: Callable[[], None] | None = None) -> None:
        """Run until ``stop`` is set; ``on_started`` once both listeners are open."""
        self._loop = asyncio.get_running_loop()
        # both ports taken before anything starts: a busy one is one line and nothing listens
        http_sockets = listen_http(
            self.settings.http_host, self.settings.http_port, self.http.config.backlog
        )
        await self.ingest.start()
        try:
            await self.mllp.start()
        except OSError as exc:
            for sock in http_sockets:
                sock.close()
            await self.ingest.stop()
            why = os.strerror(exc.errno) if exc.errno else str(exc)  # not asyncio's long text
            raise ConfigError(
                f"cannot listen for MLLP on {self.settings.mllp_host}:{self.settings.mllp_port}: "
                f"{why}"
            ) from exc
        workers = self._start_workers() if self.settings.workers else []
        supervisor = (
            asyncio.create_task(self._supervise(workers), name="supervisor") if workers else None
        )
        checkpoints = asyncio.create_task(self.store.checkpoints(stop), name="checkpoints")
        follow = asyncio.create_task(follow_reloads(self.reloader, stop), name="follow-reloads")
        # the receiver's node (its reloader's id): its heartbeat, stopped after ``follow``
        stopping = asyncio.Event()
        heart = asyncio.create_task(keep_receiver(self.store, self.reloader.node, stopping))
        inbox = self._watched_folder()
        folder = asyncio.create_task(inbox.run(stop), name="inbox") if inbox else None
        http_task = asyncio.create_task(self.http.serve(sockets=http_sockets))
        try:
            while not self.http.started:
                if http_task.done():
                    raise ConfigError(
                        f"cannot listen for HTTP on {self.settings.http_host}:"
                        f"{self.settings.http_port} (the HTTP server did not start)"
                    )
                await asyncio.sleep(0.02)
            log.info(
                "engine started",
                extra={"mllp_port": self.mllp.bound_port, "http_port": self.settings.http_port},
            )
            if on_started is not None:
                on_started()
            stop_task = asyncio.create_task(stop.wait())
            await asyncio.wait({http_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            stop_task.cancel()
        finally:
            self.http.should_exit = True
            await self.mllp.stop()
            with contextlib.suppress(asyncio.CancelledError, SystemExit):
                await http_task  # a failed start ends uvicorn with SystemExit; reported above
            for sock in http_sockets:
                sock.close()  # uvicorn closed them if it ran; if it did not, closed here
            await self.ingest.stop()
            checkpoints.cancel()
            follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await checkpoints
            with contextlib.suppress(asyncio.CancelledError):
                await follow
            stopping.set()  # its row and its configuration row deleted
            await heart
            if folder is not None:
                # it stops at its next look once ``stop`` is set, a file being taken finished
                # (cancelled, the file stays: committed or not, a re-take is stored once)
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(asyncio.shield(folder), 10 if stop.is_set() else 0)
                folder.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await folder
            self.documents.close()
            if supervisor is not None:
                supervisor.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await supervisor
                workers = self._workers
            self._stop_workers(workers)
            self.db_engine.dispose()

    async def _supervise(self, workers: list[BaseProcess]) -> None:
        """Restart a worker process that dies: messages are still ACKed (and kept), but
        without a worker none would be routed or delivered. A reload restarts them all.

        Each is started again on its own schedule, never holding up the others or a reload: 1 s
        after it died, doubling up to 60 s while it keeps exiting within :data:`STABLE_S` of its
        start (a crash at start-up is not retried every second for ever; one killed by a signal,
        kill -9 or the OOM killer, is always started again after 1 s); a process that the
        system refused to start (``_start_worker``) is due again the same way."""
        self._workers = workers
        deaths = [0] * len(workers)  # in a row, each
        started = [time.monotonic()] * len(workers)
        due: dict[int, float] = {}  # a dead one's index: when it is started again
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reload_workers.wait(), SUPERVISE_S)
            if self._reload_workers.is_set():
                self._reload_workers.clear()
                log.info("worker processes restarting on the reloaded configuration")
                await asyncio.to_thread(self._stop_workers, self._workers)
                self._workers = self._start_workers()
                started, due = [time.monotonic()] * len(self._workers), {}
                continue
            now = time.monotonic()
            for index, proc in enumerate(self._workers):
                if proc.is_alive():
                    if now - started[index] >= STABLE_S:
                        deaths[index] = 0
                elif index not in due:
                    if proc.exitcode is not None and proc.exitcode < 0:
                        deaths[index] = 0  # killed by a signal (kill -9, the OOM killer): 1 s
                    wait = backoff_s(deaths[index], base_s=1.0, cap_s=60.0)
                    log.error(
                        "worker process died; restarting"
                        if proc.pid is not None
                        else "worker process not started; trying again",
                        extra={"exitcode": proc.exitcode, "worker": index, "in_s": wait},
                    )
                    self._stop_workers([proc])  # reaped, its metrics forgotten
                    due[index], deaths[index] = now + wait, deaths[index] + 1
                elif now >= due[index]:
                    del due[index]
                    self._workers[index], started[index] = self._start_worker(index), now

    def _start_workers(self) -> list[BaseProcess]:
        return [self._start_worker(i) for i in range(self.settings.worker_processes)]

    def _start_worker(self, index: int) -> BaseProcess:
        """Start worker process ``index``; it records its metrics into ``metrics_dir`` itself.
        The first (index 0) is the one that runs the singleton jobs on SQLite."""
        ctx = multiprocessing.get_context("spawn")
        proc = ctx.Process(
            target=run_workers,
            args=(self._running, os.getpid(), self._pressure, self.metrics_dir, index),
            name=f"engine-worker-{index}",
        )
        try:
            proc.start()
        except OSError as exc:  # no process to be had now (EAGAIN, ENOMEM): never started,
            # so not alive: the supervisor starts it again after its back-off
            log.error(
                "worker process could not be started",
                extra={"worker": index, "error": exc.strerror or type(exc).__name__},
            )
        return proc

    def _stop_workers(self, procs: list[BaseProcess]) -> None:
        procs = [p for p in procs if p.pid is not None]  # one never started has nothing to stop
        for proc in procs:
            proc.terminate()  # SIGTERM: each finishes its in-flight deliveries and stops
        deadline = time.monotonic() + 30  # all of them together, not 30 s each
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(5)
            if proc.pid is not None:
                self.metrics.forget_process(proc.pid)  # no longer counted as a running worker


async def keep_receiver(store: SqlMessageStore, node: str, stop: asyncio.Event) -> None:
    """The receiver's node (role ``receiver``, engine/store/nodes.py): registered, its heartbeat
    beaten every HEARTBEAT_S until ``stop``, then its row and its configuration row deleted (a
    killed receiver's heartbeat grows old instead: the console shows it dead). It claims
    nothing, so nothing is taken over from it. A database away for a moment: beaten again at
    the next turn (the row is recorded again if it was gone)."""
    from engine.store.nodes import HEARTBEAT_S

    try:
        await asyncio.to_thread(store.register_node, "receiver", node)
    except Exception as exc:
        log.warning("receiver node not registered", extra={"error": type(exc).__name__})
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), HEARTBEAT_S)
        if stop.is_set():
            break
        try:
            await asyncio.to_thread(store.heartbeat, node, "receiver")
        except Exception as exc:
            log.warning("receiver heartbeat failed", extra={"error": type(exc).__name__})
    try:
        await asyncio.to_thread(store.forget_node, node)
    except Exception as exc:  # its heartbeat grows old: shown dead, pruned after a day
        log.warning("receiver node not forgotten", extra={"error": type(exc).__name__})


def serve(settings: Settings, on_started: Callable[[Engine], None] | None = None) -> None:
    """Run the engine in the foreground until SIGINT or SIGTERM; ``on_started`` once it listens.

    Raises :class:`~engine.errors.ConfigError` (a check failed: nothing listened) or
    :class:`~engine.startup.StartupInterrupted` (a signal before the engine ran).
    """
    # the worker process and the adapters that resolve route-file paths use the same home
    os.environ["ENGINE_HOME"] = str(settings.home)
    keep_little_freed_memory()  # before any thread starts (engine/memory.py)
    event_loop_name()  # ENGINE_EVENT_LOOP checked before anything starts (ConfigError)

    async def main(engine: Engine) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        reloads: set[asyncio.Task[None]] = set()

        def on_hangup() -> None:
            task = asyncio.create_task(engine.reload(), name="reload")
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hangup)
        await engine.run(stop, (lambda: on_started(engine)) if on_started else None)

    with startup_signals():
        engine = Engine(settings)
        freeze_loaded()  # what start-up loaded is not walked by every later collection
        run_loop(main(engine))
