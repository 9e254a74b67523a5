"""Bus fixtures: the gateway's real servers, for the tests that relay through a Redis URL."""

from __future__ import annotations

from tests.gateway.conftest import _stop_servers_at_the_end, servers

__all__ = ["_stop_servers_at_the_end", "servers"]
