"""What the hub needs of a live session, and of that session's server (typing only)."""

from __future__ import annotations

import asyncio
from typing import Protocol

from relaybox.config import Settings
from relaybox.protocol.delivery import DeliveryState, Framed, StreamState
from relaybox.store.front import EventLog


class SessionServer(Protocol):
    """What the hub reads of a session's server (server/context.py ``ServerContext``)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def eventlog(self) -> EventLog: ...


class HubSession(Protocol):
    """A live gateway session as the hub (and what reads the hub's sessions: health,
    metrics) sees it; server/gateway/session.py ``Session`` is the one implementation."""

    session_id: str
    device_id: str
    user_id: str
    close_code: int | None
    finished: asyncio.Event
    state: DeliveryState
    wake: asyncio.Event

    @property
    def ctx(self) -> SessionServer: ...
    @property
    def ready(self) -> bool: ...
    @property
    def streams(self) -> dict[str, StreamState]: ...
    def send(self, frame: str) -> None: ...
    def offer(self, ev: Framed) -> None: ...
    def close_soon(self, code: int, reason: str) -> None: ...
