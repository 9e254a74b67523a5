"""``relaybox serve``: initialise if needed, migrate, start Redis and the server."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
from functools import partial

import click

from relaybox.cli.common import CliError, err, open_db, settings_for
from relaybox.config import Settings


def setup_logging(settings: Settings) -> None:
    from relaybox.server.logs import configure

    configure(settings)


def serve(settings: Settings) -> None:
    """Run the server in the foreground until SIGTERM/SIGINT."""
    from relaybox.bus import (
        EmbeddedRedis,
        live_servers,
        remove_server_file,
        url_from_socket,
        write_server_file,
    )
    from relaybox.cli.init_cmd import initialise, show_init
    from relaybox.server import prom, tracing
    from relaybox.services import identity
    from relaybox.store import migrate

    log = logging.getLogger("relaybox.server")
    problem = tracing.check(settings)
    if problem is not None:
        raise CliError(problem)
    fresh = settings.sqlite_path is not None and not settings.sqlite_path.exists()
    if fresh or not settings.data_dir.exists():
        res = initialise(settings)
        show_init(res, stderr=True)
    db = open_db(settings, must_exist=False)
    try:
        # Nodes started together on one empty database set it up one at a time.
        with migrate.exclusive(db):
            applied = migrate.up(db)
            if not identity.is_initialised(db):
                _, token = identity.initialise(db)
                if token:
                    err.print(f"admin token [bold yellow]{token}[/] (shown once)")
    finally:
        db.close()
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
        _run_sanic(settings)
    finally:
        if metrics_dir is not None:
            prom.cleanup_multiprocess(metrics_dir)
        if record is not None:
            remove_server_file(record)
        if embedded is not None:
            embedded.stop()


def _run_sanic(settings: Settings) -> None:
    from sanic import Sanic
    from sanic.worker.loader import AppLoader

    from relaybox.server.app import create_app
    from relaybox.server.upgrade import GatewayProtocol

    loader = AppLoader(factory=partial(create_app, settings))
    app = loader.load()
    kwargs = dict(host=settings.host, port=settings.port, access_log=False, motd=False,
                  single_process=settings.workers == 1, protocol=GatewayProtocol)
    if settings.workers > 1:
        kwargs["workers"] = settings.workers
    app.prepare(**kwargs)  # type: ignore[arg-type]
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
