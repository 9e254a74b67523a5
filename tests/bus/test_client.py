"""bus/client.py: Bus and SyncBus against a real embedded Redis."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from relaybox.bus import (
    CONTROL_CHANNEL,
    Bus,
    EmbeddedRedis,
    SyncBus,
    decode_control,
    events_channel,
    url_from_socket,
)

pytestmark = pytest.mark.asyncio(loop_scope="function")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One Redis for the module (stopping one takes seconds): each test has channels
    and keys of its own."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    yield url_from_socket(server.start())
    server.stop()


class Listener:
    """A Bus listening on the fixed channels, queueing what it hears."""

    def __init__(self, url: str, node_id: str, channels: tuple[str, ...] | None = None
                 ) -> None:
        self.bus = Bus(url, node_id)
        self.got: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.bus.start_listening(lambda channel, data: self.got.put_nowait((channel, data)),
                                 channels)

    async def watch(self, channel: str) -> None:
        """Subscribe to ``channel`` and wait for Redis to confirm it: every earlier
        subscription is confirmed then too (Redis answers a connection's commands in
        order)."""
        await asyncio.wait_for(self.bus.watch(channel), 10)

    async def confirmed(self) -> None:
        await self.watch("relaybox:test:fence")

    async def next(self) -> tuple[str, bytes]:
        return await asyncio.wait_for(self.got.get(), 10)


@contextlib.asynccontextmanager
async def listening(url: str, node_id: str, channels: tuple[str, ...] | None = None
                    ) -> AsyncIterator[Listener]:
    """A Listener whose subscriptions are confirmed; closed on the way out."""
    listener = Listener(url, node_id, channels)
    try:
        await listener.confirmed()
        yield listener
    finally:
        await listener.bus.close()


@pytest.fixture
async def publisher(redis_url: str) -> AsyncIterator[Bus]:
    bus = Bus(redis_url, "pub")
    yield bus
    await bus.close()


async def test_publish_and_publish_many_reach_the_listener_in_order(
        redis_url: str, publisher: Bus) -> None:
    async with listening(redis_url, "n2", channels=("a", "b")) as listener:
        assert await publisher.publish("a", b"1")
        assert await publisher.publish_many([("b", b"2"), ("a", b"3")])
        assert await publisher.publish_many([("b", b"4")])
        assert await publisher.publish_many([])
        assert [await listener.next() for _ in range(4)] == [
            ("a", b"1"), ("b", b"2"), ("a", b"3"), ("b", b"4")]
        # Messages on any channel but a user's events channel count as control.
        assert listener.bus.received == {"events": 0, "control": 4}


async def test_a_control_notice_names_its_kind_and_the_sending_node(
        redis_url: str, publisher: Bus) -> None:
    with contextlib.closing(SyncBus(redis_url)) as sync:
        async with listening(redis_url, "n2") as listener:
            assert await publisher.publish_control("node_up", devices=["d1"])
            channel, data = await listener.next()
            assert channel == CONTROL_CHANNEL
            assert decode_control(data) == {"kind": "node_up", "node": "pub",
                                            "devices": ["d1"]}
            assert sync.publish_control("revoke", device_id="d1") >= 1  # heard
            assert decode_control((await listener.next())[1]) == {
                "kind": "revoke", "node": "cli", "device_id": "d1"}


async def test_a_publish_that_redis_refuses_is_false_and_warned_once_per_outage(
        tmp_path: Path, redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    gone = Bus(url_from_socket(str(tmp_path / "nobody.sock")), "n1")
    try:
        with caplog.at_level(logging.WARNING, logger="relaybox.bus"):
            assert await gone.publish("a", b"1") is False
            assert await gone.publish_many([("a", b"1"), ("b", b"2")]) is False
            assert await gone.publish_control("hello") is False
        assert gone.healthy is False
        warnings = [r for r in caplog.records if "redis publish failed" in r.getMessage()]
        assert len(warnings) == 1
    finally:
        await gone.close()
    back = Bus(redis_url, "n1")
    back.healthy = False
    try:
        assert await back.publish("a", b"1") is True
        assert back.healthy is True
    finally:
        await back.close()


async def test_a_watched_channel_is_heard_from_its_confirmation_until_unwatched(
        redis_url: str, publisher: Bus) -> None:
    channel = events_channel("u1")
    async with listening(redis_url, "n2") as listener:
        await listener.watch(channel)
        assert await publisher.subscribers(channel) == 1
        assert await publisher.publish(channel, b"x")
        assert await listener.next() == (channel, b"x")
        assert listener.bus.received["events"] == 1
        listener.bus.unwatch(channel)
        # The unsubscribe goes first on the same connection: confirmed after it.
        await listener.watch("relaybox:test:after")
        assert await publisher.subscribers(channel) == 0


async def test_a_channel_unwatched_before_its_subscription_was_sent_is_cancelled(
        redis_url: str) -> None:
    async with listening(redis_url, "n2") as listener:
        waiter = listener.bus.watch("relaybox:test:x")
        listener.bus.unwatch("relaybox:test:x")
        await asyncio.wait([waiter], timeout=10)
        assert waiter.cancelled()
        await listener.bus.watched()  # nothing left to wait for


async def test_watched_channels_are_subscribed_again_after_a_lost_connection(
        redis_url: str, publisher: Bus) -> None:
    channel = events_channel("u2")
    async with listening(redis_url, "n3") as listener:
        await listener.watch(channel)
        again = asyncio.Event()
        listener.bus.on_subscribed = again.set
        await listener.bus._pubsub.connection.disconnect()
        await asyncio.wait_for(again.wait(), 10)
        await listener.confirmed()
        assert await publisher.subscribers(channel) == 1
        assert await publisher.node_alive("n3")
        assert await publisher.publish(channel, b"y")
        assert await listener.next() == (channel, b"y")


async def test_counters_nonces_and_locks(redis_url: str, publisher: Bus) -> None:
    assert await publisher.get_int("relaybox:test:count") == 0
    assert [await publisher.incr_window("relaybox:test:count", 60) for _ in range(3)] == [
        1, 2, 3]
    assert await publisher.get_int("relaybox:test:count") == 3
    assert 0 < await publisher.redis.ttl("relaybox:test:count") <= 60
    assert await publisher.remember_once("relaybox:test:nonce", 60) is True
    assert await publisher.remember_once("relaybox:test:nonce", 60) is False
    with contextlib.closing(SyncBus(redis_url)) as sync:
        assert sync.ping()
        assert sync.acquire_lock("job", 60) is True
        assert sync.acquire_lock("job", 60) is False  # held until it expires
