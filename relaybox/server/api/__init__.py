"""REST API blueprints, one per resource."""

from __future__ import annotations

from sanic import Sanic


def register_blueprints(app: Sanic) -> None:
    from relaybox.server.api import admin, devices, docs, pairing, status, streams, tokens

    for module in (status, tokens, devices, pairing, streams, admin):
        app.blueprint(module.bp)
    docs.install(app)
    docs.exclude_websockets(app)

    @app.after_server_stop
    async def close_limiter(app: Sanic) -> None:
        limiter = getattr(app.ctx, "ratelimiter", None)
        if limiter is not None:
            await limiter.close()
