"""Publishing on the bus only while another server process listens (server/gateway/peers.py)."""

from __future__ import annotations

import asyncio

import pytest
import redis

from relaybox.bus import CONTROL_CHANNEL, Bus, decode_control, live_servers
from relaybox.server.gateway.peers import Peers
from tests.gateway.helpers import connect_synced, users
from tests.observability.helpers import await_until
from tests.plugin import MakeServer
from tests.support import Server

pytestmark = pytest.mark.asyncio(loop_scope="function")


class Node:
    """The bus side of one server process: a Bus and its Peers, as app.py wires them."""

    def __init__(self, url: str, node_id: str) -> None:
        self.bus = Bus(url, node_id)
        self.peers = Peers(self.bus, node_id)
        self.subscribed = asyncio.Event()

    async def start(self) -> Node:
        def on_subscribed() -> None:
            self.peers.resubscribed()
            self.subscribed.set()

        async def handler(channel: str, data: bytes) -> None:
            if channel == CONTROL_CHANNEL:
                await self.peers.on_control(decode_control(data))

        self.bus.on_subscribed = on_subscribed
        self.bus.start_listening(handler)
        await self.peers.join()
        return self

    async def stop(self) -> None:
        await self.peers.stop()
        await self.bus.close()


async def test_a_process_alone_on_the_bus_has_no_peers(redis_url: str) -> None:
    a = await Node(redis_url, "a").start()
    assert a.peers.present is False
    await a.stop()


async def test_a_newcomer_is_answered_before_it_serves_and_both_then_publish(
        redis_url: str) -> None:
    a = await Node(redis_url, "a").start()
    assert a.peers.present is False
    b = await Node(redis_url, "b").start()
    # join() returned only after "a" answered, and "a" marked peers present first.
    assert b.peers.present is True and a.peers.present is True
    assert b.peers._answers == {"a"}
    await b.stop()
    await a.stop()


async def test_the_recheck_notices_the_last_peer_leaving(redis_url: str) -> None:
    a = await Node(redis_url, "a").start()
    b = await Node(redis_url, "b").start()
    await a.peers.recheck()
    assert a.peers.present is True  # "b" still listens
    await b.stop()
    # Redis drops b's subscription when it has read b's disconnect, which may come after
    # a's next command on its own connection: recheck once Redis counts a alone.
    await await_until(lambda: _alone(a))
    await a.peers.recheck()
    assert a.peers.present is False
    await a.stop()


async def _alone(node: Node) -> bool:
    return await node.bus.subscribers(CONTROL_CHANNEL) <= 1


async def test_an_announcement_racing_the_recheck_keeps_peers_present(redis_url: str) -> None:
    a = await Node(redis_url, "a").start()
    a.peers.present = True
    count = a.bus.subscribers
    newcomer = Node(redis_url, "c")

    async def count_then_join(channel: str) -> int:
        n = await count(channel)  # counted while alone …
        await newcomer.start()  # … and "c" joins before the count is used
        return n

    a.bus.subscribers = count_then_join  # type: ignore[method-assign]
    await a.peers.recheck()
    assert a.peers.present is True
    await newcomer.stop()
    await a.stop()


async def test_a_lost_subscription_assumes_peers_until_the_recheck(redis_url: str) -> None:
    a = await Node(redis_url, "a").start()
    assert a.peers.present is False
    a.subscribed.clear()
    await a.bus._pubsub.connection.disconnect()  # the listener reconnects by itself
    await asyncio.wait_for(a.subscribed.wait(), 10)
    assert a.peers.present is True  # messages may have been missed meanwhile
    await a.peers.recheck()
    assert a.peers.present is False
    await a.stop()


def _publishes(server: Server) -> int:
    (record,) = [r for r in live_servers(server.data_dir / "run") if r.get("redis_socket")]
    client = redis.Redis(unix_socket_path=record["redis_socket"])
    try:
        stats = client.info("commandstats")
        return int(stats.get("cmdstat_publish", {}).get("calls", 0))
    finally:
        client.close()


async def test_a_server_alone_relays_without_touching_the_bus(servers: MakeServer) -> None:
    first = servers(gateway_publish_rate_per_s=0)
    a, b, c = users(first, 3)[0]
    before = _publishes(first)
    ca = await connect_synced(first, a)
    cb = await connect_synced(first, b)
    await ca.expect_type("presence")
    for i in range(5):
        await ca.publish("notes", i)
    assert [e["body"] for e in await cb.events(5, "notes")] == [0, 1, 2, 3, 4]
    # No commit batch, session notice or presence change went to Redis.
    assert _publishes(first) == before
    # A second process on the same data dir: from now on the first one publishes.
    second = servers(first.data_dir, gateway_publish_rate_per_s=0)
    cc = await connect_synced(second, c)
    await ca.publish("more", "across")
    got = await cc.expect_type("event")
    assert (got["stream"], got["body"]) == ("more", "across")
    for client in (ca, cb, cc):
        await client.close()
