"""Hostile-peer fixtures: the gateway suite's real servers, checked for tracebacks."""

from __future__ import annotations

from tests.gateway.conftest import _stop_servers_at_the_end, module_servers, servers

__all__ = ["_stop_servers_at_the_end", "module_servers", "servers"]
