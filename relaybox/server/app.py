"""create_app(settings): the Sanic application with its listeners and blueprints."""

from __future__ import annotations

import asyncio
import gc
import logging
import os

import peewee as pw
from sanic import Request, Sanic, Websocket
from sanic.response import HTTPResponse
from sanic_ext import Extend

from relaybox import __version__
from relaybox.bus import Bus
from relaybox.config import Settings
from relaybox.errors import Unavailable
from relaybox.jobs import scheduler
from relaybox.protocol.codes import CloseCode
from relaybox.protocol.encoding import uuid7
from relaybox.server import autoroutes, webapp
from relaybox.server.context import ServerContext
from relaybox.server.errors import access_log, handle_error
from relaybox.server.errors import request_id as assign_request_id
from relaybox.server.gateway import Session
from relaybox.server.gateway.hub import Hub
from relaybox.server.observability import health, logs, metrics_http, tracing
from relaybox.server.upgrade import raise_open_file_limit
from relaybox.services import identity
from relaybox.store.db import open_database
from relaybox.store.front import EventLog
from relaybox.store.quotas import Quotas
from relaybox.store.writerproc import ProcessEventLog, database_spec

log = logging.getLogger("relaybox.server")


def create_app(settings: Settings, name: str = "relaybox") -> Sanic:
    """Build the app for ``settings``; storage, bus and hub start in the listeners."""
    app = Sanic(name, env_prefix="RELAYBOX_SANIC_")
    cfg = app.config
    cfg.WEBSOCKET_MAX_SIZE = settings.gateway_max_frame_bytes
    # Liveness is ours (protocol.md §4): Sanic's own keepalive would close with 1011.
    cfg.WEBSOCKET_PING_INTERVAL = None  # type: ignore[assignment]
    cfg.WEBSOCKET_PING_TIMEOUT = None  # type: ignore[assignment]
    cfg.PROXIES_COUNT = settings.proxies_count
    cfg.REQUEST_MAX_SIZE = max(1_000_000, settings.gateway_max_body_bytes * 2 + 65536)
    cfg.GRACEFUL_SHUTDOWN_TIMEOUT = 5.0
    # Connection phases (docs/security.md Limits); upgrade.py adds a deadline for the
    # whole request head, which Sanic's request timeout restarts on every byte.
    cfg.KEEP_ALIVE_TIMEOUT = settings.keep_alive_s  # type: ignore[assignment]
    cfg.REQUEST_TIMEOUT = settings.header_timeout_s  # type: ignore[assignment]
    cfg.ACCESS_LOG = False
    cfg.FALLBACK_ERROR_FORMAT = "json"
    cfg.OAS_UI_DEFAULT = "swagger"
    cfg.OAS_URL_PREFIX = "/docs"
    cfg.OAS_UI_REDOC = False
    # Swagger UI is served by webapp.py from vendored files: sanic-ext's own page loads
    # it from a CDN (blank offline), and its oauth2 page fetches from one at run time.
    cfg.OAS_UI_SWAGGER = False
    cfg.TOUCHUP = True
    app.ctx.settings = settings
    # sanic-ext: the OpenAPI document at /docs/openapi.json and Swagger UI at /docs.
    Extend(app, config={"cors": False, "http_auto_trace": False,
                        **autoroutes.EXTEND_CONFIG})

    @app.before_server_start
    async def start(app: Sanic) -> None:
        loop = asyncio.get_running_loop()
        raise_open_file_limit()
        db = open_database(settings)
        secrets = await loop.run_in_executor(None, _load_secrets, db)
        node_id = uuid7()
        bus = Bus(settings.redis_url, node_id) if settings.redis_url else None
        hub = Hub(node_id, bus)
        eventlog: EventLog
        if settings.writer_process:
            eventlog = ProcessEventLog(db, database_spec(db, settings),
                                       batch_max=settings.commit_batch_max,
                                       read_threads=settings.read_threads,
                                       on_committed=hub.committed,
                                       setup=logs.configure_writer)
        else:
            eventlog = EventLog(db, batch_max=settings.commit_batch_max,
                                read_threads=settings.read_threads, on_committed=hub.committed,
                                quotas=Quotas.from_settings(settings),
                                checkpoints=not settings.replication_enabled)
        eventlog.start(loop)
        await eventlog.ready()
        ctx = ServerContext(settings=settings, db=db, eventlog=eventlog, hub=hub, bus=bus,
                            server_id=secrets.server_id, node_id=node_id)
        app.ctx.relay = ctx
        ctx.metrics = getattr(app.ctx, "metrics", None)
        if ctx.metrics is not None:
            eventlog.on_batch = ctx.metrics.batch
        if bus is not None:
            bus.on_subscribed = hub.resubscribed
            bus.start_listening(hub.on_bus)
            # Before the first connection: every other server process now publishes.
            await hub.peers.join()
            hub.peers.start_rechecks()
        await scheduler.start(ctx)
        tune_gc()

    @app.before_server_stop
    async def stop_sessions(app: Sanic) -> None:
        app.ctx.stopping = True  # readiness answers 503: load balancers drain this node
        ctx: ServerContext = app.ctx.relay
        await ctx.hub.close_all(CloseCode.GOING_AWAY, "going_away")

    @app.after_server_stop
    async def stop(app: Sanic) -> None:
        ctx: ServerContext = app.ctx.relay
        await scheduler.stop(ctx)
        await ctx.hub.peers.stop()
        await asyncio.get_running_loop().run_in_executor(None, ctx.eventlog.stop)
        if ctx.bus is not None:
            await ctx.bus.close()
        if not ctx.db.is_closed():
            ctx.db.close()

    @app.after_server_start
    async def accepting(app: Sanic) -> None:
        app.ctx.accepting = True

    @app.on_request
    async def request_id(request: Request) -> None:
        assign_request_id(request)
        if not getattr(request.app.ctx, "accepting", False):
            # The socket listens while Sanic still runs its after-start listeners; a
            # request handled then can be cancelled under it (a bare 500). Until the
            # process is fully started it is simply not ready yet.
            raise Unavailable("the server is starting; retry shortly", code="starting")
        if request.method in ("GET", "HEAD", "DELETE", "OPTIONS") and (
                request.headers.get("content-length", "0") != "0"
                or "transfer-encoding" in request.headers):
            # A body where the route reads none: read it (bounded by REQUEST_MAX_SIZE) and
            # ignore it, or the framework logs an error line for every such request.
            await request.receive_body()

    @app.on_response
    async def add_request_id(request: Request, response: HTTPResponse) -> None:
        # api.md §1 Conventions: every response carries the id; one access line each.
        rid = assign_request_id(request)
        if response is not None:
            response.headers["X-Request-ID"] = rid
            if request.method == "NONE" and request.transport.is_closing():
                # No head was read and the connection is gone (the client left, or
                # upgrade.py answered the head's timeout itself): nothing is answered.
                return
            access_log(request, response.status, rid)

    app.error_handler.add(Exception, handle_error)

    @app.websocket("/api/v1/gateway")
    async def gateway(request: Request, ws: Websocket) -> None:
        await Session(request.app.ctx.relay, ws, request.client_ip or "unknown").run()

    from relaybox.server.api import register_blueprints

    register_blueprints(app)
    webapp.install(app)
    # Observability, each part explicitly; health before metrics, which read its monitor.
    logs.install(app, settings)
    health.install(app, settings)
    metrics_http.install(app, settings)
    tracing.install(app, settings)
    autoroutes.add_head_and_options(app)  # last: every route is known by now
    return app


def tune_gc() -> None:
    """Fewer, cheaper garbage collections while serving.

    Everything built during start-up (the app, routes, models, OpenAPI document) lives
    as long as the process: frozen, the collector stops walking it. A session allocates
    a few hundred short-lived objects; a young-generation threshold of 10,000 instead of
    700 keeps collections from running several times per handshake.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def _load_secrets(db: pw.Database) -> identity.ServerSecrets:
    try:
        return identity.load_secrets()
    finally:
        db.close()  # this thread's connection: back to the pool (or closed, on SQLite)


def pid() -> int:
    return os.getpid()


__all__ = ["__version__", "create_app"]
