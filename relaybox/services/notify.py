"""Telling the running server processes about a write made outside the event log: the one
way a ``Change`` travels, whether a REST handler, a CLI command or a job made it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from relaybox.bus import BUS_ERRORS, CONTROL_CHANNEL, SyncBus, encode_events_by_user, redis_url_for
from relaybox.config import Settings
from relaybox.store.events import StoredEvent

#: The node id of messages sent from outside a server process (CLI commands, jobs).
OUTSIDE = "cli"


@dataclass
class Change:
    """What a write did that running servers must hear about: the ``sys.devices`` notices
    it stored, and control notices (revoke, user_removed) for the hubs."""

    events: list[StoredEvent] = field(default_factory=list)
    controls: list[dict[str, Any]] = field(default_factory=list)


class LocalHub(Protocol):
    """The hub of the server process a change was made in (server/gateway/hub.py)."""

    def committed(self, events: list[StoredEvent]) -> None: ...

    async def on_control(self, msg: dict[str, Any]) -> None: ...


class AsyncPublisher(Protocol):
    """A server process's bus (relaybox.bus.Bus): False when Redis did not take it."""

    async def publish_many(self, messages: list[tuple[str, bytes]]) -> bool: ...


def bus_messages(node_id: str, events: list[StoredEvent],
                 controls: list[dict[str, Any]]) -> list[tuple[str, bytes]]:
    """(channel, message): each user's events on that user's channel, each control notice
    on the control channel, all tagged with the sending node."""
    return [*encode_events_by_user(node_id, events),
            *((CONTROL_CHANNEL, orjson.dumps({**ctl, "node": node_id})) for ctl in controls)]


class Notifier:
    """Tells every running server process about a ``Change``.

    Inside a server process it has that process's hub: the events go to the hub (which
    offers them to the sessions here and forwards them on the bus when other processes
    listen), the controls are applied here and then published for the others. Outside
    one (``notify_blocking``: CLI commands, jobs) everything is published on the bus.
    """

    def __init__(self, bus: AsyncPublisher | SyncBus | None, *, hub: LocalHub | None = None,
                 node_id: str = OUTSIDE) -> None:
        self.bus = bus
        self.hub = hub
        self.node_id = node_id

    async def notify(self, change: Change) -> bool:
        """Apply ``change`` in this process and publish it; False when the bus refused it
        (the bus logs why)."""
        events = change.events
        if self.hub is not None:
            if events:
                self.hub.committed(events)
            events = []  # the hub forwards them itself, only when peers listen
            for ctl in change.controls:
                await self.hub.on_control(ctl)
        messages = bus_messages(self.node_id, events, change.controls)
        if not messages or self.bus is None:
            return True
        assert not isinstance(self.bus, SyncBus), "outside a server use notify_blocking()"
        return await self.bus.publish_many(messages)

    def notify_blocking(self, change: Change) -> None:
        """Publish ``change`` from outside a server process (a ``SyncBus``); raises the
        bus's errors."""
        assert self.hub is None and isinstance(self.bus, SyncBus), "in a server use notify()"
        for channel, message in bus_messages(self.node_id, change.events, change.controls):
            self.bus.redis.publish(channel, message)


@dataclass(frozen=True)
class Told:
    """Whether running servers heard of a change made outside them, and if not, why."""

    told: bool
    problem: str | None = None


def tell_running_servers(settings: Settings, change: Change) -> Told:
    """From a CLI command or a job: publish ``change`` on the servers' Redis.

    Never starts a Redis of its own: with the embedded one, the URL comes from a live
    server's record (bus.redis_url_for), and no live server means nobody to tell.
    """
    url = redis_url_for(settings.redis_url, settings.run_dir)
    if url is None:
        return Told(False)
    bus = SyncBus(url)
    try:
        Notifier(bus).notify_blocking(change)
        return Told(True)
    except BUS_ERRORS as exc:
        return Told(False, str(exc))
    finally:
        bus.close()
