"""The publish rate of a device is one bucket across server processes (protocol.md §7)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from relaybox.bus import Bus
from relaybox.protocol.encoding import uuid4
from relaybox.server.ratelimit import SharedBucket
from tests.gateway.helpers import Client, users
from tests.plugin import MakeServer

pytestmark = pytest.mark.asyncio(loop_scope="function")

RATE = 2.0
BURST = 60


async def _flood(c: Client, n: int) -> int:
    """Pipeline ``n`` publishes; how many were accepted (the rest are nacked)."""
    ids = [uuid4() for _ in range(n)]
    pending = set(ids)
    accepted = 0

    async def receive() -> None:
        nonlocal accepted
        while pending:
            f = await c.expect(lambda f: f["type"] in ("ack", "nack")
                               and f.get("id") in pending)
            pending.discard(f["id"])
            if f["type"] == "ack":
                accepted += 1
            else:
                assert f["code"] == "rate_limited", f

    async def send() -> None:
        for pid in ids:
            await c.send({"type": "publish", "id": pid, "stream": "hops", "body": 1})

    await asyncio.gather(send(), receive())
    return accepted


async def test_a_device_hopping_between_processes_shares_one_bucket(
        servers: MakeServer) -> None:
    first = servers(gateway_publish_rate_per_s=RATE, gateway_publish_burst=BURST)
    second = servers(first.data_dir, gateway_publish_rate_per_s=RATE,
                     gateway_publish_burst=BURST)
    (dev,) = users(first, 1)[0]
    started = time.monotonic()
    accepted = 0
    for node in (first, second, first, second):
        c = await Client.connect(node, dev)
        accepted += await _flood(c, 2 * BURST)
        await c.close()
    elapsed = time.monotonic() - started
    # One bucket: its burst plus what refilled meanwhile, not a fresh burst per process
    # (each process used to keep a bucket of its own: ~2 x BURST accepted).
    assert accepted <= BURST + RATE * elapsed + 1, (accepted, elapsed)
    assert accepted >= BURST // 2, accepted  # and the device was not starved


async def test_leases_come_out_of_one_bucket_in_redis(redis_url: str) -> None:
    bus = Bus(redis_url, "n")
    try:
        key, rate = "relaybox:publish_rate:d", 0.0001  # no refill to speak of
        assert (await bus.lease_tokens(key, rate, 10, 4))[0] == 4
        assert (await bus.lease_tokens(key, rate, 10, 10))[0] == 6  # what is left
        assert (await bus.lease_tokens(key, rate, 10, 1))[0] == 0
        await bus.lease_tokens(key, rate, 10, -3)  # given back
        assert (await bus.lease_tokens(key, rate, 10, 10))[0] == 3
        # A bucket not in Redis yet starts where the process's own bucket was.
        assert (await bus.lease_tokens(key + "2", rate, 10, 10, init=2.5))[0] == 2
    finally:
        await bus.close()


async def test_a_shared_bucket_spends_leases_and_gives_the_rest_back(redis_url: str) -> None:
    bus = Bus(redis_url, "n")
    try:
        key = "relaybox:publish_rate:e"

        def lease(want: float, init: float | None) -> Any:
            return bus.lease_tokens(key, 0.0001, 8, want, init)

        bucket = SharedBucket(0.0001, 8, lease)
        await bucket.ready()
        assert bucket.tokens == 2  # a quarter of the burst per lease
        assert bucket.take() == 0 and bucket.take() == 0
        assert bucket.take() > 0  # the next lease is on its way, not awaited
        await bucket.ready()
        assert bucket.take() == 0
        await bucket.release()
        assert (await bus.lease_tokens(key, 0.0001, 8, 8))[0] == 5  # 8 - 3 spent
    finally:
        await bus.close()


async def test_a_bucket_whose_redis_fails_counts_here_and_says_so_on_the_gateway_log(
        caplog: pytest.LogCaptureFixture) -> None:
    async def lease(want: float, init: float | None) -> Any:
        raise ConnectionError("Redis is down")

    bucket = SharedBucket(1.0, 4, lease)
    with caplog.at_level("WARNING", logger="relaybox"):
        await bucket.ready()
    assert [(r.name, r.levelname) for r in caplog.records] == [("relaybox.gateway", "WARNING")]
    assert "publish rate bucket in Redis unavailable" in caplog.records[0].getMessage()
    assert [bucket.take() for _ in range(5)][:4] == [0, 0, 0, 0]  # the burst, counted here
    assert bucket.take() > 0
