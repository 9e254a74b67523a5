"""GET /api/v1/status: is this server ready, and what is it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from relaybox import __version__
from relaybox.server.api.docs import doc, ref
from relaybox.server.api.examples import LIVE as LIVE_EXAMPLE
from relaybox.server.api.examples import READY as READY_EXAMPLE
from relaybox.server.api.examples import STATUS as STATUS_EXAMPLE
from relaybox.server.api.models import HealthOut, StatusOut
from relaybox.server.context import ServerContext
from relaybox.services.datadir import database_answers

bp = Blueprint("status", url_prefix="/api/v1")


@bp.get("/status")
@doc("Is this server ready, and what is it",
     description="503 (same shape, with 'failing') when the database or Redis is down.",
     ok=(200, ref(StatusOut), STATUS_EXAMPLE),
     extra=[(503, ref(StatusOut), {**STATUS_EXAMPLE, "status": "unavailable",
                                   "redis": "down", "failing": ["redis"]})])
async def status(request: Request) -> HTTPResponse:
    ctx: ServerContext = request.app.ctx.relay
    db_ok, redis_ok = await _parts(request)
    body: dict[str, Any] = {
        "status": "ok" if db_ok and redis_ok else "unavailable",
        "version": __version__,
        "server_id": ctx.server_id,
        "uptime_s": round(time.time() - ctx.started_at, 3),
        "database": "ok" if db_ok else "down",
        "redis": "ok" if redis_ok else "down",
        "connections": ctx.hub.count,
    }
    if not (db_ok and redis_ok):
        failing = [k for k in ("database", "redis") if body[k] != "ok"]
        body["failing"] = failing
        return json(body, status=503)
    return json(body)


async def _parts(request: Request) -> tuple[bool, bool]:
    """(database up, Redis up)."""
    ctx: ServerContext = request.app.ctx.relay
    monitor = getattr(request.app.ctx, "health", None)
    if monitor is not None:
        # Through the circuit breakers (server/observability/health.py): a part known to be down is
        # reported at once instead of waiting on it again.
        snap = await monitor.check()
        return snap.database, snap.redis
    db_ok = await asyncio.get_running_loop().run_in_executor(ctx.eventlog.readers,
                                                             database_answers, ctx.db)
    redis_ok = True if ctx.bus is None else await ctx.bus.ping()
    return db_ok, redis_ok


@bp.get("/health/live")
@doc("Liveness: this process answers (restart it when it does not)",
     description="200 whenever the process serves requests; checks no dependency, so a "
                 "database or Redis outage never gets a healthy process restarted.",
     ok=(200, ref(HealthOut), LIVE_EXAMPLE))
async def live(request: Request) -> HTTPResponse:
    return json({"status": "ok"})


@bp.get("/health/ready")
@doc("Readiness: send this node traffic (the load balancer's health check)",
     description="200 while this node can store and deliver: its database answers. A "
                 "Redis outage alone keeps it ready (it still stores and serves its own "
                 "sessions; other nodes catch up when Redis is back). 503 when the database "
                 "is down or the process is shutting down (drain it).",
     ok=(200, ref(HealthOut), READY_EXAMPLE),
     extra=[(503, ref(HealthOut), {"status": "unavailable", "database": "down",
                                   "redis": "ok"})])
async def ready(request: Request) -> HTTPResponse:
    if getattr(request.app.ctx, "stopping", False):
        return json({"status": "stopping"}, status=503)
    db_ok, redis_ok = await _parts(request)
    body = {"status": "ready" if db_ok else "unavailable",
            "database": "ok" if db_ok else "down", "redis": "ok" if redis_ok else "down"}
    return json(body, status=200 if db_ok else 503)
