"""``serve(settings)``: the one way to run the server, in the foreground until a signal.

It starts the writer process early, prepares the data dir and its database, starts the
embedded Redis (or uses the configured one), records the running server in
``<data_dir>/run``, supervises replication, and runs Sanic; on the way out it undoes
each step. ``relaybox serve`` calls it (and so do the demo, the bench and the tests
that start ``relaybox serve``); what a person should see it hands to a ``Reporter``.

``start_in_thread(settings)``: the same run in a background thread of the calling
process (the test suite's in-process servers).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import gc
import itertools
import logging
import os
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import uvloop

from relaybox import __version__
from relaybox.config import Settings

if TYPE_CHECKING:
    from relaybox.services.datadir import InitResult
    from relaybox.services.replication import Replicator

__all__ = ["InThreadServer", "LogReporter", "Reporter", "StartError", "in_thread_server",
           "ready_lines", "serve", "setup_logging", "start_in_thread"]

log = logging.getLogger("relaybox.server")


class StartError(Exception):
    """The server cannot start (one line saying why); what it had started is stopped."""


class Reporter(Protocol):
    """What ``serve`` tells whoever runs it; ``relaybox serve`` prints it."""

    def initialised(self, result: InitResult) -> None:
        """A missing data dir was set up before the server started."""

    def admin_token(self, token: str) -> None:
        """The database had no admin token: this new one is shown once."""

    def ready(self, lines: list[str]) -> None:
        """The server accepts connections: where it serves, and the next step."""


class LogReporter:
    """A ``Reporter`` writing to the log (a new admin token is not logged: a caller that
    wants it passes its own reporter)."""

    def initialised(self, result: InitResult) -> None:
        log.info("initialised %s (server id %s)", result.data_dir, result.server_id)

    def admin_token(self, token: str) -> None:
        log.info("a new admin token was created")

    def ready(self, lines: list[str]) -> None:
        for line in lines:
            log.info(line)


# -- logging -------------------------------------------------------------------------------
class _StartupNoise(logging.Filter):
    """Drops the web framework's start-up and shutdown chatter (workers starting, its
    extensions listed) and each migration step: the server says one line of its own."""

    QUIET = frozenset(("sanic.root", "sanic.server", "relaybox.migrate"))

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name in self.QUIET and record.levelno <= logging.INFO)


def setup_logging(settings: Settings) -> None:
    from relaybox.server.observability.logs import configure

    configure(settings)
    _quiet_startup(settings)


def _quiet_startup(settings: Settings) -> None:
    if settings.log_level == "debug":
        return
    for handler in logging.getLogger("relaybox").handlers:
        if not any(isinstance(f, _StartupNoise) for f in handler.filters):
            handler.addFilter(_StartupNoise())


def _make_app(settings: Settings, name: str = "relaybox") -> Any:
    """The app, in the serving process or in each worker process (which sets up its
    own logging while the app is made)."""
    from relaybox.server.app import create_app

    app = create_app(settings, name)
    _quiet_startup(settings)
    return app


def ready_lines(settings: Settings, users: int) -> list[str]:
    """What the server says once it accepts connections: the URLs, and for a server
    without users the next step."""
    base = settings.base_url
    lines = [f"relaybox {__version__} ready: app {base}/app/ · API {base}/api/v1 · "
             f"docs {base}/docs"]
    if users == 0:
        lines.append("next: relaybox user add NAME, then relaybox pair NAME "
                     "(its QR code pairs a phone)")
    if settings.host in ("0.0.0.0", "::") and not settings.public_url:
        lines.append("other machines reach it at this machine's address; set public_url "
                     "so that pairing links and QR codes carry it")
    return lines


# -- the run -------------------------------------------------------------------------------
def serve(settings: Settings, reporter: Reporter | None = None) -> None:
    """Run the server in the foreground until SIGTERM/SIGINT (SIGHUP reloads the TLS
    certificate). Raises ``StartError`` when it cannot start."""
    with _around_sanic(settings, reporter or LogReporter()) as run:
        _run_sanic(*run)


@contextlib.contextmanager
def _around_sanic(settings: Settings, reporter: Reporter, *, in_thread: bool = False
                  ) -> Iterator[tuple[Settings, ssl.SSLContext | None, Callable[[], None]]]:
    """Everything around Sanic, set up in order and undone in reverse; yields the settings
    as served (the Redis URL filled in), the TLS context and the ready announcement.
    ``in_thread``: the process's logging and signals are left to its owner, and metrics
    stay in memory (the multiprocess switch is an environment variable of the process)."""
    from relaybox.bus import (
        EmbeddedRedis,
        live_servers,
        remove_server_file,
        url_from_socket,
        write_server_file,
    )
    from relaybox.errors import RelayError
    from relaybox.server.observability import prom, tracing
    from relaybox.services.datadir import initialise, prepare
    from relaybox.store import writerproc

    early_writer = settings.writer_process and settings.workers == 1
    if early_writer:
        # First thing: the writer process starts (its interpreter, its imports) while this
        # one migrates, starts Redis and builds the app, rather than after: a restart acks sooner.
        writerproc.prestart()
    embedded: EmbeddedRedis | None = None
    record = metrics_dir = replicator = None
    try:
        if not in_thread:
            setup_logging(settings)
        problem = tracing.check(settings)
        if problem is not None:
            raise StartError(problem)
        tls_ctx = _tls_context(settings)
        fresh = settings.sqlite_path is not None and not settings.sqlite_path.exists()
        if fresh or not settings.data_dir.exists():
            reporter.initialised(initialise(settings))
        try:
            prepared = prepare(settings)
        except RelayError as exc:
            raise StartError(exc.detail) from None
        if prepared.admin_token:
            reporter.admin_token(prepared.admin_token)
        if prepared.applied:
            log.info("applied migrations: %s", ", ".join(prepared.applied))
        if not in_thread:
            # Until Sanic installs its own handlers, SIGTERM/SIGINT must still run the cleanup.
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda n, _: sys.exit(128 + n))
        replicator = _start_replication(settings)
        if not settings.redis_url:
            running = [s for s in live_servers(settings.run_dir) if s.get("redis_socket")]
            if running:
                socket_path = str(running[0]["redis_socket"])
            else:
                embedded = EmbeddedRedis(settings.run_dir)
                socket_path = embedded.start()
                embedded.start_watchdog()  # restarts it on the same socket if it dies
            settings = dataclasses.replace(settings, redis_url=url_from_socket(socket_path))
        record = write_server_file(settings.run_dir, {
            "pid": os.getpid(), "host": settings.host, "port": settings.port,
            "redis_socket": embedded.socket if embedded else None,
            "started_at": time.time(), "url": settings.base_url,
        })
        # Before the server (and prometheus_client) starts: the workers' shared metrics folder.
        if settings.metrics_enabled and not in_thread:
            metrics_dir = prom.prepare_multiprocess(settings.run_dir)
        yield settings, tls_ctx, partial(reporter.ready, ready_lines(settings, prepared.users))
    finally:
        if replicator is not None:
            # After the server's last commit: Litestream uploads it before exiting.
            replicator.stop()
        if metrics_dir is not None:
            prom.cleanup_multiprocess(metrics_dir)
        if record is not None:
            remove_server_file(record)
        if embedded is not None:
            embedded.stop()
        if early_writer:
            writerproc.discard_prestarted()


def _start_replication(settings: Settings) -> Replicator | None:
    """Litestream beside the server when replication.enabled (docs/backup.md)."""
    if not settings.replication_enabled:
        return None
    from relaybox.errors import RelayError
    from relaybox.services.replication import Replicator

    replicator = Replicator(settings)
    try:
        replicator.start()
    except RelayError as exc:
        raise StartError(exc.detail) from None
    return replicator


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context, checked before anything starts (docs/deployment.md "TLS")."""
    if not settings.tls_enabled:
        return None
    from relaybox.server import tls

    try:
        return tls.server_context(settings)
    except tls.TlsError as exc:
        raise StartError(str(exc)) from None


