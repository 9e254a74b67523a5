"""REST API blueprints, one per resource."""

from __future__ import annotations

from sanic import Sanic


def register_blueprints(app: Sanic) -> None:
    from relaybox.server.api import status

    app.blueprint(status.bp)
