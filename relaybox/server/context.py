"""What every handler of one server process shares (built once at start)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import peewee as pw

from relaybox.bus import Bus
from relaybox.config import Settings
from relaybox.server.gateway.hub import Hub
from relaybox.services.notify import Change, Notifier
from relaybox.store.front import EventLog

if TYPE_CHECKING:
    from relaybox.jobs.scheduler import JobScheduler
    from relaybox.server.observability.health import HealthMonitor

log = logging.getLogger("relaybox.server")

T = TypeVar("T")


class MetricsHooks(Protocol):
    """What the gateway and the event log call on the metrics (observability/metrics.py
    ``Metrics`` is the one implementation; None when metrics are off)."""

    def handshake(self, result: str) -> None: ...
    def session_opened(self) -> None: ...
    def session_closed(self, code: int | None) -> None: ...
    def connection_limited(self, limit: str) -> None: ...
    def outbox_overflow(self) -> None: ...
    def key_lookup(self, source: str) -> None: ...
    def nacked(self, code: str) -> None: ...
    def delivered(self, committed_ms: int) -> None: ...
    def batch(self, size: int, seconds: float) -> None: ...


@dataclass
class ServerContext:
    settings: Settings
    db: pw.Database
    eventlog: EventLog
    hub: Hub
    bus: Bus | None
    server_id: str
    node_id: str
    started_at: float = field(default_factory=time.time)
    metrics: MetricsHooks | None = None
    scheduler: JobScheduler | None = None
    health: HealthMonitor | None = None
    _local_failures: dict[str, tuple[int, int]] = field(default_factory=dict)

    # -- handshake failure limit (protocol.md §2), shared through Redis ------------------
    def _failure_key(self, address: str) -> str:
        return f"relaybox:hsfail:{address}:{int(time.time() // 60)}"

    async def handshake_limited(self, address: str) -> bool:
        limit = self.settings.gateway_handshake_failures_per_min
        # Alone on the bus, this process made every count there is (handshake_failed
        # keeps the local one too): no Redis round trip on the handshake's path.
        if self.bus is not None and self.bus.healthy and self.hub.peers.present:
            try:
                count = await asyncio.wait_for(self.bus.get_int(self._failure_key(address)), 1)
                return count >= limit
            except Exception:  # noqa: S110 - fall back to the local count below
                pass
        minute, count = self._local_failures.get(address, (0, 0))
        return minute == int(time.time() // 60) and count >= limit

    async def handshake_failed(self, address: str) -> None:
        minute = int(time.time() // 60)
        prev_minute, count = self._local_failures.get(address, (minute, 0))
        self._local_failures[address] = (minute, count + 1 if prev_minute == minute else 1)
        if len(self._local_failures) > 10000:
            self._local_failures.clear()
        if self.bus is not None and self.bus.healthy:
            try:
                await asyncio.wait_for(self.bus.incr_window(self._failure_key(address), 60), 1)
            except Exception as exc:
                log.debug("handshake failure not counted in redis: %s", exc)

    # -- announcing writes done outside the event log ---------------------------------------
    async def announce(self, change: Change) -> None:
        """Relay notices of a service write here and on every other process."""
        await Notifier(self.bus, hub=self.hub, node_id=self.node_id).notify(change)

    async def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking service code off the loop."""
        return await asyncio.get_running_loop().run_in_executor(self.eventlog.readers, fn, *args)