def _listen_kwargs(settings: Settings, tls_ctx: ssl.SSLContext | None) -> dict[str, Any]:
    """Where and how Sanic listens (``serve`` and ``start_in_thread`` alike)."""
    from relaybox.server.upgrade import GatewayProtocol

    # One process: our context, reloaded in place. Worker processes build their own
    # from the files (a context cannot be handed to another process).
    tls_arg = tls_ctx if settings.workers == 1 or tls_ctx is None else {
        "cert": settings.tls_cert_file, "key": settings.tls_key_file}
    return dict(host=settings.host, port=settings.port, access_log=False,
                protocol=GatewayProtocol, ssl=tls_arg)


def _run_sanic(settings: Settings, tls_ctx: ssl.SSLContext | None,
               announce: Callable[[], None]) -> None:
    from sanic import Sanic
    from sanic.worker.loader import AppLoader

    from relaybox.server import tls

    loader = AppLoader(factory=partial(_make_app, settings))
    app = loader.load()
    kwargs = _listen_kwargs(settings, tls_ctx)
    kwargs.update(motd=False, single_process=settings.workers == 1)
    if settings.workers > 1:
        kwargs["workers"] = settings.workers
    # Once connections are accepted: by the one process, or the main one once workers are up.
    when_ready = app.after_server_start if settings.workers == 1 else app.main_process_ready
    when_ready(lambda *_: announce())

    def on_hup(signum: int, _frame: object) -> None:
        if tls_ctx is None:
            log.info("SIGHUP: no TLS certificate to reload")
        elif settings.workers == 1:
            tls.reload(tls_ctx, settings)
        else:
            log.info("SIGHUP: restarting the workers to load the TLS certificate again")
            app.manager.restart()

    signal.signal(signal.SIGHUP, on_hup)
    app.prepare(**kwargs)
    if settings.workers == 1:
        Sanic.serve_single(primary=app)
    else:
        Sanic.serve(primary=app, app_loader=loader)


