"""OpenTelemetry tracing, off by default (owned by the observability work)."""

from __future__ import annotations

from sanic import Sanic

from relaybox.config import Settings


def install(app: Sanic, settings: Settings) -> None:
    """Add a span per request and per gateway publish when tracing is enabled."""
