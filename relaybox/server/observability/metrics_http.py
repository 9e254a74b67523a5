"""``/metrics`` and the HTTP request middleware: ``install(app, settings)`` puts them on the app.

The collectors and the hooks the gateway calls are in metrics.py.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import Any

from sanic import HTTPResponse, Request, Sanic

from relaybox.config import Settings
from relaybox.server.errors import problem
from relaybox.server.observability.metrics import Metrics, health_monitor


def install(app: Sanic, settings: Settings) -> None:
    """Register /metrics and the request middleware on ``app``.

    The metrics read the health monitor (``app.ctx.health``): app.py installs health.py
    first, so that its start listener runs before this one's.
    """
    metrics = Metrics(settings) if settings.metrics_enabled else None
    app.ctx.metrics = metrics
    if metrics is None:
        return

    @app.before_server_start
    async def start_metrics(app: Sanic) -> None:
        ctx = app.ctx.relay
        ctx.health = getattr(app.ctx, "health", None)
        metrics.setup(ctx)
        metrics.start_sampler()

    @app.after_server_stop
    async def stop_metrics(app: Sanic) -> None:
        await metrics.stop_sampler()
        if metrics.registry is not None:
            metrics.flush()
            metrics.mark_dead()

    @app.on_request
    async def metrics_start(request: Request) -> None:
        request.ctx.metrics_t0 = time.perf_counter()

    @app.on_response
    async def metrics_end(request: Request, response: HTTPResponse) -> None:
        t0 = getattr(request.ctx, "metrics_t0", None)
        if t0 is None or response is None or metrics.registry is None:
            return
        route = request.route
        if route is not None and getattr(route.extra, "websocket", False):
            return  # a gateway session is not a request: its metrics are the gateway's
        # The route template, never the raw path: label values must stay few.
        name = "/" + route.path if route is not None else "unmatched"
        metrics.http_request(name, request.method, response.status, time.perf_counter() - t0)

    token = settings.metrics_token.encode()

    async def metrics_route(request: Request) -> HTTPResponse:
        if token:
            sent = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(sent, b"Bearer " + token):
                return problem(401, "unauthorized", "metrics need the metrics token", request,
                               {"WWW-Authenticate": 'Bearer realm="relaybox-metrics"'})
        monitor = health_monitor(metrics.ctx)
        if monitor is not None:
            await monitor.check()
        metrics.flush()
        body = await asyncio.get_running_loop().run_in_executor(None, metrics.render)
        from prometheus_client import CONTENT_TYPE_LATEST

        return HTTPResponse(body, content_type=CONTENT_TYPE_LATEST)

    _document(metrics_route)
    app.add_route(metrics_route, "/metrics", methods=["GET"], name="metrics")


def _document(handler: Any) -> None:
    """Describe /metrics in the OpenAPI document (api.md §3 Routes lists it)."""
    try:
        from sanic_ext.extensions.openapi import openapi
        from sanic_ext.extensions.openapi.builders import OperationStore
    except ImportError:  # pragma: no cover - sanic-ext is a dependency
        return
    openapi.definition(summary="Prometheus metrics",
                       description="Text exposition format. When metrics.token is set, "
                                   "'Authorization: Bearer <metrics token>' is needed.")(handler)
    op = OperationStore()[handler]
    op.responses["200"] = {"description": "OK", "content": {
        "text/plain": {"schema": {"type": "string"}}}}
    op.responses["401"] = {"description": "Unauthorized", "content": {
        "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
