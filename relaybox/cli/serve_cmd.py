"""``relaybox serve``: initialise if needed, migrate, start Redis and the server."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import ssl
import time
from functools import partial
from typing import Any

import click

from relaybox import __version__
from relaybox.cli.common import CliError, err, settings_for
from relaybox.config import Settings


class _StartupNoise(logging.Filter):
    """Drops the web framework's start-up and shutdown chatter (workers starting, its
    extensions listed) and each migration step: ``serve`` prints one line of its own."""

    QUIET = frozenset(("sanic.root", "sanic.server", "relaybox.migrate"))

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name in self.QUIET and record.levelno <= logging.INFO)


def setup_logging(settings: Settings) -> None:
    from relaybox.server.logs import configure

    configure(settings)
    _quiet_startup(settings)


def _quiet_startup(settings: Settings) -> None:
    if settings.log_level == "debug":
        return
    for handler in logging.getLogger("relaybox").handlers:
        if not any(isinstance(f, _StartupNoise) for f in handler.filters):
            handler.addFilter(_StartupNoise())


def _make_app(settings: Settings) -> Any:
    """The app, in the serving process or in each worker process (which sets up its
    own logging while the app is made)."""
    from relaybox.server.app import create_app

    app = create_app(settings)
    _quiet_startup(settings)
    return app


def ready_lines(settings: Settings, users: int) -> list[str]:
    """What ``serve`` prints once it accepts connections: the URLs, and for a server
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


def serve(settings: Settings) -> None:
    """Run the server in the foreground until SIGTERM/SIGINT."""
    if not (settings.writer_process and settings.workers == 1):
        _serve(settings)
        return
    from relaybox.store import writerproc

    # The writer process starts (its interpreter, its imports) while this one migrates,
    # starts Redis and builds the app, rather than after: a restart acks sooner.
    writerproc.prestart()
    try:
        _serve(settings)
    finally:
        writerproc.discard_prestarted()


def _serve(settings: Settings) -> None:
    from relaybox.bus import (
        EmbeddedRedis,
        live_servers,
        remove_server_file,
        url_from_socket,
        write_server_file,
    )
    from relaybox.cli.init_cmd import initialise, show_init
    from relaybox.errors import RelayError
    from relaybox.server import prom, tracing
    from relaybox.services.datadir import prepare

    log = logging.getLogger("relaybox.server")
    problem = tracing.check(settings)
    if problem is not None:
        raise CliError(problem)
    tls_ctx = _tls_context(settings)
    fresh = settings.sqlite_path is not None and not settings.sqlite_path.exists()
    if fresh or not settings.data_dir.exists():
        res = initialise(settings)
        show_init(res, stderr=True)
    try:
        prepared = prepare(settings)
    except RelayError as exc:
        raise CliError(exc.detail) from None
    if prepared.admin_token:
        err.print(f"admin token [bold yellow]{prepared.admin_token}[/] (shown once)")
    applied, users = prepared.applied, prepared.users
    if applied:
        log.info("applied migrations: %s", ", ".join(applied))

    # Until Sanic installs its own handlers, SIGTERM/SIGINT must still run the cleanup below.
    def _stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    embedded: EmbeddedRedis | None = None
    record = None
    metrics_dir = None
    replicator = _start_replication(settings)
    try:
        if not settings.redis_url:
            running = [s for s in live_servers(settings.run_dir) if s.get("redis_socket")]
            if running:
                socket = str(running[0]["redis_socket"])
            else:
                embedded = EmbeddedRedis(settings.run_dir)
                socket = embedded.start()
                embedded.start_watchdog()  # restarts it on the same socket if it dies
            settings = dataclasses.replace(settings, redis_url=url_from_socket(socket))
        record = write_server_file(settings.run_dir, {
            "pid": os.getpid(), "host": settings.host, "port": settings.port,
            "redis_socket": embedded.socket if embedded else None,
            "started_at": time.time(), "url": settings.base_url,
        })
        # Before the server (and prometheus_client) starts: the workers' shared metrics folder.
        metrics_dir = prom.prepare_multiprocess(settings.run_dir) \
            if settings.metrics_enabled else None
        _run_sanic(settings, tls_ctx, ready_lines(settings, users))
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


def _start_replication(settings: Settings) -> Any:
    """Litestream beside the server when replication.enabled (docs/backup.md)."""
    if not settings.replication_enabled:
        return None
    from relaybox.errors import RelayError
    from relaybox.services.replication import Replicator

    replicator = Replicator(settings)
    try:
        replicator.start()
    except RelayError as exc:
        raise CliError(exc.detail) from None
    return replicator


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context, checked before anything starts (docs/deployment.md "TLS")."""
    if not settings.tls_enabled:
        return None
    from relaybox.server import tls

    try:
        return tls.server_context(settings)
    except tls.TlsError as exc:
        raise CliError(str(exc)) from None


def _run_sanic(settings: Settings, tls_ctx: ssl.SSLContext | None = None,
               ready: list[str] | None = None) -> None:
    from sanic import Sanic
    from sanic.worker.loader import AppLoader

    from relaybox.server import tls
    from relaybox.server.upgrade import GatewayProtocol

    loader = AppLoader(factory=partial(_make_app, settings))
    app = loader.load()
    kwargs: dict[str, Any] = dict(host=settings.host, port=settings.port, access_log=False,
                                  motd=False, single_process=settings.workers == 1,
                                  protocol=GatewayProtocol)
    if tls_ctx is not None:
        # One process: our context, reloaded in place. Worker processes build their own
        # from the files (a context cannot be handed to another process).
        kwargs["ssl"] = tls_ctx if settings.workers == 1 else {
            "cert": settings.tls_cert_file, "key": settings.tls_key_file}
    if settings.workers > 1:
        kwargs["workers"] = settings.workers

    def announce(*_: object) -> None:
        for line in ready or ():
            if settings.log_format == "json":
                # A JSON log stays one JSON object per line.
                logging.getLogger("relaybox.server").info(line)
            else:
                click.echo(line, err=True)

    # Once, when connections are accepted: by the one process, or by the main process
    # once its workers are up.
    if settings.workers == 1:
        app.after_server_start(announce)
    else:
        app.main_process_ready(announce)

    def on_hup(signum: int, _frame: object) -> None:
        log = logging.getLogger("relaybox.server")
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


def register(cli: click.Group) -> None:
    @cli.command("serve")
    @click.option("--host", help="Bind address (setting: host).")
    @click.option("--port", type=int, help="TCP port (setting: port).")
    @click.option("--workers", type=int, help="Server processes (setting: workers).")
    def serve_cmd(host: str | None, port: int | None, workers: int | None) -> None:
        """Run the server (initialises a missing data dir first)."""
        settings = settings_for({"host": host, "port": port, "workers": workers},
                                check_writable=True)
        setup_logging(settings)
        serve(settings)
