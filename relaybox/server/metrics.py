"""Prometheus metrics (owned by the observability work; the gateway calls these hooks)."""

from __future__ import annotations

from typing import Any

from sanic import Sanic

from relaybox.config import Settings


class Metrics:
    """Hooks the gateway and API call; each updates Prometheus collectors."""

    def handshake(self, result: str) -> None: ...

    def session_opened(self) -> None: ...

    def session_closed(self, code: int | None) -> None: ...

    def nacked(self, code: str) -> None: ...

    def delivered(self, event: Any) -> None: ...

    def batch(self, size: int, seconds: float) -> None: ...


def install(app: Sanic, settings: Settings) -> None:
    """Register /metrics and the request middleware on ``app``."""
