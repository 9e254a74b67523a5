"""Fan-out by user: a process hears only the events of users it holds sessions of."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
import redis

from relaybox.bus import Bus, live_servers
from relaybox.protocol.delivery import Framed
from relaybox.server.gateway.hub import Hub
from relaybox.store.events import StoredEvent
from tests.gateway.helpers import Client, connect_synced, users
from tests.plugin import MakeServer
from tests.support import Server

pytestmark = pytest.mark.asyncio(loop_scope="function")


class FakeSession:
    """What the hub needs of a gateway session: it records the events offered to it."""

    def __init__(self, user_id: str, device_id: str) -> None:
        self.user_id, self.device_id = user_id, device_id
        self.session_id = device_id
        self.ready = True
        self.close_code = None
        self.got: list[Framed] = []
        self.arrived = asyncio.Event()

        async def read(fn: Any, *args: Any) -> Any:
            return {}

        self.ctx = SimpleNamespace(settings=SimpleNamespace(gateway_revocation_check_s=60),
                                   eventlog=SimpleNamespace(read=read))

    def offer(self, ev: Framed) -> None:
        self.got.append(ev)
        self.arrived.set()

    def send(self, frame: str) -> None:
        pass


class Process:
    """The bus side of one server process, wired as app.py does, counting what reaches it."""

    def __init__(self, url: str, node_id: str) -> None:
        self.bus = Bus(url, node_id)
        self.hub = Hub(node_id, self.bus)
        self.event_messages = 0

    async def start(self) -> Process:
        async def handler(channel: str, data: bytes) -> None:
            if channel.startswith("relaybox:events"):
                self.event_messages += 1
            await self.hub.on_bus(channel, data)

        self.bus.on_subscribed = self.hub.peers.resubscribed
        self.bus.start_listening(handler)
        await self.hub.peers.join()
        return self

    async def session(self, user_id: str, device_id: str) -> FakeSession:
        s = FakeSession(user_id, device_id)
        self.hub.register(s)  # type: ignore[arg-type]
        await self.hub.listening(user_id)
        return s

    async def stop(self) -> None:
        if self.hub._revocation_checks is not None:
            self.hub._revocation_checks.cancel()
        await self.hub.peers.stop()
        await self.bus.close()


def _event(user_id: str, seq: int) -> StoredEvent:
    return StoredEvent(user_id, "notes", seq, f"id-{user_id}-{seq}", "pub", None, 0, "1")


async def test_a_process_receives_none_of_the_events_of_users_it_does_not_serve(
        redis_url: str) -> None:
    a = await Process(redis_url, "a").start()
    b = await Process(redis_url, "b").start()
    try:
        assert a.hub.peers.present and b.hub.peers.present
        await a.session("u", "u-reader")
        v_on_b = await b.session("v", "v-reader")
        for seq in range(1, 51):  # 50 commit batches of user u, each published
            a.hub.committed([_event("u", seq)])
            await asyncio.sleep(0)  # one event-loop turn: one batch each
        a.hub.committed([_event("v", 1)])
        # Redis delivers a connection's messages in publish order: once v's event is
        # here, any of u's would have arrived before it.
        await asyncio.wait_for(v_on_b.arrived.wait(), 10)
        assert [e.seq for e in v_on_b.got] == [1]
        assert b.event_messages == 1  # v's batch only: nothing of u
        assert b.bus.received["events"] == 1
    finally:
        await b.stop()
        await a.stop()


async def test_the_subscription_follows_the_users_sessions(redis_url: str) -> None:
    a = await Process(redis_url, "a").start()
    b = await Process(redis_url, "b").start()
    try:
        first = await b.session("u", "d1")
        assert await b.bus.subscribers("relaybox:events:u") == 1
        a.hub.committed([_event("u", 1)])
        await asyncio.wait_for(first.arrived.wait(), 10)
        b.hub.unregister(first)  # type: ignore[arg-type]
        await b.bus.watched()
        while await b.bus.subscribers("relaybox:events:u"):
            await asyncio.sleep(0.01)  # the unsubscribe is on its way
        # A new session of u subscribes again and hears u's events again.
        again = await b.session("u", "d2")
        a.hub.committed([_event("u", 2)])
        await asyncio.wait_for(again.arrived.wait(), 10)
        assert [e.seq for e in again.got] == [2]
    finally:
        await b.stop()
        await a.stop()


async def test_subscriptions_survive_a_lost_connection(redis_url: str) -> None:
    a = await Process(redis_url, "a").start()
    b = await Process(redis_url, "b").start()
    try:
        s = await b.session("u", "d1")
        resubscribed = asyncio.Event()
        b.bus.on_subscribed = resubscribed.set
        await b.bus._pubsub.connection.disconnect()
        await asyncio.wait_for(resubscribed.wait(), 10)
        await b.bus.watched()
        assert await b.bus.subscribers("relaybox:events:u") == 1
        a.hub.committed([_event("u", 1)])
        await asyncio.wait_for(s.arrived.wait(), 10)
    finally:
        await b.stop()
        await a.stop()


# -- real servers ----------------------------------------------------------------------------
def _redis_of(server: Server) -> redis.Redis:
    (record,) = [r for r in live_servers(server.data_dir / "run") if r.get("redis_socket")]
    return redis.Redis(unix_socket_path=record["redis_socket"])


async def test_only_the_processes_serving_a_user_subscribe_to_its_events(
        servers: MakeServer) -> None:
    first = servers(gateway_publish_rate_per_s=0)
    second = servers(first.data_dir, gateway_publish_rate_per_s=0)
    (u1, u2), (v1,) = users(first, 2, 1)
    cu1, cu2 = await connect_synced(first, u1), await connect_synced(first, u2)
    cv = await connect_synced(second, v1)
    client = _redis_of(first)
    try:
        numsub = dict(client.pubsub_numsub(f"relaybox:events:{u1.user_id}",
                                           f"relaybox:events:{v1.user_id}",
                                           "relaybox:events"))
        assert numsub == {f"relaybox:events:{u1.user_id}".encode(): 1,
                          f"relaybox:events:{v1.user_id}".encode(): 1,
                          b"relaybox:events": 0}
    finally:
        client.close()
    for c in (cu1, cu2, cv):
        await c.close()


async def test_a_first_session_on_a_process_misses_nothing_committed_meanwhile(
        servers: MakeServer) -> None:
    """The other device of the user publishes without pause on one process while a
    device connects to the other, where the user had no session: whatever was committed
    before its subscription came through is in its catch-up, whatever after arrives live."""
    first = servers(gateway_publish_rate_per_s=0)
    second = servers(first.data_dir, gateway_publish_rate_per_s=0)
    for _ in range(5):
        pub, sub = users(first, 2)[0]
        cp = await connect_synced(first, pub)
        n = 120
        publishing = asyncio.ensure_future(cp.publish_many("live", list(range(n))))
        await asyncio.sleep(0.01)  # some commits before the connect, most during and after
        cs = await Client.connect(second, sub)
        got = await cs.events(n, "live")
        assert [e["seq"] for e in got] == list(range(1, n + 1))
        await publishing
        for c in (cp, cs):
            await c.close()
