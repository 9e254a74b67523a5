"""The SDK across a server crash: kill -9 and restart while publishing and consuming."""

from __future__ import annotations

import asyncio

import pytest

from relaybox.client import Client, Event
from tests.client.conftest import fast_client, new_devices
from tests.support import Server

N = 120
FIRST_BATCH = 40


async def test_kill_9_and_restart_loses_nothing_and_hands_nothing_twice(
        own_server: Server) -> None:
    server = own_server
    a, b = new_devices(server)
    seqs: dict[int, int] = {}
    got: list[Event] = []
    some_consumed = asyncio.Event()
    sem = asyncio.Semaphore(8)

    async with fast_client(a) as pub, fast_client(b) as sub:
        async def publish(i: int) -> None:
            async with sem:
                seqs[i] = await pub.publish("load", {"i": i})

        async def consume() -> None:
            async for item in sub.events(["load"]):
                assert isinstance(item, Event), item
                got.append(item)
                if len(got) == FIRST_BATCH // 2:
                    some_consumed.set()
                if len(got) == N:
                    return

        consumer = asyncio.create_task(consume())
        first = [asyncio.create_task(publish(i)) for i in range(FIRST_BATCH)]
        await asyncio.wait_for(some_consumed.wait(), 30)
        # Crash while publishes and deliveries are in flight. (Its embedded Redis
        # lives on and is reused by the restarted server, as after a real crash.)
        await asyncio.to_thread(server.kill)
        rest = [asyncio.create_task(publish(i)) for i in range(FIRST_BATCH, N)]
        await asyncio.to_thread(server.start)
        await asyncio.wait_for(asyncio.gather(*first, *rest), 60)
        await asyncio.wait_for(consumer, 60)
        assert pub.sessions >= 2 and sub.sessions >= 2

        # Nothing stored twice: N publishes, seqs 1..N, each id once.
        assert sorted(seqs.values()) == list(range(1, N + 1))
        # Nothing lost or handed twice, in seq order.
        assert [e.seq for e in got] == list(range(1, N + 1))
        assert sorted(e.body["i"] for e in got) == list(range(N))
        assert all(seqs[e.body["i"]] == e.seq for e in got)
        # And nothing comes after: the next event handed out is a new one.
        marker = await pub.publish("load", {"i": "marker"})
        nxt = await asyncio.wait_for(anext(sub.events(["load"])), 10)
        assert isinstance(nxt, Event) and nxt.seq == marker == N + 1


@pytest.mark.parametrize("own_server", [{"RELAYBOX_GATEWAY_PUBLISH_RATE_PER_S": "20",
                                         "RELAYBOX_GATEWAY_PUBLISH_BURST": "2"}],
                         indirect=True)
async def test_rate_limited_publishes_are_retried_until_stored(own_server: Server) -> None:
    a, b = new_devices(own_server)
    async with Client(a) as pub, Client(b) as sub:
        seqs = await asyncio.wait_for(
            asyncio.gather(*(pub.publish("burst", {"i": i}) for i in range(12))), 30)
        assert sorted(seqs) == list(range(1, 13))
        it = sub.events(["burst"])
        got = [await asyncio.wait_for(anext(it), 10) for _ in range(12)]
    assert sorted(e.body["i"] for e in got if isinstance(e, Event)) == list(range(12))
