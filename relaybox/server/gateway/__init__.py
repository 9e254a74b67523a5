"""The WebSocket gateway: one connection class over the transport, the session on it.

``connection.py`` owns the transport and the WebSocket protocol object; ``session.py``
is one device's life on a connection (``handshake.py``, ``receive.py``, and the pump
over the protocol core's delivery state in ``delivery.py``).
"""

from __future__ import annotations

from relaybox.server.gateway.connection import GatewayConnection
from relaybox.server.gateway.session import Session

__all__ = ["GatewayConnection", "Session"]
