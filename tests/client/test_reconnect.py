"""The SDK across a server crash: kill -9 and restart while publishing and consuming."""

from __future__ import annotations

import asyncio

from relaybox.client import Client, Event
from tests.client.conftest import new_devices
from tests.support import Server

N = 120
FIRST_BATCH = 40
FAST = {"backoff_initial": 0.05, "backoff_max": 0.5}


async def test_kill_9_and_restart_loses_nothing_and_hands_nothing_twice(
        own_server: Server) -> None:
    server = own_server
    a, b = new_devices(server)
    seqs: dict[int, int] = {}
    got: list[Event] = []
    some_consumed = asyncio.Event()
    sem = asyncio.Semaphore(8)

    async with Client(a, **FAST) as pub, Client(b, **FAST) as sub:
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