# -- in a thread of another program (the tests' in-process servers) -------------------------
#: The ``start_in_thread`` server whose code runs (its thread and its loop's tasks carry it).
in_thread_server: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "relaybox_in_thread_server", default=None)
_numbers = itertools.count(1)


def start_in_thread(settings: Settings, reporter: Reporter | None = None, *,
                    name: str | None = None, timeout: float = 60.0) -> InThreadServer:
    """Start the server as ``serve`` does, on an event loop of its own in a background
    thread named ``name`` (its Sanic app's too); return once it accepts connections
    (``port`` 0: a free one). Sharing the process, it is one process, leaves the logging
    and signals to the process, keeps metrics in memory, and binds the models to its
    database process-wide (store/db.py; tests/inproc.py binds them per server)."""
    if settings.workers != 1:
        raise StartError("a server in a thread is one process: workers must be 1")
    server = InThreadServer(settings, reporter or LogReporter(),
                            name or f"relaybox-in-thread-{next(_numbers)}")
    server.thread.start()
    try:
        server.started.result(timeout)
    except BaseException:
        server.stop()  # a server still starting stops once started
        raise
    return server


class InThreadServer:
    """What ``start_in_thread`` started: ``settings`` as served, ``port``, ``url``."""

    def __init__(self, settings: Settings, reporter: Reporter, name: str) -> None:
        self.name, self._reporter = name, reporter
        self._error: BaseException | None = None
        family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
        self._sock = socket.create_server((settings.host, settings.port), family=family)
        self.port = self._sock.getsockname()[1]  # bound now: port 0 becomes a free port
        self.settings = dataclasses.replace(settings, port=self.port)
        self.url = self.settings.base_url
        self.started: futures.Future[None] = futures.Future()
        self._stop: futures.Future[None] = futures.Future()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop as SIGTERM stops ``serve``; idempotent; raises (once) what failed since."""
        with contextlib.suppress(futures.InvalidStateError):
            self._stop.set_result(None)
        if self.thread.ident is not None:
            self.thread.join(timeout)
        if self.thread.is_alive():
            raise RuntimeError(f"{self.name} did not stop within {timeout:g} s")
        if (error := self._error) is not None:
            self._error = None
            raise RuntimeError(f"{self.name} failed while serving") from error

    def _run(self) -> None:
        from sanic import Sanic

        in_thread_server.set(self.name)
        app = None
        try:
            with _around_sanic(self.settings, self._reporter, in_thread=True) as run:
                self.settings, tls_ctx, announce = run
                app = _make_app(self.settings, self.name)
                # No banner; no touch-up (Sanic rewrites its classes' methods for one app,
                # once per process): the methods as written, as in Sanic's debug mode.
                app.config.MOTD = app.config.TOUCHUP = False
                app.after_server_start(lambda *_: announce())
                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                    runner.run(self._serve(app, tls_ctx))
        except BaseException as exc:  # handed to whoever waits for the server
            if self.started.done():
                self._error = exc
                log.error("%s failed while serving", self.name, exc_info=exc)
            else:
                self.started.set_exception(exc)
        finally:
            self._sock.close()
            if app is not None:
                Sanic.unregister_app(app)
            gc.unfreeze()  # what the app froze (app.tune_gc) outlives it here

    async def _serve(self, app: Any, tls_ctx: ssl.SSLContext | None) -> None:
        """Sanic's run of one process (sanic/server/runners.py), step by step."""
        asyncio.get_running_loop().set_default_executor(  # threads named after the server
            futures.ThreadPoolExecutor(thread_name_prefix=f"{self.name}-executor"))
        server = await app.create_server(**_listen_kwargs(self.settings, tls_ctx),
                                         sock=self._sock,
                                         asyncio_server_kwargs={"start_serving": False})
        await server.startup()
        await server.before_start()
        await server.start_serving()  # as in serve: once the before-start listeners ran
        try:
            await server.after_start()
            self.started.set_result(None)
            await asyncio.wrap_future(self._stop)
        finally:
            await server.before_stop()
            await server.close()  # then idle connections close, busy ones get a grace
            for conn in list(server.connections):
                conn.close_if_idle()
            for _ in range(int(app.config.GRACEFUL_SHUTDOWN_TIMEOUT * 10)):
                if server.connections:
                    await asyncio.sleep(0.1)  # polled, as Sanic does
            for conn in list(server.connections):
                conn.abort()
            await server.after_stop()
