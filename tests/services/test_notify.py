"""services/notify.py: the one way a Change reaches running servers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from relaybox.bus import CONTROL_CHANNEL, decode_events, events_channel
from relaybox.config import load_settings
from relaybox.services.notify import Change, Notifier, bus_messages, tell_running_servers
from relaybox.store.events import StoredEvent


def event(user_id: str, seq: int) -> StoredEvent:
    return StoredEvent(user_id, "sys.devices", seq, f"id-{user_id}-{seq}", None, None,
                       1_800_000_000_000, '{"event":"device_added"}')


class FakeHub:
    def __init__(self) -> None:
        self.events: list[StoredEvent] = []
        self.controls: list[dict[str, Any]] = []

    def committed(self, events: list[StoredEvent]) -> None:
        self.events.extend(events)

    async def on_control(self, msg: dict[str, Any]) -> None:
        self.controls.append(msg)


class FakeBus:
    def __init__(self, takes: bool = True) -> None:
        self.takes = takes
        self.sent: list[tuple[str, bytes]] = []

    async def publish_many(self, messages: list[tuple[str, bytes]]) -> bool:
        self.sent.extend(messages)
        return self.takes


REVOKE = {"kind": "revoke", "device_id": "d1"}


def test_bus_messages_put_each_users_events_on_their_channel_and_controls_on_one() -> None:
    msgs = bus_messages("node-a", [event("u1", 1), event("u2", 1), event("u1", 2)], [REVOKE])
    channels = [c for c, _ in msgs]
    assert channels == [events_channel("u1"), events_channel("u2"), CONTROL_CHANNEL]
    node, events = decode_events(msgs[0][1], StoredEvent)
    assert node == "node-a" and [e.seq for e in events] == [1, 2]
    assert orjson.loads(msgs[2][1]) == {**REVOKE, "node": "node-a"}


async def test_in_a_server_the_hub_gets_the_events_and_only_controls_are_published() -> None:
    hub, bus = FakeHub(), FakeBus()
    change = Change(events=[event("u1", 1)], controls=[REVOKE])
    assert await Notifier(bus, hub=hub, node_id="node-a").notify(change) is True
    # The hub forwards events itself when peers listen: publishing them here too would
    # deliver them twice.
    assert hub.events == change.events and hub.controls == [REVOKE]
    assert bus.sent == [(CONTROL_CHANNEL, orjson.dumps({**REVOKE, "node": "node-a"}))]


async def test_a_refusing_bus_is_reported_and_the_change_still_applies_here() -> None:
    hub = FakeHub()
    told = await Notifier(FakeBus(takes=False), hub=hub).notify(Change(controls=[REVOKE]))
    assert told is False and hub.controls == [REVOKE]


async def test_without_a_bus_or_anything_to_send_nothing_is_published() -> None:
    hub, bus = FakeHub(), FakeBus()
    assert await Notifier(None, hub=hub).notify(Change(events=[event("u1", 1)])) is True
    assert await Notifier(bus, hub=hub).notify(Change(events=[event("u1", 2)])) is True
    assert bus.sent == [] and [e.seq for e in hub.events] == [1, 2]


def test_from_outside_with_no_server_running_nobody_is_told(tmp_path: Path) -> None:
    settings = load_settings(tmp_path / "data", env={})  # embedded Redis, no live server
    told = tell_running_servers(settings, Change(controls=[REVOKE]))
    assert told.told is False and told.problem is None


def test_from_outside_an_unreachable_redis_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    settings = load_settings(tmp_path / "data", env={},
                             overrides={"redis_url": f"unix://{tmp_path}/no-redis.sock"})
    told = tell_running_servers(settings, Change(controls=[REVOKE]))
    assert told.told is False and told.problem is not None
    assert "no-redis.sock" in told.problem
