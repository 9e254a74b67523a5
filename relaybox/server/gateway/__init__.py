"""The WebSocket gateway: one connection class over the transport, the session on it.

``connection.py`` owns the transport and the WebSocket protocol object; ``session.py``
is one device on a connection and the hot path of its events (messages in, events and
acks out), with the rest of its life in ``handshake.py``, ``lifecycle.py`` (take-over,
wind-down, heartbeat) and ``catchup.py`` (the pump over the protocol core's delivery
state).
"""

from __future__ import annotations

from relaybox.server.gateway.connection import GatewayConnection
from relaybox.server.gateway.session import Session

__all__ = ["GatewayConnection", "Session"]
